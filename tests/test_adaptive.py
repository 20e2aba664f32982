"""``seeds=auto``: rounds of one seed more until every option is settled, error rate held.

The rounds' rule is tested as rates on simulated studies through the report's own code
(``benchmarks/calibration.py``'s ``auto`` scenarios); the command end to end on real, small
studies: two workers, and a SIGKILL in the second round then a resume.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.config.settings import build_config
from harness.core.errors import UserError
from harness.report import stats
from harness.run import main
from harness.study.designs.adaptive import Rounds
from harness.tracking.schema import Tag
from tests.test_calibration import calibration
from tests.test_growth import args_for, experiment_runs, finished, images  # noqa: F401
from tests.test_workers import harness

TWO_CONFIGS = ("kind: grid\nrecipe: {model: {arch: simplecnn}, data: {name: imagefolder}}\n"
               "factors: {optimizer: [sgd, adam]}\n")


def test_rounds_add_one_seed_each_and_split_alpha_over_the_looks():
    rounds = Rounds(first=(0,), max_seeds=4)
    assert list(rounds.seeds()) == [(0,), (0, 1), (0, 1, 2), (0, 1, 2, 3)]
    assert rounds.looks == 4 and rounds.look_alpha(0.05) == pytest.approx(0.0125)
    later = Rounds(first=(100, 101), max_seeds=3)
    assert list(later.seeds()) == [(100, 101), (100, 101, 102)] and later.looks == 2


def test_seeds_auto_takes_the_study_seeds_and_the_offset():
    cfg = build_config(["seeds=auto", "max_seeds=3", "seed_offset=10", "max_minutes=30"])
    assert cfg.seeds == (10,) and cfg.rounds == Rounds(first=(10,), max_seeds=3, max_minutes=30.0)
    assert build_config(["seeds=[0,1]"]).rounds is None


@pytest.mark.parametrize("args, words", [
    (["max_seeds=3", "budget=smoke"], "add seeds=auto"),
    (["seed_offset=3", "budget=smoke"], "seed_offset shifts the seeds of seeds=auto"),
    (["seeds=auto", "max_seeds=0"], "max_seeds must be an integer from 1"),
    (["seeds=auto", "max_seeds=21"], "to 20"),
    (["seeds=auto", "max_minutes=0"], "max_minutes must be a positive"),
    (["seeds=auto", "study=search"], "searches instead"),
    (["seeds=auto", "seeds=+1"], "not both"),
])
def test_bad_round_settings_are_refused(args, words):
    with pytest.raises(UserError, match=words):
        build_config(args)


def test_dry_run_says_how_many_rounds_may_follow(capsys):
    assert main(["seeds=auto", "max_seeds=3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "round 1 of at most 3" in out and "32 trials at most" in out, out


def test_make_run_is_seeds_auto_with_two_rounds_at_most():
    # `make run`: seeds=auto by default on the cpu budget, 2 rounds of 16 at most.
    cfg = build_config(["study=tricks", "budget=cpu"])
    assert cfg.rounds == Rounds(first=(0,), max_seeds=2) and len(cfg.configs) == 16
    assert build_config(["study=tricks", "budget=cpu", "seeds=[0]"]).rounds is None


AUTO_NULL = "auto 2^3 x1-5 50% null, one config 8x noisier"
AUTO_EARLY = "auto 2^3 x1-5 94% null"


@pytest.fixture(scope="module")
def auto_tallies():
    chosen = {s.name: s for s in calibration.scenarios() if s.name in (AUTO_NULL, AUTO_EARLY)}
    return {AUTO_NULL: calibration.measure(chosen[AUTO_NULL], 1000, jobs=2),
            AUTO_EARLY: calibration.measure(chosen[AUTO_EARLY], 1000, jobs=2)}


@pytest.mark.slow
def test_peeking_after_every_round_keeps_the_error_rate(auto_tallies):
    # Five looks at 1% each, under the null with one config 8x noisier: the regime where a
    # study that peeks runs to the cap, so every look can err.
    tally = auto_tallies[AUTO_NULL]
    low, _ = stats.wilson_interval(tally.wrong, tally.studies)
    assert low <= 0.05, f"{tally.wrong} of {tally.studies} studies made a wrong call at some look"
    at_cap = sum(r == 5 for r in tally.rounds)
    assert at_cap >= 0.9 * tally.studies, f"only {at_cap} ran to the cap under the null"


@pytest.mark.slow
def test_precise_runs_stop_early(auto_tallies):
    # At 94% and 0.15 points of seed noise, every null option is negligible after two seeds.
    tally = auto_tallies[AUTO_EARLY]
    low, _ = stats.wilson_interval(tally.wrong, tally.studies)
    assert low <= 0.05
    assert sum(tally.rounds) / len(tally.rounds) < 3, tally.rounds[:20]


def _two_config_args(folder: Path, tmp: Path, *extra: str) -> list[str]:
    study = tmp / "two.yaml"
    study.write_text(TWO_CONFIGS)
    return [f"study={study}", *args_for(folder, tmp), "seeds=auto", "max_seeds=2", *extra]


def _assert_every_cell_finished_once(tmp: Path, cells: int) -> None:
    _, _, runs, _ = experiment_runs(tmp, "two-smoke")
    done = finished(runs)
    identities = [r.data.tags[Tag.IDENTITY] for r in done
                  if Tag.REPLACED_BY not in r.data.tags]
    assert len(identities) == cells and len(set(identities)) == cells, identities
    assert "RUNNING" not in {r.info.status for r in runs}


@pytest.mark.slow
def test_two_workers_run_both_rounds_with_one_report(images, tmp_path):  # noqa: F811
    # Two configs and one seed give no interval, so a second round always follows.
    process = harness(_two_config_args(images, tmp_path, "workers=2"))
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    assert "round 1 of at most 2" in out and "round 2 of at most 2" in out, out
    assert out.count("\nreport: ") == 1 and "seeds=auto: 2 round(s)" in out, out
    _assert_every_cell_finished_once(tmp_path, 4)


@pytest.mark.slow
def test_sigkill_in_the_second_round_resumes_there(images, tmp_path):  # noqa: F811
    args = _two_config_args(images, tmp_path, "trainer.epochs=30", "trainer.batch_size=8")
    process = harness(args)
    lines, deadline, in_round_two = [], time.time() + 300, False
    for line in process.stdout:
        lines.append(line)
        in_round_two = in_round_two or line.startswith("round 2 of")
        if in_round_two and line.startswith("trial "):
            time.sleep(0.5)
            process.send_signal(signal.SIGKILL)
            break
        assert time.time() < deadline, "".join(lines)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "".join(lines)
    again = subprocess.run([sys.executable, "-m", "harness.run", *args], capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to run" in again.stdout and "round 2 of at most 2" in again.stdout
    _assert_every_cell_finished_once(tmp_path, 4)
