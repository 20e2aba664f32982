#!/usr/bin/env bash
# The GPU check in one call, for a session that is lent a GPU machine (docs/gpu.md: "A GPU check").
# Installs what that bare machine lacks, unpacks CIFAR-10 and runs benchmarks/gpu_check.py,
# whose every step has its own timeout; all of it ends inside 9 minutes. Writes $OUT/gpu_check.json
# (rewritten after each step, so a timeout still leaves what was measured) and $OUT/gpu_check.log.
#
# Prepare here, once:   ../shared/tools/device-wheels.sh && cp ../shared/data/cifar10-jpeg.tar.gz .whl/
#                       echo /.whl/ >> .git/info/exclude
# Then one device call: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
# Dry run on any CPU:   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh   (toy sizes, ~2 minutes)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-check-out}
mkdir -p "$OUT"

# The project's venv where there is one (here and in CI); the machine's own python3 elsewhere.
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi

if ! "$PY" -c "import mlflow, optuna, hydra" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    echo "installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || { echo "error: the carried wheels did not install" >&2; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "error: mlflow, optuna or hydra is missing and no .whl/ was carried; see this file's header" >&2
    exit 2
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

if [ ! -d data/train ]; then
  for tarball in .whl/cifar10-jpeg.tar.gz ../shared/data/cifar10-jpeg.tar.gz; do
    if [ -f "$tarball" ]; then
      mkdir -p data && tar xzf "$tarball" -C data && echo "unpacked $tarball into data/" && break
    fi
  done
  [ -d data/train ] || { echo "error: no CIFAR-10 in data/ and no tarball to unpack" >&2; exit 2; }
fi

exec "$PY" benchmarks/gpu_check.py --out "$OUT" ${GPU_CHECK_DRY:+--dry} "$@"
