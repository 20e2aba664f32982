"""The GPU check's dry run: every step at toy size on the CPU, so the script cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import CIFAR_TARBALL, REPO

KEYS = ("tests", "throughput", "packing", "seed_study", "tricks_projection")


@pytest.mark.slow
def test_dry_run_writes_every_key(tmp_path: Path):
    if not (REPO / "data" / "train").is_dir() and not CIFAR_TARBALL.is_file():
        pytest.skip(f"real CIFAR-10 copy not found at {CIFAR_TARBALL}; the dry run needs it")
    out = tmp_path / "out"
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, capture_output=True,
                          text=True, timeout=600,
                          env={**os.environ, "GPU_CHECK_DRY": "1", "OUT": str(out)})
    report = json.loads((out / "gpu_check.json").read_text())
    assert done.returncode == 0, (report.get("failed_steps"), done.stdout[-3000:])
    assert report["dry_run"] is True
    for key in KEYS:
        assert key in report, key
    assert report["failed_steps"] == []
    assert report["tests"]["total"] >= 7  # collected; skipped here, run on a GPU
    assert report["throughput"]["results"]["cases"], "no throughput case measured"
    assert all(row["aggregate_images_per_sec"] > 0 for row in report["packing"]["rows"])
    assert {r["status"] for r in report["seed_study"]["runs"]} == {"FINISHED"}
    assert len(report["seed_study"]["runs"]) == 4
    assert report["tricks_projection"]["projected_grid_seconds"] > 0
    assert "== tricks_projection" in (out / "gpu_check.log").read_text()
