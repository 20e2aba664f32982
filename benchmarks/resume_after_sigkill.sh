#!/usr/bin/env bash
# Kill a study with SIGKILL halfway, run the same command again, and count what MLflow holds.
# Usage: benchmarks/resume_after_sigkill.sh [STORE_DIR] [extra overrides...]
# Default: the tricks grid at the cpu budget into /tmp/resume-check (about 15 minutes on 2 cores).
set -uo pipefail
cd "$(dirname "$0")/.."
store=${1:-/tmp/resume-check}; shift || true
mkdir -p "$store"
args=(study=tricks budget=cpu progress=false "tracking_uri=sqlite:///$store/mlflow.db"
      "storage=$store/optuna.journal" "out=$store/report" "$@")
py=.venv/bin/python

start=$(date +%s)
PYTHONUNBUFFERED=1 $py -m harness.run "${args[@]}" > "$store/run1.log" 2>&1 &
pid=$!
until grep -q "^trial 8:" "$store/run1.log"; do
  kill -0 $pid 2>/dev/null || { echo "the first run ended before trial 8"; exit 1; }
  sleep 2
done
sleep 10  # into the ninth trial's training
kill -9 $pid
wait $pid
echo "first run: SIGKILL after $(( $(date +%s) - start )) s, $(grep -c '^  test' "$store/run1.log") trials finished"

start=$(date +%s)
$py -m harness.run "${args[@]}" > "$store/run2.log" 2>&1
echo "second run: exit $? after $(( $(date +%s) - start )) s, $(grep -c '^  test' "$store/run2.log") trials run"
grep "^resuming" "$store/run2.log"
$py - "$store" <<'PY'
import collections
import sys

import mlflow

client = mlflow.MlflowClient(f"sqlite:///{sys.argv[1]}/mlflow.db")
experiment = client.get_experiment_by_name("tricks-cpu")
runs = client.search_runs([experiment.experiment_id], "tags.`harness.role` = 'trial'",
                          max_results=1000)
finished = collections.Counter(r.data.tags["harness.config"] for r in runs
                               if r.info.status == "FINISHED")
print("child run statuses:", dict(collections.Counter(r.info.status for r in runs)))
print(f"configs FINISHED: {len(finished)}, most FINISHED runs of one config: "
      f"{max(finished.values())}")
PY
