"""Designs: fractions of the resolution asked for, the registry, and a fraction's calls.

The resolution of a built fraction is measured from its cells (the product of every set of
fewer than R factor columns must vary), not read back from the generators that built it.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.config.settings import build_config
from harness.core.errors import UserError
from harness.report import interactions, main_effects
from harness.run import main
from harness.study.designs import DESIGNS, from_record
from harness.study.designs.fractions import fraction

REPO = Path(__file__).resolve().parents[1]


def measured_resolution(signs: np.ndarray) -> int:
    """Return the length of the shortest set of columns whose product is constant."""
    k = signs.shape[1]
    for size in range(1, k + 1):
        for columns in itertools.combinations(range(k), size):
            if abs(signs[:, list(columns)].prod(axis=1).mean()) == 1:
                return size
    return k + 1  # a full factorial: no product is constant


@pytest.mark.parametrize(("k", "resolution", "runs"), [
    (6, 5, 32), (10, 5, 128), (6, 4, 16), (7, 4, 16), (8, 5, 64), (5, 3, 8), (4, 5, 16)])
def test_fractions_have_the_resolution_asked_for(k, resolution, runs):
    found = fraction(k, resolution)
    signs = np.array(found.signs())
    assert signs.shape == (runs, k)
    assert len({tuple(row) for row in signs}) == runs  # no cell twice
    assert measured_resolution(signs) >= resolution
    assert found.resolution == measured_resolution(signs) or found.p == 0
    assert (signs == -1).all(axis=1).any()  # the baseline, every default, is a cell


def test_the_minimum_aberration_fraction_of_ten_factors():
    # Wu & Hamada's 2^(10-3) of resolution V: three words of length 5, three of 6, one of 7.
    assert fraction(10, 5).word_length_pattern[4:7] == (3, 3, 1)


@pytest.mark.parametrize("bad", [["design=fractional", "resolution=2"],
                                 ["design=fractional", "resolution=five"],
                                 ["resolution=4"],
                                 ["design=lattice"],
                                 ["study=airbench", "design=fractional"],
                                 ["design=fractional", "stem=none", "init=default",
                                  "optimizer=sgd"]])
def test_impossible_designs_get_one_line_and_exit_2(bad):
    result = subprocess.run(
        [sys.executable, "-m", "harness.run", "budget=smoke", *bad, "--dry-run"],
        cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ")


def test_dry_run_shows_the_fraction_and_its_aliases(capsys):
    assert main(["study=tricks", "budget=smoke", "design=fractional", "resolution=4",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 trials = 8 configs" in out
    assert "2^(4-1) fraction, 8 cells, resolution IV: depth = stem×init×optimizer" in out
    assert "cannot tell apart: stem×init = optimizer×depth" in out


def test_a_study_file_declares_its_design_and_the_old_kind_still_works():
    fractional = build_config(["study=bag_fraction", "budget=smoke"])
    assert fractional.study.design.name == "fractional"
    assert len(fractional.configs) == 32
    assert build_config(["study=bag", "budget=smoke"]).study.design.name == "grid"  # kind: grid
    assert build_config(["study=airbench", "budget=smoke"]).study.design.name == "listed"
    assert build_config(["study=search", "budget=smoke"]).study.design.name == "search"


def test_a_wider_factor_is_crossed_in_full_with_the_fraction():
    cfg = build_config(["study=tricks", "budget=smoke", "design=fractional", "resolution=3",
                        "factors.depth=[resnet18,resnet34,simplecnn]"])
    depths = pd.Series([c["depth"] for c in cfg.configs]).value_counts()
    assert set(depths.index) == {"resnet18", "resnet34", "simplecnn"}
    assert set(depths) == {4}  # each depth with every cell of the 2^(3-1) fraction


def test_designs_round_trip_through_the_parent_tag():
    for name in DESIGNS:
        design = DESIGNS.get(name)()
        text = __import__("json").dumps(design.record())
        assert from_record(text, None, False) == design
    assert from_record(None, "optuna", False).name == "search"
    assert from_record(None, "grid", True).name == "listed"
    assert from_record(None, None, False).name == "grid"
    with pytest.raises(UserError, match="resolution"):
        DESIGNS.get("fractional").build({"resolution": 1}, "x")


def test_no_code_outside_the_designs_branches_on_a_design_name():
    pattern = re.compile(r"kind ==|kind !=|design\.name ==|\.name == \"(grid|listed|search)")
    hits = [f"{path.relative_to(REPO)}:{number}"
            for path in (REPO / "harness").rglob("*.py") if "designs" not in path.parts
            for number, line in enumerate(path.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert hits == []


BAG_EFFECTS = {"label_smoothing": 0.6, "resnet_d": 1.2, "zero_gamma": -0.4,
               "no_bias_decay": 0.0, "schedule": 2.5, "augment": 4.0}
BAG_INTERACTIONS = {("schedule", "augment"): 1.5, ("resnet_d", "zero_gamma"): -0.8}


def simulated_runs(configs, factors, seeds, rng) -> pd.DataFrame:
    """Runs of known effects: main effects, two two-way interactions, seed noise of 0.2."""
    rows = []
    for index, (toggles, seed) in enumerate(itertools.product(configs, seeds)):
        on = {t: toggles[t] != factors[t][0] for t in factors}
        acc = 80 + sum(BAG_EFFECTS[t] for t in factors if on[t])
        acc += sum(v for (a, b), v in BAG_INTERACTIONS.items() if on[a] and on[b])
        acc += rng.normal(0, 0.2)
        rows.append({"run_id": f"r{index}", "status": "FINISHED", "failure": None,
                     "seed": seed, **{t: toggles[t] for t in factors}, "test_acc": acc,
                     "val_acc": acc, "test_loss": 1 - acc / 100, "train_seconds": 10.0,
                     "epochs_completed": 2, "test_images": 10_000, "device": "cpu"})
    return pd.DataFrame(rows)


def test_the_bag_fraction_finds_the_main_effects_of_the_full_grid():
    rng = np.random.default_rng(0)
    effects = {}
    for study in ("bag", "bag_fraction"):
        cfg = build_config([f"study={study}", "budget=smoke"])
        factors = cfg.factors
        defaults = {t: options[0] for t, options in factors.items()}
        runs = simulated_runs(cfg.configs, factors, [0, 1], rng)
        table = main_effects(runs, factors, defaults).set_index("trick")
        effects[study] = table
        assert len(table) == 6 and table["call"].notna().all()
        for trick, truth in BAG_EFFECTS.items():
            assert table.loc[trick, "effect_mean"] == pytest.approx(
                truth + _average_interaction(trick), abs=0.25), (study, trick)
    both = effects["bag"]["effect_mean"] - effects["bag_fraction"]["effect_mean"]
    assert both.abs().max() < 0.3
    calls = effects["bag_fraction"]["call"]
    assert calls["augment"] == "helps" and calls["schedule"] == "helps"


def test_a_resolution_v_fraction_reports_its_two_way_interactions():
    cfg = build_config(["study=bag_fraction", "budget=smoke"])
    factors = cfg.factors
    defaults = {t: options[0] for t, options in factors.items()}
    runs = simulated_runs(cfg.configs, factors, [0], np.random.default_rng(1))
    table = interactions(runs, factors, defaults, from_model=True)
    assert len(table) == 15 and table["interaction_mean"].notna().all()
    table = table.set_index(["trick_a", "trick_b"])
    for pair in itertools.combinations(factors, 2):
        truth = BAG_INTERACTIONS.get(pair, 0.0)
        row = table.loc[pair]
        assert row["interaction_mean"] == pytest.approx(truth, abs=0.3), pair
        assert row["ci95_low"] < row["interaction_mean"] < row["ci95_high"]
    assert table.loc[("schedule", "augment"), "ci95_low"] > 0
    # Without the model (a listed or a resolution-IV design) a fraction has no quadruples.
    assert interactions(runs, factors, defaults)["n"].eq(0).all()


def _average_interaction(trick: str) -> float:
    """An option's effect averaged over its partners: half of each interaction it is in."""
    return sum(v / 2 for pair, v in BAG_INTERACTIONS.items() if trick in pair)


@pytest.mark.slow
def test_the_bag_fraction_runs_at_the_smoke_budget(learnable_folder, tmp_path):
    from test_study import store_args, trial_runs

    assert main(["study=bag_fraction", *store_args(learnable_folder, tmp_path)]) == 0
    _, runs, parents = trial_runs(tmp_path, "bag_fraction-smoke")
    assert len(runs) == 32 and {r.info.status for r in runs} == {"FINISHED"}
    assert "fractional" in parents[0].data.tags["harness.design"]
    verdict = (tmp_path / "report" / "verdict.md").read_text()
    assert "Design: 2^(6-1) fraction, 32 cells, resolution VI" in verdict
    effects = pd.read_csv(tmp_path / "report" / "effects.csv")
    assert len(effects) == 6 and effects["call"].notna().all()
