"""The pieces of an effect's noise: family levels, planning numbers, paired runs, the design
model and the test set's share from per-example results."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from harness.report import stats
from harness.report.effects import (
    HELPS,
    HURTS,
    NEGLIGIBLE,
    UNDETERMINED,
    call_of,
    effects_table,
    option_tests,
)
from harness.report.examples import (
    BOUND,
    PER_EXAMPLE,
    ExampleResults,
    TestSetNoise,
    contrast_bound,
    pair_bound,
)
from harness.report.noise import (
    DESIGN_MODEL,
    PAIRED,
    PAIRED_LESS_INTERACTIONS,
    Layout,
    estimate,
    removes_interactions,
)


def grid_cells(k: int, seeds: int, value) -> pd.DataFrame:
    """Return a 2^k grid's cells: columns t0.., seed and score = value(levels, seed)."""
    rows = []
    for levels in itertools.product((0, 1), repeat=k):
        for seed in range(seeds):
            row = {f"t{i}": ("on" if level else "off") for i, level in enumerate(levels)}
            rows.append({**row, "seed": seed, "score": value(np.array(levels), seed)})
    return pd.DataFrame(rows)


def factors(k: int) -> dict[str, list[str]]:
    return {f"t{i}": ["off", "on"] for i in range(k)}


# --- stats ----------------------------------------------------------------------------------


def test_family_level_is_bonferroni():
    assert stats.family_level(4) == pytest.approx(1 - 0.05 / 4)
    assert stats.family_level(0) == pytest.approx(0.95)


def test_critical_t_is_normal_at_infinite_df_and_nan_without_df():
    assert stats.critical_t(0.95, math.inf) == pytest.approx(1.959964, abs=1e-5)
    assert stats.critical_t(0.95, 3) == pytest.approx(3.182446, abs=1e-5)
    assert math.isnan(stats.critical_t(0.95, 0))
    assert math.isnan(stats.critical_t(0.95, math.nan))


def test_power_is_the_noncentral_t_tail():
    level, df, se = 0.99, 6.0, 0.5
    critical = scipy_stats.t.ppf(0.995, df)
    expected = scipy_stats.nct.sf(critical, df, 2.0 / se) + scipy_stats.nct.cdf(-critical, df, 4.0)
    assert stats.power(2.0, se, df, level) == pytest.approx(expected)
    assert stats.power(0.0, se, df, level) == pytest.approx(0.01)


def test_detectable_with_a_known_se_has_exactly_the_planned_power():
    detectable = stats.detectable_effect(0.4, 7.0, 0.98, measured_df=math.inf)
    assert stats.power(detectable, 0.4, 7.0, 0.98) == pytest.approx(0.8, abs=1e-6)


def test_detectable_averages_the_power_over_what_the_se_could_be():
    se, df, level = 1.0, 5.0, 1 - 0.05 / 3
    planned = stats.detectable_effect(se, df, level)
    # The true SE given the estimate: scaled inverse chi-square on df degrees of freedom.
    ratios = np.sqrt(df / scipy_stats.chi2.ppf((np.arange(4000) + 0.5) / 4000, df))
    average = np.mean([stats.power(planned, se * r, df, level) for r in ratios[::20]])
    assert average == pytest.approx(0.8, abs=0.01)
    assert planned > stats.detectable_effect(se, df, level, measured_df=math.inf)


def test_detectable_is_nan_without_an_se():
    assert math.isnan(stats.detectable_effect(math.nan, 3.0, 0.95))
    assert math.isnan(stats.detectable_effect(1.0, math.nan, 0.95))


def test_wilson_interval_matches_the_textbook_case():
    low, high = stats.wilson_interval(5, 100)
    assert (low, high) == pytest.approx((0.02154, 0.11175), abs=1e-4)
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(("low", "high", "call"), [
    (0.2, 3.0, HELPS), (-3.0, -0.1, HURTS), (-0.5, 0.8, NEGLIGIBLE), (-2.0, 0.5, UNDETERMINED),
    (math.nan, math.nan, UNDETERMINED), (-1.0, 0.5, UNDETERMINED),
])
def test_call_of_reads_the_interval(low, high, call):
    assert call_of(low, high, margin=1.0) == call


# --- run-to-run noise -----------------------------------------------------------------------


def test_paired_runs_take_the_spread_of_the_differences():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, 32)
    cells = grid_cells(3, 4, lambda levels, seed: 50 + 2 * levels[0] + noise[
        4 * int(levels @ [4, 2, 1]) + seed])
    layout = Layout.of(cells, factors(3))
    found = estimate(layout, 0, 1, 0)
    on = cells[cells["t0"] == "on"].sort_values(["t1", "t2", "seed"])["score"].to_numpy()
    off = cells[cells["t0"] == "off"].sort_values(["t1", "t2", "seed"])["score"].to_numpy()
    difference = on - off
    assert found.effect == pytest.approx(difference.mean())
    # 16 pieces, 2 interaction columns: 13 df left is 13/15 of them, so they are removed.
    assert found.source == PAIRED_LESS_INTERACTIONS
    assert found.df == 13
    assert len(found.pairs) == 16


def test_two_seeds_of_a_small_grid_keep_the_plain_pairs():
    cells = grid_cells(3, 2, lambda levels, seed: 50 + seed * (levels[1] + 1))
    found = estimate(Layout.of(cells, factors(3)), 0, 1, 0)
    # 8 pieces: removing 2 columns would keep 5 of 7 df, under three quarters.
    assert found.source == PAIRED
    assert found.df == 7


def test_removal_rule_depends_on_the_design_alone():
    assert removes_interactions(8, 3, replicated=False)  # 2^4 x 1: 4 df left
    assert not removes_interactions(4, 2, replicated=False)  # 2^3 x 1: 1 df left
    assert not removes_interactions(8, 2, replicated=True)
    assert removes_interactions(12, 2, replicated=True)
    assert not removes_interactions(12, 0, replicated=True)


def test_one_seed_interactions_do_not_count_as_noise():
    # t0 helps by 2 and interacts strongly with t1 and t2: the plain spread would be huge.
    rng = np.random.default_rng(1)
    jitter = rng.normal(0, 0.1, 16)

    def value(levels, seed):
        a, b, c, d = levels
        return 50 + 2 * a + 6 * a * b - 6 * a * c + 3 * b + jitter[int(levels @ [8, 4, 2, 1])]

    cells = grid_cells(4, 1, value)
    found = estimate(Layout.of(cells, factors(4)), 0, 1, 0)
    assert found.source == PAIRED_LESS_INTERACTIONS
    assert found.df == 4
    assert found.effect == pytest.approx(2 + 3 - 3, abs=0.2)  # averaged over partners
    assert found.se < 0.2


def test_one_noisy_config_widens_only_the_intervals_it_is_in():
    rng = np.random.default_rng(2)

    def value(levels, seed):
        noisy = levels.tolist() == [1, 1, 1]
        return 50 + rng.normal(0, 8.0 if noisy else 1.0)

    cells = grid_cells(3, 2, value)
    layout = Layout.of(cells, factors(3))
    quiet = grid_cells(3, 2, lambda levels, seed: 50 + rng.normal(0, 1.0))
    for trick in range(3):
        assert estimate(layout, trick, 1, 0).se > estimate(Layout.of(quiet, factors(3)),
                                                           trick, 1, 0).se


def test_the_design_model_estimates_a_half_fraction():
    # 2^(6-1) with t5 = t0 t1 t2 t3 t4: no option has pairs, so the model estimates every one
    # from 1 + 6 mains + 15 two-way columns, leaving 10 higher-order contrasts as the error.
    rows = []
    rng = np.random.default_rng(3)
    truth = np.array([3.0, -2.0, 0.0, 1.0, 0.0, 0.5])
    for levels in itertools.product((0, 1), repeat=5):
        last = (np.prod(2 * np.array(levels) - 1) + 1) // 2
        full = np.array([*levels, last])
        rows.append({**{f"t{i}": ("on" if v else "off") for i, v in enumerate(full)},
                     "seed": 0, "score": 60 + truth @ full + 4.0 * full[0] * full[1]
                     + rng.normal(0, 0.3)})
    layout = Layout.of(pd.DataFrame(rows), factors(6))
    for trick in range(6):
        found = estimate(layout, trick, 1, 0)
        assert found.source == DESIGN_MODEL
        assert found.df == 10
        # The main effect averaged over the partners: t0 and t1 gain half the interaction.
        expected = truth[trick] + (2.0 if trick in (0, 1) else 0.0)
        assert found.effect == pytest.approx(expected, abs=4 * found.se)
        assert found.se < 0.3
        assert found.weights.sum() == pytest.approx(0.0, abs=1e-9)


def test_projected_se_shrinks_with_seeds_and_keeps_the_interaction_columns():
    rng = np.random.default_rng(4)
    cells = grid_cells(4, 1, lambda levels, seed: 50 + rng.normal(0, 1))
    found = estimate(Layout.of(cells, factors(4)), 0, 1, 0)
    se, df = found.projected(4)
    assert se == pytest.approx(found.se / 2)
    assert df == 8 * 4 - 1 - 3


# --- the test set's share -------------------------------------------------------------------


def test_test_set_variance_is_the_seed_stable_part_of_the_contrast():
    rng = np.random.default_rng(5)
    images, seeds = 20_000, 6
    chance_a = rng.uniform(0.2, 0.9, images)
    chance_b = np.clip(chance_a + rng.normal(0, 0.2, images), 0, 1)
    run_ids, configs, correct = [], [], {}
    for config, chance in enumerate((chance_a, chance_b)):
        for seed in range(seeds):
            name = f"c{config}s{seed}"
            correct[name] = rng.random(images) < chance
            run_ids.append([name])
            configs.append(config)
    noise = TestSetNoise(run_ids, np.array(configs),
                         ExampleResults(correct, dict.fromkeys(correct, "d")))
    weights = np.array([-1.0 / seeds] * seeds + [1.0 / seeds] * seeds)
    truth = 1e4 * np.var(chance_b - chance_a) / images
    assert noise.variance(weights) == pytest.approx(truth, rel=0.1)
    # The raw spread of the contrast holds the seed noise too: far larger.
    contrast = weights @ np.array([correct[r[0]] for r in run_ids], float)
    assert 1e4 * np.var(contrast) / images > 1.5 * truth


def test_vectors_of_another_test_order_are_not_lined_up():
    correct = {"a": np.ones(10, bool), "b": np.zeros(10, bool)}
    noise = TestSetNoise([["a"], ["b"]], np.array([0, 1]),
                         ExampleResults(correct, {"a": "x", "b": "y"}))
    assert math.isnan(noise.variance(np.array([1.0, -1.0])))


def test_the_bounds_are_never_below_a_true_share():
    rng = np.random.default_rng(6)
    images = 1000
    for _ in range(200):
        p = rng.uniform(0, 1, images) ** rng.uniform(0.2, 3)
        q = rng.uniform(0, 1, images) ** rng.uniform(0.2, 3)
        true_sd = 100 * np.std(p - q) / math.sqrt(images)
        assert pair_bound(100 * p.mean(), 100 * q.mean(), images) >= true_sd
        weights = np.array([0.5, 0.5, -0.5, -0.5])
        chances = np.vstack([p, q, q[::-1], p[::-1]])
        true = 100 * np.std(weights @ chances) / math.sqrt(images)
        assert contrast_bound(weights, 100 * chances.mean(axis=1), images) >= true - 1e-9


def test_option_tests_say_where_each_part_of_the_noise_came_from():
    rng = np.random.default_rng(7)
    images = 2000
    base = rng.uniform(0.3, 0.8, images)
    rows, correct = [], {}
    for index, (levels, seed) in enumerate(itertools.product(
            itertools.product((0, 1), repeat=2), range(3))):
        run = f"r{index}"
        chance = np.clip(base + 0.05 * levels[0], 0, 1)
        correct[run] = rng.random(images) < chance
        rows.append({"run_id": run, "status": "FINISHED", "failure": None, "seed": seed,
                     "t0": "on" if levels[0] else "off", "t1": "on" if levels[1] else "off",
                     "test_acc": 100 * correct[run].mean(), "test_images": float(images),
                     "train_seconds": 1.0})
    runs = pd.DataFrame(rows)
    with_examples = effects_table(option_tests(
        runs, factors(2), {"t0": "off", "t1": "off"},
        ExampleResults(correct, dict.fromkeys(correct, "d"))))
    without = effects_table(option_tests(runs, factors(2), {"t0": "off", "t1": "off"}))
    assert all(PER_EXAMPLE in source for source in with_examples["ci_source"])
    assert all(BOUND in source for source in without["ci_source"])
    assert (without["se_test"] > with_examples["se_test"]).all()
    assert (with_examples["df"] == without["df"]).all()
    assert with_examples.loc[with_examples["trick"] == "t0", "call"].item() == HELPS
