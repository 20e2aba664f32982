"""Does ``workers=N`` finish a study sooner than ``workers=1`` on the same cores? Side by side.

Runs the same study once per worker count, one after the other, each on a fresh SQLite MLflow
store and Optuna journal of its own, and prints the wall times, their ratio to the first count
and whether every trial finished exactly once. The stores are kept (``--keep``) so that the
verdict of each run can be exported after. Not part of CI: at the cpu budget each run of the
tricks grid takes about 12 minutes on 2 cores::

    .venv/bin/python benchmarks/workers_wall.py --workers 1 2 --keep /tmp/workers-wall
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_study(workers: int, store: Path, extra: list[str]) -> dict[str, object]:
    """Run the study with ``workers`` workers on a fresh store under ``store``; return figures."""
    store.mkdir(parents=True, exist_ok=False)
    tracking = f"sqlite:///{store}/mlflow.db"
    command = [sys.executable, "-m", "harness.run", f"workers={workers}", "progress=false",
               f"tracking_uri={tracking}", f"out={store}/report", *extra]
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - started
    (store / "output.txt").write_text(done.stdout + done.stderr)
    return {"workers": workers, "exit_code": done.returncode, "wall_s": round(wall, 1),
            "statuses": trial_statuses(tracking)}


def trial_statuses(tracking: str) -> dict[str, int]:
    """Count the trial runs of every experiment in the store by status."""
    import mlflow

    client = mlflow.MlflowClient(tracking)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.`harness.role` = 'trial'", max_results=50000)
    return dict(Counter(run.info.status for run in runs))


def main() -> int:
    """Run the study at each worker count and print the figures as one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--keep", type=Path, default=None,
                        help="folder for the stores (kept); default: a temporary one")
    parser.add_argument("overrides", nargs="*", default=["study=tricks", "budget=cpu"],
                        help="the study's overrides (default: study=tricks budget=cpu)")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="harness-workers-"))
    results = [run_study(n, folder / f"workers-{n}", args.overrides) for n in args.workers]
    first = results[0]["wall_s"]
    for result in results:
        result["wall_ratio_to_first"] = round(result["wall_s"] / first, 3)
    print(json.dumps({"overrides": args.overrides, "cores": os.cpu_count(),
                      "stores": str(folder), "runs": results}, indent=1))
    return max(int(r["exit_code"]) for r in results)


if __name__ == "__main__":
    sys.exit(main())
