"""The metrics registry: what evaluation computes, what a trial logs, what the report calls on."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from harness.recipe import Recipe
from harness.report import stats
from harness.report.effects import HELPS, HURTS, NEGLIGIBLE, main_effects
from harness.report.tables import config_table
from harness.report.writer import write_report
from harness.tracking.trial_logging import final_metrics
from harness.training.evaluate import score
from harness.training.loop import TrainResult
from harness.training.metrics import METRICS, MetricDef, by_logged_name, compute_all
from harness.training.placement import Placement

FACTORS = {"a": ["off", "on"], "b": ["off", "on"], "c": ["off", "on"]}
DEFAULTS = {trick: options[0] for trick, options in FACTORS.items()}


def test_the_built_in_metrics_match_their_definitions():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0, -2.0, -3.0],    # right
                           [0.0, 2.0, 1.0, -1.0, -2.0, -3.0],    # second best: top-5 only
                           [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])      # last of six: neither
    labels = torch.tensor([0, 2, 0])
    values = compute_all(logits, labels)
    assert values["acc"] == pytest.approx(100 / 3)
    assert values["top5"] == pytest.approx(200 / 3)
    assert values["loss"] == pytest.approx(F.cross_entropy(logits, labels).item())
    assert all(np.isnan(v) for v in compute_all(logits[:0], labels[:0]).values())


def test_evaluation_carries_every_metric_and_accuracy_is_unchanged():
    torch.manual_seed(0)
    logits, labels = torch.randn(500, 10), torch.randint(0, 10, (500,))
    found = score(logits, labels, [str(i) for i in range(10)])
    assert set(found.metrics) == set(METRICS)
    # accuracy and loss to the last digit of the formulas the harness used before the registry
    assert found.accuracy == 100.0 * (logits.argmax(1) == labels).double().sum().item() / 500
    assert found.loss == F.cross_entropy(logits, labels).item()
    assert found.accuracy == found.metrics["acc"]


@pytest.fixture
def registered_error():
    """A metric registered the way a trick's module would, removed again afterwards."""
    def error(logits, labels):
        return 100.0 * (logits.argmax(dim=1) != labels).double().mean().item()

    metric = MetricDef("error", error, higher_is_better=False, unit="points", margin=1.0,
                       label="test error", share_of_examples=True)
    METRICS.register("error", module=__name__)(metric)
    yield metric
    METRICS._entries.pop("error")
    METRICS._origins.pop("error")


def test_a_registered_metric_is_evaluated_logged_and_tabled(registered_error):
    logits, labels = torch.eye(4)[[0, 1, 2, 2]], torch.tensor([0, 1, 2, 3])
    test = score(logits, labels, ["w", "x", "y", "z"])
    assert test.metrics["error"] == 25.0
    result = TrainResult(model=torch.nn.Linear(1, 1),
                         placement=Placement.for_recipe(Recipe(), torch.device("cpu")),
                         status="finished", train_seconds=1.0, images_seen=4)
    logged = final_metrics(result, test)
    assert logged["test_error"] == 25.0 and logged["test_acc"] == 75.0
    assert by_logged_name("test_error") is registered_error
    runs = _runs(lambda on, seed: 1.0)
    runs["test_error"] = 100 - runs["test_acc"]
    assert "test_error_mean" in config_table(runs, FACTORS).columns


def test_an_unknown_metric_names_the_choices():
    with pytest.raises(Exception, match="unknown metric 'test_lose'.*did you mean 'test_loss'"):
        by_logged_name("test_lose")


def _runs(loss, seeds=(0, 1, 2)) -> pd.DataFrame:
    """Finished runs of the 2^3 grid; ``loss(on, seed)`` is the test loss, on the tricks' flags."""
    rows = []
    for index, (*options, seed) in enumerate(itertools.product(*FACTORS.values(), seeds)):
        on = np.array([option == "on" for option in options])
        value = loss(on, seed)
        rows.append({"run_id": f"r{index}", "status": "FINISHED", "failure": None, "seed": seed,
                     **dict(zip(FACTORS, options)), "test_loss": value,
                     "test_acc": 50.0, "val_acc": 50.0, "train_seconds": 10.0,
                     "epochs_completed": 1, "test_images": 10_000, "device": "cpu"})
    return pd.DataFrame(rows)


def test_a_loss_is_called_the_right_way_round(tmp_path):
    rng = np.random.default_rng(0)
    runs = _runs(lambda on, seed: 1.0 - 0.3 * on[0] + 0.3 * on[1] + rng.normal(0, 0.005))
    effects = main_effects(runs, FACTORS, DEFAULTS, metric="test_loss", margin=0.05)
    calls = dict(zip(effects["trick"], effects["call"]))
    assert calls == {"a": HELPS, "b": HURTS, "c": NEGLIGIBLE}
    gains = dict(zip(effects["trick"], effects["effect_mean"]))
    assert gains["a"] == pytest.approx(0.3, abs=0.02)  # a gain: how much the loss fell
    report = write_report(runs, {"factors": FACTORS, "defaults": DEFAULTS}, tmp_path, draws=0,
                          metric="test_loss")
    assert report.verdict.chosen == [("a", "on")]
    best = report.verdict.best_config  # the lowest loss: a on, b off
    assert (best["a"], best["b"]) == ("on", "off")
    assert report.verdict.best_acc < report.verdict.baseline_acc  # raw losses, not gains
    assert "Effects are on test_loss" in report.text and "nats" in report.text
    written = pd.read_csv(report.paths["effects"])
    assert dict(zip(written["trick"], written["call"])) == calls


@pytest.mark.slow
def test_calls_on_a_loss_keep_the_family_wise_rate_under_the_null():
    """2,000 null studies on test_loss, one trick at 8 times the others' noise: at most 5%."""
    studies, wrong = 2000, 0
    rng = np.random.default_rng(1)
    for _ in range(studies):
        noise = rng.normal(0, 0.02, size=(8, 2))
        runs = _runs(lambda on, seed, noise=noise: 1.0 + noise[int(on @ [4, 2, 1]), seed]
                     * (8.0 if on[0] else 1.0), seeds=(0, 1))
        effects = main_effects(runs, FACTORS, DEFAULTS, metric="test_loss", margin=0.05)
        wrong += bool(effects["call"].isin([HELPS, HURTS]).any())
    low, _ = stats.wilson_interval(wrong, studies)
    assert low <= stats.ALPHA, f"{wrong} of {studies} null studies made a wrong call"
