"""Report tables, effects, interactions and the 80/20 verdict on runs with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from harness import report
from harness.report import stats
from harness.report.figures import cost_accuracy_chart, pareto_chart, pareto_frontier
from harness.report.writer import REPORT_FILES, write_report

FACTORS = {"a": ["off", "on"], "b": ["off", "on"], "c": ["off", "on"]}
DEFAULTS = {trick: options[0] for trick, options in FACTORS.items()}
SEEDS = (0, 1, 2)
CLASSES = ("cat", "dog")
TEST_IMAGES = 10_000_000  # no per-example results: the test set's bound is then ±0.03 points


def accuracy(a: bool, b: bool, c: bool, seed: int) -> float:
    """Test accuracy in percent; the seed term cancels in every matched pair."""
    return 50 + 10 * a + 4 * b + 1 * c + 2 * (a and b) + 0.5 * seed


def seconds(a: bool, b: bool, c: bool) -> float:
    return 100.0 + 50.0 * a + 10.0 * b


def make_runs(factors=FACTORS, value=None) -> pd.DataFrame:
    """One finished run per (config, seed) of the full grid of ``factors``."""
    rows = []
    for index, combination in enumerate(itertools.product(*factors.values(), SEEDS)):
        *options, seed = combination
        toggles = dict(zip(factors, options))
        on = [option != factors[trick][0] for trick, option in toggles.items()]
        on += [False] * (3 - len(on))
        acc = accuracy(*on, seed) if value is None else value(toggles, seed)
        rows.append(
            {
                "run_id": f"run{index}",
                "status": "FINISHED",
                "failure": None,
                "seed": seed,
                **toggles,
                "test_acc": acc,
                "val_acc": acc - 1.0,
                "test_loss": 1.0 - acc / 100,
                "test_acc_cat": acc + 2.0,
                "test_acc_dog": acc - 2.0,
                "train_seconds": seconds(*on[:3]),
                "epochs_completed": 3,
                "test_images": TEST_IMAGES,
                "device": "cpu",
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def runs() -> pd.DataFrame:
    return make_runs()


def effect(effects: pd.DataFrame, trick: str) -> pd.Series:
    return effects.set_index("trick").loc[trick]


# --- statistics (the noise model's own tests are in test_noise_model.py) -------------------


def test_mean_ci95_is_a_t_interval():
    values = [1.0, 2.0, 4.0]
    mean, low, high, n = stats.mean_ci95(values)
    half = 4.3026527 * np.std(values, ddof=1) / math.sqrt(3)  # t(0.975, df=2) from the tables
    assert (mean, n) == (pytest.approx(7 / 3), 3)
    assert (low, high) == (pytest.approx(7 / 3 - half), pytest.approx(7 / 3 + half))
    assert math.isnan(stats.mean_ci95([5.0])[1])
    assert stats.mean_ci95([])[3] == 0


# --- tables -------------------------------------------------------------------------------


def test_config_table_columns_are_stable(runs):
    table = report.config_table(runs, FACTORS)
    assert list(table.columns) == [
        "a",
        "b",
        "c",
        "seeds",
        "n_seeds",
        "test_acc_mean",
        "test_acc_std",
        "val_acc_mean",
        "test_loss_mean",
        "test_top5_mean",  # every other registered metric (harness.training.metrics)
        "test_acc_cat_mean",
        "test_acc_dog_mean",
        "train_seconds_mean",
        "epochs_mean",
        "device",
        "n_failed",
        "failed",
        "n_excluded",
        "run_ids",
    ]
    assert list(table.columns) == report.config_columns(FACTORS, CLASSES)


def test_config_table_means_and_stds_over_seeds(runs):
    table = report.config_table(runs, FACTORS)
    assert len(table) == 8
    assert list(table.iloc[0][["a", "b", "c"]]) == ["off", "off", "off"]  # grid order
    assert list(table.iloc[-1][["a", "b", "c"]]) == ["on", "on", "on"]
    best = table.iloc[-1]
    assert best["test_acc_mean"] == pytest.approx(50 + 10 + 4 + 1 + 2 + 0.5)
    assert best["test_acc_std"] == pytest.approx(0.5)  # seeds 0, 1, 2 → 0, 0.5, 1.0 added
    assert best["test_acc_cat_mean"] == pytest.approx(best["test_acc_mean"] + 2)
    assert best["train_seconds_mean"] == pytest.approx(160.0)
    assert (best["seeds"], best["n_seeds"], best["device"]) == ("0;1;2", 3, "cpu")
    assert best["run_ids"].count(";") == 2
    assert table["n_failed"].sum() == 0 and not table["failed"].any()


def test_config_table_std_is_nan_for_one_seed(runs):
    table = report.config_table(runs[runs["seed"] == 0], FACTORS)
    assert table["n_seeds"].eq(1).all() and table["test_acc_std"].isna().all()


def test_effect_and_interaction_columns_are_stable(runs):
    effects = report.main_effects(runs, FACTORS, DEFAULTS)
    assert list(effects.columns) == list(report.EFFECT_COLUMNS)
    for name in ("p_value", "p_adjusted", "call", "ci_source"):
        assert name in effects.columns
    assert set(effects["call"]) <= set(report.CALLS)
    assert list(report.interactions(runs, FACTORS, DEFAULTS).columns) == [
        "trick_a",
        "option_a",
        "trick_b",
        "option_b",
        "interaction_mean",
        "ci95_low",
        "ci95_high",
        "n",
    ]


# --- effects ------------------------------------------------------------------------------


def test_main_effects_average_over_the_other_factors(runs):
    effects = report.main_effects(runs, FACTORS, DEFAULTS)
    assert list(effects["trick"]) == ["a", "b", "c"]
    assert list(effects["baseline_option"]) == ["off", "off", "off"]
    # a: +10, plus the a∧b bonus of 2 in the half of the pairs where b is on.
    assert effect(effects, "a")["effect_mean"] == pytest.approx(11.0)
    assert effect(effects, "b")["effect_mean"] == pytest.approx(5.0)
    assert effect(effects, "c")["effect_mean"] == pytest.approx(1.0)
    assert effects["n_pairs"].tolist() == [12, 12, 12]  # 2 × 2 other configs × 3 seeds
    for row in effects.itertuples():
        assert row.ci_low <= row.effect_mean <= row.ci_high
    assert effect(effects, "a")["cost_delta_seconds"] == pytest.approx(50.0)
    assert effect(effects, "a")["cost_ratio"] == pytest.approx(155.0 / 105.0)
    assert effect(effects, "c")["cost_ratio"] == pytest.approx(1.0)


def test_interactions_isolate_the_a_b_bonus(runs):
    pairs = report.interactions(runs, FACTORS, DEFAULTS).set_index(["trick_a", "trick_b"])
    assert pairs.loc[("a", "b"), "interaction_mean"] == pytest.approx(2.0)
    assert pairs.loc[("a", "c"), "interaction_mean"] == pytest.approx(0.0)
    assert pairs.loc[("b", "c"), "interaction_mean"] == pytest.approx(0.0)
    assert pairs["n"].tolist() == [6, 6, 6]  # 2 configs of the third trick × 3 seeds


def test_replicated_noise_comes_from_the_spread_of_the_paired_runs():
    noisy = make_runs(value=lambda t, seed: 60 + 3 * (t["a"] == "on") * (1 + 0.1 * seed))
    row = effect(report.main_effects(noisy, FACTORS, DEFAULTS), "a")
    # 12 pieces: 3.0, 3.3, 3.6 at each of the 4 partner configs; no interaction to take out.
    pieces = np.tile([3.0, 3.3, 3.6], 4)
    assert row["effect_mean"] == pytest.approx(3.3)
    assert row["ci_source"].startswith("paired runs less their two-way interactions")
    assert row["se_runs"] == pytest.approx(math.sqrt(np.sum((pieces - 3.3) ** 2) / 9 / 12))
    assert row["df"] == 12 - 1 - 2
    assert "test set: bound (no per-example results)" in row["ci_source"]
    assert row["se"] == pytest.approx(math.hypot(row["se_runs"], row["se_test"]))
    half = stats.critical_t(1 - 0.05 / 3, 9) * row["se"]
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(3.3 - half), pytest.approx(3.3 + half))
    assert row["call"] == "helps"


def test_one_seed_takes_the_interactions_out_of_the_partner_spread(runs):
    one = runs[runs["seed"] == 0]
    row = effect(report.main_effects(one, FACTORS, DEFAULTS), "a")
    # 4 pieces (10, 10, 12, 12) but 2 interaction columns would leave 1 df: the plain spread.
    assert row["ci_source"].startswith("paired runs;")
    assert row["se_runs"] == pytest.approx(np.std([10.0, 10.0, 12.0, 12.0], ddof=1) / 2)
    four = {name: ["off", "on"] for name in "abcd"}
    data = make_runs(four, lambda t, seed: 50 + 10 * (t["a"] == "on") + 4 * (t["a"] == "on")
                     * (t["b"] == "on") + 0.1 * (t["c"] == "on") * (t["d"] == "on") * seed)
    row = effect(report.main_effects(data[data["seed"] == 0], four, dict.fromkeys(four, "off")),
                 "a")
    # 8 pieces, the a×b bonus taken out by its column: what is left is exact, so no spread.
    assert row["ci_source"].startswith("paired runs less their two-way interactions")
    assert (row["effect_mean"], row["df"]) == (pytest.approx(12.0), 8 - 1 - 3)
    assert row["se_runs"] == pytest.approx(0.0, abs=1e-9)


def test_options_beyond_two_each_get_an_effect():
    factors = {"optimizer": ["sgd", "adam", "lamb"], "stem": ["none", "deep"]}
    gains = {"sgd": 0.0, "adam": 3.0, "lamb": -1.0}
    data = make_runs(factors, lambda t, seed: 70 + gains[t["optimizer"]] + seed)
    effects = report.main_effects(data, factors, {"optimizer": "sgd", "stem": "none"})
    assert list(zip(effects["trick"], effects["option"])) == [
        ("optimizer", "adam"),
        ("optimizer", "lamb"),
        ("stem", "deep"),
    ]
    assert effects["effect_mean"].tolist() == pytest.approx([3.0, -1.0, 0.0])
    assert len(report.interactions(data, factors, {"optimizer": "sgd", "stem": "none"})) == 2


# --- partial grids and failures -----------------------------------------------------------


def test_partial_grid_lists_missing_configs_and_uses_remaining_pairs(runs):
    gone = (runs["a"] == "on") & (runs["b"] == "on") & (runs["c"] == "on")
    partial = runs[~gone & ~((runs["a"] == "on") & (runs["b"] == "off") & (runs["seed"] == 2))]
    assert report.missing_configs(partial, FACTORS) == [{"a": "on", "b": "on", "c": "on"}]
    effects = report.main_effects(partial, FACTORS, DEFAULTS)
    # a: pairs over (b, c, seed) minus the 3 of (b=on, c=on) and the 2 of (b=off, seed=2).
    assert effect(effects, "a")["n_pairs"] == 12 - 3 - 2
    expected_a = (10 * 4 + 12 * 3) / 7  # 4 pairs with b off (+10), 3 with b on (+12)
    assert effect(effects, "a")["effect_mean"] == pytest.approx(expected_a)
    assert effect(effects, "c")["effect_mean"] == pytest.approx(1.0)
    verdict = report.pareto_verdict(partial, FACTORS, DEFAULTS)
    assert verdict.missing == [{"a": "on", "b": "on", "c": "on"}]
    assert "1 grid config(s) have no result: a=on, b=on, c=on" in report.format_verdict(verdict)


def test_crashed_runs_are_excluded_and_counted(runs):
    crashed = runs.copy()
    mask = (crashed["a"] == "on") & (crashed["b"] == "on") & (crashed["c"] == "on")
    crashed.loc[mask, "status"] = "FAILED"
    crashed.loc[mask, "failure"] = "crashed"
    assert report.missing_configs(crashed, FACTORS) == [{"a": "on", "b": "on", "c": "on"}]
    table = report.config_table(crashed, FACTORS)
    assert len(table) == 7
    assert "3 run(s) crashed" in report.format_verdict(
        report.pareto_verdict(crashed, FACTORS, DEFAULTS)
    )


def test_diverged_run_counts_at_chance_level_and_is_marked(runs):
    diverged = runs.copy()
    index = diverged.index[
        (diverged["a"] == "on")
        & (diverged["b"] == "off")
        & (diverged["c"] == "off")
        & (diverged["seed"] == 1)
    ]
    diverged.loc[index, ["status", "failure", "test_acc"]] = ["FAILED", "diverged", np.nan]
    table = report.config_table(diverged, FACTORS).set_index(["a", "b", "c"])
    row = table.loc[("on", "off", "off")]
    assert (row["n_failed"], row["failed"], row["n_seeds"]) == (1, True, 3)
    chance = 100 / len(CLASSES)
    assert row["test_acc_mean"] == pytest.approx((60.0 + chance + 61.0) / 3)
    assert table["n_failed"].sum() == 1
    assert report.missing_configs(diverged, FACTORS) == []


def test_diverged_run_keeps_its_logged_accuracy(runs):
    diverged = runs.copy()
    diverged.loc[0, ["status", "failure", "test_acc"]] = ["FAILED", "diverged", 10.0]
    row = report.config_table(diverged, FACTORS).iloc[0]
    assert row["test_acc_mean"] == pytest.approx((10.0 + 50.5 + 51.0) / 3)


# --- the verdict --------------------------------------------------------------------------


def test_pareto_verdict_on_the_factorial(runs):
    verdict = report.pareto_verdict(runs, FACTORS, DEFAULTS)
    assert list(verdict.table.columns) == list(report.VERDICT_COLUMNS)
    assert list(verdict.table["trick"]) == ["a", "b", "c"]
    assert verdict.baseline_acc == pytest.approx(50.5)
    assert verdict.best_acc == pytest.approx(67.5)
    assert verdict.best_config == {"a": "on", "b": "on", "c": "on"}
    # Every effect is far beyond the ±0.5-point floor of 10,000 test images except c's +1.
    assert verdict.table["call"].tolist() == ["helps", "helps", "helps"]
    assert verdict.total_gain == pytest.approx(17.0)
    # Summed main effects: a +11 (65%), a+b +16 (94%) ≥ 80%; measured: +10, +16, +17.
    assert verdict.table["cumulative_gain"].tolist() == pytest.approx([11.0, 16.0, 17.0])
    assert verdict.table["measured_gain"].tolist() == pytest.approx([10.0, 16.0, 17.0])
    assert verdict.chosen == [("a", "on"), ("b", "on")]
    assert verdict.chosen_share == pytest.approx(16 / 17)
    assert verdict.table["p_in_set"].tolist()[:2] == [1.0, 1.0]
    assert verdict.chosen_measured_gain == pytest.approx(16.0)
    text = report.format_verdict(verdict)
    assert "2 options (a=on, b=on) give 94% of the +17.0-point gain" in text


def test_only_helping_options_are_in_the_set_and_shares_are_never_negative():
    """The Intel story: three clear losses and one option within noise: no gain is claimed."""
    factors = {name: ["off", "on"] for name in ("stem", "init", "optimizer", "depth")}
    defaults = {name: "off" for name in factors}
    gain = {"stem": -9.7, "init": -3.3, "optimizer": 0.0, "depth": -4.4}
    rng = np.random.default_rng(3)
    data = make_runs(factors, lambda t, seed: 50 + sum(gain[n] for n in t if t[n] == "on")
                     + rng.normal(0, 0.5))
    verdict = report.pareto_verdict(data[data["seed"] == 0], factors, defaults)
    calls = verdict.effects.set_index("trick")["call"].to_dict()
    assert calls == {"stem": "hurts", "init": "hurts", "optimizer": "undetermined",
                     "depth": "hurts"}
    assert verdict.chosen == [] and verdict.total_gain == 0.0
    text = report.format_verdict(verdict)
    assert "No option helps beyond noise, so no gain is claimed" in text
    assert "hurts: stem=on, init=on, depth=on" in text and "undetermined: optimizer=on" in text
    assert "One seed: the run-to-run noise is measured by the partner configs" in text
    # A true 0 inside a 1-point margin at a 0.5-point noise: negligible only after many seeds,
    # planned with alpha split over every round of the seeds=auto command.
    assert "seeds=[" not in text
    assert ("To settle optimizer=on: seeds=auto max_seeds=" in text
            or "optimizer=on would need more than 20 seeds" in text)
    assert "-" not in "".join(verdict.table["cumulative_share"].dropna().astype(str))


def test_pareto_verdict_known_answer_with_costs_and_estimates():
    """Four tricks; the cheap one gives most of the gain, the rest add little at a big cost."""
    factors = {name: ["off", "on"] for name in ("optimizer", "stem", "init", "depth")}
    defaults = {name: "off" for name in factors}
    gain = {"optimizer": 8.0, "stem": 3.0, "init": 1.5, "depth": -0.5}
    cost = {"optimizer": 0.0, "stem": 20.0, "init": 30.0, "depth": 100.0}
    rows = []
    for index, options in enumerate(itertools.product(["off", "on"], repeat=4)):
        toggles = dict(zip(factors, options))
        if toggles["optimizer"] == "on" and toggles["stem"] == "on" and toggles["init"] == "off":
            continue  # the top-2 config is not measured: no measured gain beside its sum
        on = [name for name, option in toggles.items() if option == "on"]
        for seed in (0, 1):
            rows.append(
                {
                    "run_id": f"r{index}-{seed}",
                    "status": "FINISHED",
                    "failure": None,
                    "seed": seed,
                    **toggles,
                    "test_acc": 60 + sum(gain[n] for n in on) + seed + 0.1 * (index % 3),
                    "train_seconds": 100 + sum(cost[n] for n in on),
                    "test_images": TEST_IMAGES,
                    "device": "cpu",
                }
            )
    verdict = report.pareto_verdict(pd.DataFrame(rows), factors, defaults)
    table = verdict.table
    assert list(table["trick"]) == ["optimizer", "stem", "init", "depth"]
    assert table["call"].tolist() == ["helps", "helps", "helps", "hurts"]
    assert table["cumulative_gain"].tolist()[:3] == pytest.approx([8.0, 11.0, 12.5], abs=0.1)
    assert np.isfinite(table["measured_gain"]).tolist() == [True, False, True, False]
    assert math.isnan(table["cumulative_gain"].iloc[3])  # a hurting option adds nothing
    # optimizer alone: ~8 of ~12.5 < 80%; with stem (8 + 3): ~88%.
    assert verdict.chosen == [("optimizer", "on"), ("stem", "on")]
    assert math.isnan(verdict.chosen_measured_gain)
    assert verdict.chosen_seconds == pytest.approx(120.0)  # baseline 100 s + 0 s + 20 s
    assert verdict.cost_share == pytest.approx(120.0 / 150.0)
    text = report.format_verdict(verdict)
    assert "2 options (optimizer=on, stem=on) give" in text
    assert "(summed main effects), at 80% of their training time" in text
    assert "hurts: depth=on" in text


def test_pareto_verdict_single_factor_and_missing_baseline():
    factors = {"stem": ["none", "deep"]}
    data = make_runs(factors, lambda t, seed: 70 + 5 * (t["stem"] == "deep") + 0.3 * seed**2)
    verdict = report.pareto_verdict(data, factors, {"stem": "none"})
    assert verdict.chosen == [("stem", "deep")] and verdict.chosen_share == pytest.approx(1.0)
    assert report.interactions(data, factors, {"stem": "none"}).empty
    no_baseline = report.pareto_verdict(data[data["stem"] == "deep"], factors, {"stem": "none"})
    assert no_baseline.chosen == [] and no_baseline.n_configs == 1
    assert "One config only (stem=deep)" in report.format_verdict(no_baseline)


def test_a_missing_baseline_gets_its_own_sentence():
    factors = {"a": ["off", "on"], "b": ["off", "on"]}
    data = make_runs(factors, lambda t, seed: 60 + 5 * (t["a"] == "on") + seed)
    partial = data[~((data["a"] == "off") & (data["b"] == "off"))]
    text = report.format_verdict(report.pareto_verdict(partial, factors, {"a": "off", "b": "off"}))
    assert "The baseline config (all defaults) has no result" in text


def test_failed_only_and_running_runs_get_sentences(runs):
    failed = runs.assign(status="FAILED", failure="crashed")
    text = report.format_verdict(report.pareto_verdict(failed, FACTORS, DEFAULTS))
    assert text == "No trial has a result yet: 24 crashed, were pruned or interrupted."
    live = runs.copy()
    live.loc[live.index[-2:], "status"] = "RUNNING"
    verdict = report.pareto_verdict(live, FACTORS, DEFAULTS)
    assert (verdict.n_running, verdict.n_excluded) == (2, 0)
    text = report.format_verdict(verdict)
    assert "crashed" not in text
    assert "2 trial(s) still running elsewhere; the report will be complete when the last " \
           "worker ends." in text


def test_verdict_markdown_has_the_sentence_and_tables(runs):
    verdict = report.pareto_verdict(runs, FACTORS, DEFAULTS)
    markdown = report.verdict_markdown(verdict, report.config_table(runs, FACTORS))
    assert report.verdict_sentence(verdict) in markdown
    assert "| trick | option | baseline_option |" in markdown
    assert "| rank | trick | option | call |" in markdown and "p_in_set" in markdown
    assert "`negligible`: the whole interval lies inside ±margin" in markdown
    assert markdown.count("\n| off | off | off |") == 1


# --- the calls' error rates are tested as rates in test_calibration.py ----------------------


def test_a_chance_level_study_on_256_images_calls_nothing():
    """Like ``study=bag budget=smoke``: 10-13% accuracy on 256 test images, one seed."""
    rng = np.random.default_rng(4)
    factors = {name: ["off", "on"] for name in "abcdef"}
    data = make_runs(factors, lambda t, seed: 10 + rng.integers(0, 8) * 100 / 256)
    data = data[data["seed"] == 0].assign(test_images=256)
    effects = report.main_effects(data, factors, {name: "off" for name in factors})
    assert (effects["call"] == "undetermined").all()
    assert (effects["se_test"] > 1.9).all()  # the bound: no per-example results here


# --- figures and files --------------------------------------------------------------------


def test_pareto_frontier_keeps_only_undominated_configs():
    costs = np.array([10.0, 20.0, 15.0, 30.0, 15.0])
    accuracies = np.array([50.0, 60.0, 55.0, 58.0, 52.0])
    assert pareto_frontier(costs, accuracies).tolist() == [0, 2, 1]


def test_figures_are_written_as_png(runs, tmp_path):
    verdict = report.pareto_verdict(runs, FACTORS, DEFAULTS)
    for path in (
        pareto_chart(verdict, tmp_path / "pareto.png"),
        cost_accuracy_chart(report.config_table(runs, FACTORS), tmp_path / "cost.png", DEFAULTS),
    ):
        assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 1000


def test_figures_survive_empty_tables(tmp_path):
    empty = make_runs().iloc[0:0]
    verdict = report.pareto_verdict(empty, FACTORS, DEFAULTS)
    assert pareto_chart(verdict, tmp_path / "p.png").stat().st_size > 0
    assert cost_accuracy_chart(report.config_table(empty, FACTORS), tmp_path / "c.png").exists()


def test_write_report_writes_every_file_and_no_temporaries(runs, tmp_path):
    meta = {"factors": FACTORS, "defaults": DEFAULTS, "kind": "grid"}
    paths = write_report(runs, meta, tmp_path / "out", draws=20).paths
    assert set(paths) == set(REPORT_FILES) - {"importances"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in paths.values()
    )
    assert len(pd.read_csv(paths["interactions"])) == 3
    assert set(pd.read_csv(paths["effects"])["call"]) <= set(report.CALLS)
    one_trick = write_report(
        make_runs({"a": ["off", "on"]}),
        {"factors": {"a": ["off", "on"]}, "defaults": {"a": "off"}},
        tmp_path / "single",
    ).paths
    assert list(pd.read_csv(one_trick["interactions"]).columns) == list(report.INTERACTION_COLUMNS)
    assert pd.read_csv(one_trick["interactions"]).empty


def test_figures_stay_readable_with_many_options(tmp_path):
    factors = {f"t{index}": ["off", "on"] for index in range(6)}
    factors["opt"] = ["sgd", "adam", "lamb", "lion", "sam", "ranger"]
    data = make_runs(factors, lambda t, seed: 50 + 2 * (t["t0"] == "on") + seed)
    verdict = report.pareto_verdict(data, factors, {name: o[0] for name, o in factors.items()},
                                    draws=0)
    assert len(verdict.table) == 11
    assert pareto_chart(verdict, tmp_path / "p.png").stat().st_size > 1000


def _optuna_journal(tmp_path, n_trials: int) -> str:
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = str(tmp_path / "study.journal")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    study = optuna.create_study(study_name="search", storage=storage, direction="maximize")

    def objective(trial):
        stem = trial.suggest_categorical("stem", ["none", "deep"])
        lr_factor = trial.suggest_float("lr_factor", 0.1, 10.0, log=True)
        return 60 + 5 * (stem == "deep") + 0.01 * lr_factor

    study.optimize(objective, n_trials=n_trials)
    return path


def test_optuna_importances_from_a_journal_file(tmp_path):
    path = _optuna_journal(tmp_path, n_trials=8)
    importances = report.optuna_importances(path, "search")
    assert list(importances.columns) == list(report.IMPORTANCE_COLUMNS)
    assert set(importances["param"]) == {"stem", "lr_factor"}
    assert importances["importance"].sum() == pytest.approx(1.0)
    assert report.optuna_importances(path, "no-such-study") is None
    assert report.optuna_importances(str(tmp_path / "absent.journal"), "search") is None


def test_optuna_importances_need_two_completed_trials(tmp_path):
    assert report.optuna_importances(_optuna_journal(tmp_path, n_trials=1), "search") is None


def test_write_report_adds_importances_for_an_optuna_search(tmp_path):
    path = _optuna_journal(tmp_path, n_trials=6)
    factors = {"stem": ["none", "deep"]}
    meta = {
        "factors": factors,
        "defaults": {"stem": "none"},
        "kind": "optuna",
        "optuna_storage": path,
        "optuna_study_name": "search",
    }
    written = write_report(make_runs(factors), meta, tmp_path / "out")
    paths = written.paths
    assert set(pd.read_csv(paths["importances"])["param"]) == {"stem", "lr_factor"}
    assert "An Optuna search, not a grid, so no option is called" in written.text
    assert "Optuna's parameter importances: " in written.text
    assert pd.read_csv(paths["interactions"]).empty  # not a factorial grid


def test_missing_configs_follow_a_study_that_lists_its_configs():
    # A study like `seed` runs a few listed configs, not the full factorial of its factors.
    planned = [{"a": "off", "b": "off", "c": "off"}, {"a": "on", "b": "off", "c": "off"},
               {"a": "off", "b": "on", "c": "on"}]
    runs = make_runs()
    listed = runs[(runs["a"] == "off") & (runs["b"] == "off") & (runs["c"] == "off")
                  | (runs["a"] == "on") & (runs["b"] == "off") & (runs["c"] == "off")]
    assert report.missing_configs(listed, FACTORS, planned) == [planned[2]]
    assert len(report.missing_configs(listed, FACTORS)) == 6  # against the full factorial
    verdict = report.pareto_verdict(listed, FACTORS, DEFAULTS, planned=planned)
    assert verdict.missing == [planned[2]]


def test_labels_of_configs_at_nearly_one_point_do_not_overlap():
    import matplotlib.pyplot as plt

    from harness.report.figures import place_labels

    figure, axis = plt.subplots(figsize=(8.0, 5.0))
    # As measured: the baseline and init=xavier 1 s and 2 points apart on a 100 s, 25-point plot.
    points = [("init=xavier", 42.3, 53.5), ("optimizer=adam", 42.2, 53.1),
              ("baseline", 43.4, 51.5), ("stem=deep", 9.8, 42.7)]
    axis.plot([x for _, x, _ in points], [y for _, _, y in points], "o")
    axis.set_xlim(0, 120)
    axis.set_ylim(25, 56)
    texts = place_labels(axis, points)
    figure.canvas.draw()
    boxes = [text.get_window_extent() for text in texts]
    plt.close(figure)
    assert [text.get_text() for text in texts] == [label for label, _, _ in points]
    for first in range(len(boxes)):
        for second in range(first + 1, len(boxes)):
            assert not boxes[first].overlaps(boxes[second]), (points[first], points[second])


def test_the_settle_command_covers_what_it_can_and_names_what_needs_more_than_the_cap():
    """One option a few seeds more settle, one at the margin that no 20 seeds do: the command
    is planned for the first, and the second is named apart (the make run of 2026-12-07)."""
    from harness.report.effects import OptionTest
    from harness.report.examples import PER_EXAMPLE
    from harness.report.noise import DESIGN_MODEL, RunNoise
    from harness.report.verdict import settle_plan

    def option(name: str, effect: float, se: float) -> OptionTest:
        runs = RunNoise(effect, se, 12.0, DESIGN_MODEL, np.zeros(16), seeds=2)
        return OptionTest(name, "on", "off", runs, 0.05, PER_EXAMPLE, 60.0, 60.0, 2)

    tests = [option("init", -3.3, 1.0), option("optimizer", -1.0, 0.8)]
    effects = pd.DataFrame({"trick": ["init", "optimizer"], "option": ["on", "on"],
                            "call": ["undetermined", "undetermined"]})
    plan = settle_plan(tests, effects, n_seeds=2, n_configs=16, alpha=0.025,
                       seconds_per_run=60.0)
    assert plan.too_many == [("optimizer", "on")]
    assert plan.seeds is not None and 2 < plan.seeds <= 20
    assert plan.new_runs == (plan.seeds - 2) * 16
