"""Many workers, one PostgreSQL: how fast do N workers claim a grid of tiny trials, and is it once?

Starts its own PostgreSQL and MLflow server (``harness.study.services``) in a temporary folder,
runs ``python -m harness.run workers=N`` on the tricks grid × S seeds with trials made tiny
(64 training images, one epoch, width 4), samples the database connections while it runs, then
checks exactly-once in Optuna and MLflow. Not part of CI::

    .venv/bin/python benchmarks/scale.py --workers 16 --seeds 16      # 256 trials
    .venv/bin/python benchmarks/scale.py --workers 2 --seeds 1        # a sizing run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.study import services  # noqa: E402


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def connections(storage: str) -> int:
    """Return the client connections the PostgreSQL server holds now (all databases)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(storage, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        return int(connection.execute(sqlalchemy.text(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        )).scalar()) - 1  # less this probe


def main() -> int:
    """Run the benchmark and print its figures as one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=16, help="grid of 16 configs × this many")
    parser.add_argument("--data-root", default=str(REPO / "data"))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="harness-scale-"))  # postgres must reach it
    pg_port = free_port()
    try:
        storage = services.start_postgres(folder, pg_port)
        tracking = services.start_mlflow(folder, pg_port, free_port())
        command = [
            sys.executable, "-m", "harness.run", "study=tricks", "budget=smoke",
            f"seeds=[{','.join(map(str, range(args.seeds)))}]", f"workers={args.workers}",
            "progress=false", f"data.root={args.data_root}", "data.train_size=64",
            "data.val_size=32", "data.test_size=64", "trainer.epochs=1", "model.width=4",
            f"storage={storage}", f"tracking_uri={tracking}", f"out={folder}/report"]
        peak = [0]
        running = threading.Event()

        def sample() -> None:
            while not running.wait(0.5):
                peak[0] = max(peak[0], connections(storage))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        wall = time.monotonic() - started
        running.set()
        sampler.join()
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
        print(json.dumps({"workers": args.workers, "trials": 16 * args.seeds,
                          "exit_code": done.returncode, "wall_s": round(wall, 1),
                          "trials_per_s": round(16 * args.seeds / wall, 2),
                          "peak_db_connections": peak[0], "cores": os.cpu_count(),
                          **exactly_once(storage, tracking, 16 * args.seeds)}))
        return done.returncode
    finally:
        services.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


def exactly_once(storage: str, tracking: str, total: int) -> dict[str, object]:
    """Count the grid's results in Optuna and MLflow: each cell once, nothing left RUNNING."""
    import mlflow
    import optuna

    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    complete = Counter(json.dumps(t.params, sort_keys=True) for t in study.trials
                       if t.state == optuna.trial.TrialState.COMPLETE)
    client = mlflow.MlflowClient(tracking)
    experiment = client.get_experiment_by_name("tricks-smoke")
    runs = client.search_runs([experiment.experiment_id], "tags.`harness.role` = 'trial'",
                              max_results=50000)
    statuses = Counter(r.info.status for r in runs)
    return {"optuna_complete": sum(complete.values()), "optuna_cells": len(complete),
            "mlflow_statuses": dict(statuses),
            "exactly_once": (len(complete) == total and max(complete.values()) == 1
                             and statuses.get("FINISHED") == total
                             and "RUNNING" not in statuses)}


if __name__ == "__main__":
    sys.exit(main())
