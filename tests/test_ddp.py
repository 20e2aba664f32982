"""One trial on two CPU ranks (gloo): the same training as on one device, and no rank left over."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from tiny_data import tiny_data

from harness.config.preflight import check_trial_devices, trial_recipes
from harness.config.settings import build_config
from harness.core.checks import check_device_fit
from harness.core.errors import UserError
from harness.recipe import AugmentSpec, ModelSpec, OptimizerSpec, Recipe, TrainerSpec
from harness.training.ranks import Group, Shard
from harness.training.trainer import fit

REPO = Path(__file__).resolve().parents[1]
# The tests that train start two Python processes (or more) each: slow ones.


def recipe(devices: int, **trainer) -> Recipe:
    # SimpleCNN has no BatchNorm, so two ranks of 8 are exactly one batch of 16.
    return Recipe(model=ModelSpec(arch="simplecnn"), optimizer=OptimizerSpec(lr=0.05),
                  augment=AugmentSpec(ops=("crop", "flip")),
                  trainer=TrainerSpec(**{"epochs": 2, "batch_size": 16, "devices": devices,
                                         **trainer}), seed=3)


@pytest.fixture(scope="module")
def data():
    # 70 images: the last batch of each epoch (6 rows) splits 3/3; validation splits 11/10.
    return tiny_data(train=70, val=21, test=10, size=32)


@pytest.mark.slow
def test_two_ranks_train_the_weights_and_metrics_of_one_device(data):
    logged: list[tuple[int, dict[str, float]]] = []
    one = fit(recipe(1), data, device="cpu", progress=False)
    two = fit(recipe(2), data, device="cpu", progress=False,
              callbacks=[lambda epoch, metrics: logged.append((epoch, metrics))])
    assert two.status == "finished" and two.epochs_completed == 2
    assert [epoch for epoch, _ in logged] == [1, 2]
    single, double = one.model.state_dict(), two.model.state_dict()
    assert single.keys() == double.keys()
    for key in single:
        torch.testing.assert_close(double[key], single[key], atol=1e-4, rtol=0)
    for a, b in zip(one.history, two.history):
        for name in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert b[name] == pytest.approx(a[name], abs=1e-4), name
    assert two.images_seen == one.images_seen
    test_one = one.evaluate(data.test_x, data.test_y, data.classes)
    test_two = two.evaluate(data.test_x, data.test_y, data.classes)
    assert test_two.accuracy == test_one.accuracy


@pytest.mark.slow
def test_a_callback_that_raises_stops_every_rank_and_reaches_the_caller(data):
    class Pruned(Exception):
        pass

    def prune(epoch, metrics):
        raise Pruned(f"epoch {epoch}")

    with pytest.raises(Pruned, match="epoch 1"):
        fit(recipe(2), data, device="cpu", progress=False, callbacks=[prune])
    assert multiprocessing.active_children() == []


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_and_leaves_no_process(data):
    def kill_a_rank(epoch, metrics):
        ranks = multiprocessing.active_children()
        assert len(ranks) == 2
        os.kill(ranks[-1].pid, signal.SIGKILL)

    with pytest.raises(RuntimeError, match="rank"):
        fit(recipe(2, epochs=3), data, device="cpu", progress=False, callbacks=[kill_a_rank])
    assert multiprocessing.active_children() == []


def test_a_global_batch_too_small_for_the_devices_is_one_line():
    with pytest.raises(UserError, match="trainer.batch_size=3"):
        Recipe(trainer=TrainerSpec(batch_size=3, devices=2))


# 16 trials, each starting two Python processes: 2-6 min on 2 cores, so `make test` skips it
# unless HARNESS_DDP_STUDY=1, which .ci/run sets.
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HARNESS_DDP_STUDY") != "1",
                    reason="the 16-trial study on 2 ranks takes minutes; "
                           "set HARNESS_DDP_STUDY=1 (CI does)")
def test_tricks_study_on_two_ranks_finishes_every_trial(learnable_folder, tmp_path):
    from test_study import store_args, trial_runs

    from harness.run import main
    from harness.tracking.checkpoint import load_checkpoint

    assert main(["study=tricks", "trainer.devices=2", *store_args(learnable_folder,
                                                                   tmp_path)]) == 0
    client, runs, parents = trial_runs(tmp_path, "tricks-smoke")
    assert len(runs) == 16 and {run.info.status for run in runs} == {"FINISHED"}
    assert {run.data.params["trainer.devices"] for run in runs} == {"2"}
    for run in runs[:2]:
        path = client.download_artifacts(run.info.run_id, "checkpoint/checkpoint.pt", tmp_path)
        assert load_checkpoint(path).model is not None  # a plain model, weights_only
    assert multiprocessing.active_children() == []


@pytest.mark.slow
def test_a_rank_killed_mid_trial_crashes_that_trial_and_the_rerun_finishes_it(learnable_folder,
                                                                             tmp_path):
    from test_study import store_args, trial_runs

    from harness.run import main

    # Two configs (depth varies, the other factors are fixed), each trained on two ranks.
    args = ["study=tricks", "trainer.devices=2", "stem=none", "init=default", "optimizer=sgd",
            *store_args(learnable_folder, tmp_path)]
    killed: list[int] = []

    def kill_the_first_rank() -> None:
        while not killed:
            ranks = multiprocessing.active_children()
            if ranks:
                time.sleep(1.0)  # past its start: the trial is under way
                os.kill(ranks[0].pid, signal.SIGKILL)
                killed.append(ranks[0].pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_first_rank, daemon=True)
    killer.start()
    main(args)
    killer.join(timeout=60)
    assert killed and multiprocessing.active_children() == []
    _, runs, _ = trial_runs(tmp_path, "tricks-smoke")
    assert sorted(run.info.status for run in runs) == ["FAILED", "FINISHED"]

    assert main(args) == 0
    _, runs, _ = trial_runs(tmp_path, "tricks-smoke")
    assert sorted(run.info.status for run in runs) == ["FAILED", "FINISHED", "FINISHED"]
    assert multiprocessing.active_children() == []


@pytest.mark.slow
def test_sync_bn_on_the_cpu_is_one_line_before_any_rank_starts(data):
    with pytest.raises(UserError, match="sync_bn needs CUDA"):
        fit(recipe(2, sync_bn=True), data, device="cpu", progress=False)
    assert multiprocessing.active_children() == []


def test_each_rank_holds_its_shard_and_the_shards_make_every_batch(data):
    shards = [Shard.of(data.train_x, data.train_y, Group(rank, 2), torch.device("cpu"))
              for rank in range(2)]
    assert [len(shard) for shard in shards] == [35, 35]  # of 70 rows: each holds half
    assert shards[1].packed.untyped_storage().nbytes() == 35 * (3 * 32 * 32 + 1) * 4
    rows = torch.randperm(70, generator=torch.Generator().manual_seed(0))[:16]
    summed = sum(shard.contribution(rows) for shard in shards)  # what the all-reduce adds up
    images = summed[:, :-1].unflatten(1, (3, 32, 32))
    assert torch.equal(images, data.train_x[rows])
    assert torch.equal(summed[:, -1].long(), data.train_y[rows])
    alone = Shard.of(data.train_x[:1], data.train_y[:1], Group(0, 2), torch.device("cpu"))
    assert len(alone) == 0 and not alone.contribution(torch.tensor([0])).any()  # rank 1 has it


def test_devices_times_workers_must_fit_the_visible_gpus():
    check_device_fit("cuda", 2, workers=2, cuda_count=4)
    check_device_fit("auto", 2, workers=4, trials_per_gpu=2, cuda_count=4)  # 2 groups a GPU
    check_device_fit("cpu", 8, workers=4, cuda_count=0)  # gloo ranks: no GPU to fit
    check_device_fit("auto", 2, workers="auto", cuda_count=0, mps=False)  # auto is the CPU
    with pytest.raises(UserError, match=r"workers=3 \(3\) × trainer.devices=2 needs 6 GPUs; "
                                        r"4 are visible: use workers=2 or fewer"):
        check_device_fit("cuda", 2, workers=3, cuda_count=4)
    with pytest.raises(UserError, match=r"workers=auto \(4\) × trainer.devices=2 needs 8 GPUs"):
        check_device_fit("auto", 2, workers="auto", cuda_count=4)
    with pytest.raises(UserError, match="needs 3 GPUs at trials_per_gpu=2; 2 are visible"):
        check_device_fit("cuda", 2, workers=3, trials_per_gpu=2, cuda_count=2)
    with pytest.raises(UserError, match="trainer.devices=4 needs 4 GPUs, one per rank; 2 are"):
        check_device_fit("cuda", 4, cuda_count=2, trials_per_gpu=4)  # a rank needs its own GPU
    with pytest.raises(UserError, match="device=cuda:1 pins one GPU"):
        check_device_fit("cuda:1", 2, cuda_count=2)
    with pytest.raises(UserError, match="needs CUDA or the CPU, not mps"):
        check_device_fit("auto", 2, cuda_count=0, mps=True)
    with pytest.raises(UserError, match="sync_bn needs CUDA"):
        check_device_fit("cpu", 2, sync_bn=True, cuda_count=0)


def test_the_command_line_checks_the_fit_up_front():
    cfg = build_config(["study=tricks", "budget=smoke", "trainer.devices=2", "workers=3",
                        "device=auto"])
    recipes = [cfg.recipe, *trial_recipes(cfg)]
    check_trial_devices(cfg, recipes, cuda_count=6)
    with pytest.raises(UserError, match="use workers=2 or fewer"):
        check_trial_devices(cfg, recipes, cuda_count=5)


@pytest.mark.slow
def test_under_torchrun_only_rank_0_writes_runs_and_prints(learnable_folder, tmp_path):
    from test_study import store_args, trial_runs

    # One config of the tricks grid (every factor fixed), trained by two gloo ranks.
    args = ["study=tricks", "stem=none", "init=default", "optimizer=sgd", "depth=resnet18",
            "trainer.devices=2", *store_args(learnable_folder, tmp_path)]
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--nproc-per-node=2", "--log-dir", str(tmp_path / "logs"),
                           "--redirects=3", "-m", "harness.run", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    _, runs, parents = trial_runs(tmp_path, "tricks-smoke")
    assert len(parents) == 1 and len(runs) == 1
    assert runs[0].info.status == "FINISHED" and runs[0].data.params["trainer.devices"] == "2"
    rank0, rank1 = (next((tmp_path / "logs").glob(f"*/attempt_0/{rank}")) for rank in (0, 1))
    assert "trial 0: stem=none" in (rank0 / "stdout.log").read_text()
    assert (rank1 / "stdout.log").read_text() == ""
    assert (rank1 / "stderr.log").read_text() == ""
