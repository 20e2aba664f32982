"""What logging each run's per-example test results costs, next to a cpu-budget trial.

Logs CIFAR-10-sized predictions (10,000 test images) the way every trial does
(:func:`~harness.tracking.trial_logging.log_test_predictions`: a compressed .npz artifact and the
test set's digest as a tag) into a fresh SQLite MLflow store, ``--runs`` times, and prints the
median seconds and the artifact's size. Compare with ``train_seconds`` of a cpu-budget trial.

    python benchmarks/example_logging.py --runs 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.data.prepare import test_digest  # noqa: E402
from harness.tracking.store import Tracker  # noqa: E402
from harness.tracking.trial_logging import log_test_predictions  # noqa: E402

IMAGES = 10_000


def main(argv: list[str] | None = None) -> int:
    """Time the per-example logging of ``--runs`` runs and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (IMAGES,), generator=generator)
    images = torch.rand(IMAGES, 3, 32, 32, generator=generator)
    data = SimpleNamespace(classes=tuple(str(c) for c in range(10)), test_y=labels,
                           test_digest=test_digest(images, labels))
    with tempfile.TemporaryDirectory() as folder:
        tracker = Tracker(f"sqlite:///{folder}/mlflow.db")
        experiment = tracker.experiment("example-logging")
        seconds = []
        for _ in range(args.runs):
            run_id = tracker.client.create_run(experiment).info.run_id
            predicted = torch.where(torch.rand(IMAGES, generator=generator) < 0.6, labels,
                                    torch.randint(0, 10, (IMAGES,), generator=generator))
            started = time.perf_counter()
            log_test_predictions(tracker, run_id, data, SimpleNamespace(predicted=predicted))
            seconds.append(time.perf_counter() - started)
        size = sum(p.stat().st_size for p in Path(folder).rglob("test_predictions.npz"))
    print(f"per-example logging: median {statistics.median(seconds):.3f} s a run "
          f"(max {max(seconds):.3f} s), {size / args.runs / 1024:.1f} kB a run, "
          f"{args.runs} runs, {IMAGES} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
