"""The GPU check's steps, each in its own process with its own timeout (see gpu_check.sh).

Every step's figures go into ``OUT/gpu_check.json`` as soon as the step ends, so a lease that
runs out mid-way still leaves what was measured; all output goes to ``OUT/gpu_check.log``. With
``--dry`` every step runs at toy size on the CPU, with the same keys, so CI keeps it working.

    python benchmarks/gpu_check.py --out gpu-check-out          # on the GPU machine
    python benchmarks/gpu_check.py --out /tmp/gpu-check --dry   # anywhere, in about 2 minutes
    python benchmarks/gpu_check.py probe --arch resnet18 --width 16 --batch 256 --images 25600
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@dataclass(frozen=True)
class Sizes:
    """How big each step runs: the lease's sizes on a GPU, toy sizes in a dry run."""

    device: str
    budget: str  # of the seed study and the tricks projection
    timeouts: dict[str, int]  # seconds per step
    throughput_args: tuple[str, ...]
    compile_case: tuple[str, int, int, int]  # arch, width, batch, images
    packing_case: tuple[str, int, int, int]
    packing_ks: tuple[int, ...]
    study_overrides: tuple[str, ...] = ()  # added to every study command


# The whole GPU run must end inside 9 minutes: these timeouts add up to 8.5.
GPU = Sizes(
    device="cuda", budget="full",
    timeouts={"tests": 90, "throughput": 90, "compile": 60, "packing": 60, "seed_study": 120,
              "tricks_projection": 60, "ddp": 30},
    throughput_args=("--device", "cuda", "--cases", "resnet18-w64-b512,simplecnn-b128",
                     "--images", "25600", "--repeats", "2"),
    compile_case=("resnet18", 64, 512, 25600),
    packing_case=("resnet18", 16, 256, 25600),
    packing_ks=(1, 2, 4),
)
DRY = Sizes(
    device="cpu", budget="smoke",
    timeouts={"tests": 60, "throughput": 60, "compile": 30, "packing": 40, "seed_study": 90,
              "tricks_projection": 60, "ddp": 60},
    throughput_args=("--device", "cpu", "--cases", "simplecnn-b128", "--images", "512",
                     "--repeats", "1"),
    compile_case=("simplecnn", 16, 64, 512),
    packing_case=("simplecnn", 16, 64, 512),
    packing_ks=(1, 2),
    # The smoke budget at one epoch: what is checked is that each step runs and reports.
    study_overrides=("trainer.epochs=1", "data.train_size=128", "data.val_size=64"),
)


class Report:
    """The JSON written after every step (atomically, so a kill never leaves half a file)."""

    def __init__(self, out: Path, header: dict[str, Any]) -> None:
        self.path = out / "gpu_check.json"
        self.data: dict[str, Any] = dict(header)
        self.write()

    def put(self, key: str, value: Any) -> None:
        """Record one step's result and write the file anew."""
        self.data[key] = value
        self.write()

    def write(self) -> None:
        """Write the whole report to ``gpu_check.json`` through a temporary file."""
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(self.data, handle, indent=2, default=str)
        os.replace(tmp, self.path)


class Log:
    """``gpu_check.log``: every command, its output and its time."""

    def __init__(self, path: Path) -> None:
        self.handle = path.open("a", buffering=1)

    def line(self, text: str) -> None:
        """Write a line to the log and to stdout."""
        stamped = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(stamped, flush=True)
        self.handle.write(stamped + "\n")


def run_command(args: list[str], timeout: int, log: Log) -> dict[str, Any]:
    """Run ``args`` in its own process group; kill the whole group at ``timeout`` seconds."""
    log.line("$ " + shlex.join(args))
    started = time.monotonic()
    process = subprocess.Popen(args, cwd=REPO, stdout=log.handle, stderr=subprocess.STDOUT,
                               start_new_session=True)
    timed_out = False
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    seconds = round(time.monotonic() - started, 1)
    log.line(f"rc={process.returncode} in {seconds}s" + (" (timed out)" if timed_out else ""))
    return {"command": shlex.join(args), "rc": process.returncode, "seconds": seconds,
            "timed_out": timed_out}


def run_parallel(commands: list[list[str]], timeout: int, log: Log) -> list[dict[str, Any]]:
    """Start all ``commands`` at once; return each one's rc and time (killed at ``timeout``)."""
    for args in commands:
        log.line("$ " + shlex.join(args) + " &")
    started = time.monotonic()
    processes = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=log.handle, start_new_session=True, text=True)
                 for args in commands]
    results = []
    for process in processes:
        left = max(1.0, timeout - (time.monotonic() - started))
        try:
            stdout, _ = process.communicate(timeout=left)
            results.append({"rc": process.returncode, "stdout": stdout})
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            results.append({"rc": None, "stdout": "", "timed_out": True})
    return results


# --- the steps -----------------------------------------------------------------------------------


def step_tests(sizes: Sizes, work: Path, log: Log) -> dict[str, Any]:
    """``pytest -m cuda``: counts of passed, failed and skipped tests, and the failures' names."""
    junit = work / "cuda-tests.xml"
    result = run_command([PYTHON, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                          "tests", f"--junitxml={junit}"],
                         sizes.timeouts["tests"], log)
    if junit.is_file():
        suite = ET.parse(junit).getroot().find("testsuite")
        if suite is not None:
            failed = [case.get("name") for case in suite.iter("testcase")
                      if case.find("failure") is not None or case.find("error") is not None]
            total = int(suite.get("tests", 0))
            skipped = int(suite.get("skipped", 0))
            result.update(total=total, skipped=skipped, failed=len(failed),
                          passed=total - skipped - len(failed), failures=failed)
    return result


def step_throughput(sizes: Sizes, work: Path, log: Log) -> dict[str, Any]:
    """Harness (a) against the bare loop (b) and the seed's DataLoader (c), in one run."""
    saved = work / "throughput.json"
    result = run_command([PYTHON, "benchmarks/throughput.py", *sizes.throughput_args,
                          "--json", str(saved)], sizes.timeouts["throughput"], log)
    if saved.is_file():
        result["results"] = json.loads(saved.read_text())
    return result


def _probe_command(sizes: Sizes, case: tuple[str, int, int, int], *extra: str) -> list[str]:
    arch, width, batch, images = case
    return [PYTHON, str(Path(__file__).resolve()), "probe", "--device", sizes.device,
            "--arch", arch, "--width", str(width), "--batch", str(batch),
            "--images", str(images), *extra]


def _probe_rate(result: dict[str, Any]) -> float | None:
    return _probe_field(result, "images_per_sec")


def _probe_field(result: dict[str, Any], name: str) -> float | None:
    lines = [line for line in result.get("stdout", "").splitlines() if line.startswith("{")]
    return json.loads(lines[-1]).get(name) if lines else None


def step_compile(sizes: Sizes, work: Path, log: Log) -> dict[str, Any]:
    """The harness loop's warm-epoch img/s with ``trainer.compile`` off and on, and the seconds
    compiling took before the first step (reported apart from the rate)."""
    rates, compile_seconds = {}, None
    for label, extra in (("eager", ()), ("compiled", ("--compile",))):
        (outcome,) = run_parallel([_probe_command(sizes, sizes.compile_case, *extra)],
                                  sizes.timeouts["compile"], log)
        rates[label] = _probe_rate(outcome)
        if label == "compiled":
            compile_seconds = _probe_field(outcome, "compile_seconds")
    ratio = (rates["compiled"] / rates["eager"]
             if rates["eager"] and rates["compiled"] else None)
    return {"case": "-".join(map(str, sizes.compile_case[:3])), "images_per_sec": rates,
            "compiled/eager": ratio, "compile_seconds": compile_seconds}


def step_packing(sizes: Sizes, work: Path, log: Log) -> dict[str, Any]:
    """Aggregate img/s of k trials training at once on the one device, k = 1, 2, 4."""
    rows = []
    for k in sizes.packing_ks:
        started = time.monotonic()
        outcomes = run_parallel([_probe_command(sizes, sizes.packing_case)] * k,
                                sizes.timeouts["packing"], log)
        rates = [_probe_rate(o) for o in outcomes]
        done = [r for r in rates if r is not None]
        rows.append({"k": k, "per_trial": rates, "finished": len(done),
                     "aggregate_images_per_sec": sum(done) if len(done) == k else None,
                     "seconds": round(time.monotonic() - started, 1)})
        log.line(f"packing k={k}: {rates}")
    one = rows[0]["aggregate_images_per_sec"]
    for row in rows:
        agg = row["aggregate_images_per_sec"]
        row["vs_k1"] = agg / one if agg and one else None
    return {"case": "-".join(map(str, sizes.packing_case[:3])),
            "method": "k processes at once (no trials_per_gpu setting yet)", "rows": rows}


def _study_command(sizes: Sizes, work: Path, name: str, *overrides: str) -> list[str]:
    # Eager: the studies are sized to their timeouts, and the compile step measures compiling.
    return [PYTHON, "-m", "harness.run", *overrides, *sizes.study_overrides,
            f"budget={sizes.budget}", "trainer.compile=false",
            f"device={sizes.device}", "progress=false",
            f"tracking_uri=sqlite:///{work / name}.db",
            f"storage={work / name}.journal", f"out={work / name}-export"]


def _runs(db: Path) -> list[dict[str, Any]]:
    """Every child run of the store: its config, status, final metrics and per-epoch times."""
    if not db.is_file():
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    rows = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            config = run.data.tags.get("harness.config")
            if config is None:  # the parent run
                continue
            epochs = client.get_metric_history(run.info.run_id, "epoch_seconds")
            end = run.info.end_time or int(time.time() * 1000)
            rows.append({
                "config": config, "status": run.info.status,
                "test_acc": run.data.metrics.get("test_acc"),
                "val_acc": run.data.metrics.get("val_acc"),
                "images_per_sec": run.data.metrics.get("images_per_sec_mean"),
                "epoch_seconds": [m.value for m in sorted(epochs, key=lambda m: m.step)],
                "wall_seconds": (end - run.info.start_time) / 1000,
            })
    return rows


def step_seed_study(sizes: Sizes, work: Path, log: Log) -> dict[str, Any]:
    """The blog's four runs at full width: accuracy against its 53% and 73%, and time."""
    result = run_command(_study_command(sizes, work, "seed", "study=seed"),
                         sizes.timeouts["seed_study"], log)
    result["runs"] = _runs(work / "seed.db")
    result["blog"] = {"depth=simplecnn": 53.0, "depth=resnet18": 73.0}
    return result


def step_tricks_projection(sizes: Sizes, work: Path, log: Log) -> dict[str, Any]:
    """One epoch of ResNet-18 and of ResNet-34 at the full budget, projected to the grid."""
    result = run_command(_study_command(
        sizes, work, "tricks", "study=tricks", "trainer.epochs=1", "stem=none", "init=default",
        "optimizer=sgd", "factors.depth=[resnet18,resnet34]"), sizes.timeouts["tricks_projection"],
        log)
    runs = _runs(work / "tricks.db")
    result["runs"] = runs
    epochs = 30  # the tricks study's full budget
    done = [r for r in runs if r["status"] == "FINISHED" and r["epoch_seconds"]]
    if len(done) == 2:
        # Half the 16 configs are ResNet-18s, half ResNet-34s. Per config: 30 training epochs,
        # plus once what a run spends outside training (data on the device, evaluation, logs).
        per_config = [epochs * r["epoch_seconds"][0] + (r["wall_seconds"] - r["epoch_seconds"][0])
                      for r in done]
        result["projected_grid_seconds"] = 8 * sum(per_config)
        result["formula"] = "8 x sum over depth of (30 x epoch_seconds + other run seconds)"
    return result


def step_ddp(sizes: Sizes, work: Path, log: Log) -> dict[str, Any]:
    """``trainer.devices=N`` on the seed's SimpleCNN, where DDP has landed and N devices exist."""
    ddp_homes = (REPO / "harness" / "training" / "devices.py", REPO / "harness" / "distributed.py")
    if not any(home.is_file() for home in ddp_homes):
        return {"skipped": "trainer.devices (DDP) is not in this version"}
    import torch

    devices = torch.cuda.device_count() if sizes.device == "cuda" else 2
    if devices < 2:
        return {"skipped": f"{devices} GPU on this machine; DDP needs 2 or more"}
    result = run_command(_study_command(sizes, work, "ddp", "study=seed", "depth=simplecnn",
                                        f"trainer.devices={devices}"),
                         sizes.timeouts["ddp"], log)
    result["devices"] = devices
    result["runs"] = _runs(work / "ddp.db")
    return result


STEPS: dict[str, Callable[[Sizes, Path, Log], dict[str, Any]]] = {
    "tests": step_tests,
    "throughput": step_throughput,
    "compile": step_compile,
    "packing": step_packing,
    "seed_study": step_seed_study,
    "tricks_projection": step_tricks_projection,
    "ddp": step_ddp,
}


def header(dry: bool) -> dict[str, Any]:
    """What ran where: the machine, torch and the code version."""
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    return {
        "dry_run": dry,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__, "python": sys.version.split()[0],
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_cores": os.cpu_count(), "commit": commit or "unknown",
    }


def check(out: Path, dry: bool, only: list[str] | None) -> int:
    """Run every step (or ``only`` those) and write the report; return 0 if all ran."""
    import torch

    if not dry and not torch.cuda.is_available():
        print("error: no CUDA device here; run with GPU_CHECK_DRY=1 for the CPU dry run",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    log = Log(out / "gpu_check.log")
    report = Report(out, header(dry))
    sizes = DRY if dry else GPU
    failed = []
    for name, step in STEPS.items():
        if only and name not in only:
            continue
        log.line(f"== {name}")
        started = time.monotonic()
        try:
            result = step(sizes, work, log)
        except Exception as exc:  # noqa: BLE001 - one broken step must not lose the others
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result.setdefault("seconds", round(time.monotonic() - started, 1))
        report.put(name, result)
        if result.get("rc") not in (None, 0) or result.get("timed_out") or "error" in result:
            failed.append(name)
    report.put("failed_steps", failed)
    log.line(f"done; failed steps: {failed or 'none'}; report in {report.path}")
    return 1 if failed else 0


def probe(args: argparse.Namespace) -> int:
    """Train one small run through ``training.trainer.fit``; print its warm-epoch img/s as JSON."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import throughput
    import torch

    from harness.core.devices import resolve_device
    from harness.data import prepare_data

    device = resolve_device(args.device)
    case = throughput.Case(args.arch, args.width, args.batch, args.images)
    spec = throughput.data_spec(REPO / "data", case.images)
    recipe = throughput.make_recipe(case, spec, "auto")
    recipe = dataclasses.replace(
        recipe, trainer=dataclasses.replace(recipe.trainer, compile=args.compile))
    measurement = throughput.measure_harness(recipe, prepare_data(spec, device), device)
    print(json.dumps({"images_per_sec": measurement.images_per_sec,
                      "compile_seconds": measurement.compile_s,
                      "device": str(device), "compile": args.compile,
                      "torch_threads": torch.get_num_threads()}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the check, or with ``probe`` one timed training run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check-out"))
    parser.add_argument("--dry", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--only", default="", help=f"comma-separated steps of: {', '.join(STEPS)}")
    sub = parser.add_subparsers(dest="command")
    probing = sub.add_parser("probe", help="one timed harness run, as JSON on stdout")
    probing.add_argument("--device", default="auto")
    probing.add_argument("--arch", default="resnet18")
    probing.add_argument("--width", type=int, default=16)
    probing.add_argument("--batch", type=int, default=256)
    probing.add_argument("--images", type=int, default=25600)
    probing.add_argument("--compile", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "probe":
        return probe(args)
    only = [s for s in args.only.split(",") if s] or None
    unknown = sorted(set(only or ()) - set(STEPS))
    if unknown:
        parser.error(f"unknown step(s) {unknown}; steps are {', '.join(STEPS)}")
    return check(args.out, args.dry, only)


if __name__ == "__main__":
    sys.exit(main())
