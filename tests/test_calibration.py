"""The report's promises, tested as rates: the reduced calibration table of
``benchmarks/calibration.py`` (3 scenarios x 1,000 simulated studies through the real report
code). A true family-wise error rate of 7% fails here: at 1,000 studies its Wilson interval
lies above 5% in all but about 1% of runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from harness.report import stats

ROOT = Path(__file__).resolve().parents[1]
STUDIES = 1000


def _calibration():
    # One module object however often this file is imported (as test_calibration by pytest,
    # as tests.test_calibration by test_adaptive): the pool pickles its classes by name.
    if "calibration" in sys.modules:
        return sys.modules["calibration"]
    spec = importlib.util.spec_from_file_location("calibration", ROOT / "benchmarks" /
                                                  "calibration.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["calibration"] = module  # the worker processes pickle its classes by name
    spec.loader.exec_module(module)
    return module


calibration = _calibration()
QUICK = {s.name: s for s in calibration.scenarios() if s.name in calibration.QUICK}


@pytest.fixture(scope="module")
def tallies():
    return {name: calibration.measure(scenario, STUDIES, jobs=2)
            for name, scenario in QUICK.items()}


def test_the_quick_table_is_the_three_named_scenarios():
    assert set(QUICK) == set(calibration.QUICK)


@pytest.mark.slow
@pytest.mark.parametrize("name", calibration.QUICK)
def test_the_family_wise_error_rate_holds(tallies, name):
    tally = tallies[name]
    low, _ = stats.wilson_interval(tally.wrong, tally.studies)
    assert tally.studies == STUDIES
    assert low <= 0.05, f"{name}: {tally.wrong} of {tally.studies} studies made a wrong call"


@pytest.mark.slow
def test_a_3_sigma_effect_on_a_gpu_is_called(tallies):
    tally = tallies["2^3 x3 94% effect 3s"]
    _, high = stats.wilson_interval(tally.called, tally.studies)
    assert high >= 0.9, f"called in {tally.called} of {tally.studies}"


@pytest.mark.slow
def test_the_intervals_hold_jointly(tallies):
    for name, tally in tallies.items():
        _, high = stats.wilson_interval(tally.covered, tally.studies)
        assert high >= 0.95, f"{name}: joint coverage {tally.covered} of {tally.studies}"
