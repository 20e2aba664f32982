"""One trial on several devices: DistributedDataParallel ranks, started here or by torchrun.

``trainer.devices=N`` makes :func:`harness.training.trainer.fit` start N ranks here
(:func:`fit_on_devices`): one per GPU with NCCL, or N CPU processes with gloo. Each rank runs
the one-process loop (:func:`harness.training.loop.train_in_group`) in its group; the loop
never calls back into this module. The calling process trains nothing; it stays the one that
talks to the outside (the epoch callbacks: MLflow, Optuna, pruning) and gets the trained weights
back from rank 0, so its caller sees the same ``TrainResult`` as with one device. Under
``torchrun`` the ranks already exist: rank 0 runs the study and the others :func:`follow` it.
How the ranks split the batch is in :mod:`harness.training.ranks`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from harness.core.devices import resolve_device
from harness.core.errors import UserError
from harness.core.registry import Registry
from harness.data import PreparedData
from harness.models import build_model
from harness.recipe import Recipe
from harness.training import compiling
from harness.training.hooks import evaluation_infer
from harness.training.loop import EpochCallback, TrainResult, train_in_group
from harness.training.placement import Placement
from harness.training.ranks import (
    Group,
    StoppedByLeader,
    current_group,
    fatal_unless_shared,
    rank_device,
)

log = logging.getLogger(__name__)

# Seconds the launching process waits for a message from rank 0 before it looks whether a rank
# died; a dead rank is found within this long.
_POLL_SECONDS = 0.2
# The splits of PreparedData the ranks train and validate on.
_RANK_SPLITS = ("train_x", "train_y", "val_x", "val_y")


def follow(device_name: str) -> None:
    """On a rank other than 0 under torchrun: train every trial rank 0 announces, until it ends.

    The rank prepares each trial's data itself, on the CPU (its shard goes to the device in
    the loop), and checks it is rank 0's by its digest. It creates no run and prints nothing: a
    trial that fails, or that rank 0 stops, fails here the same way and rank 0 records it.
    """
    from harness.data import prepare_data  # the data sources pull in PIL; only ranks need them

    group = current_group()
    device = rank_device(resolve_device(device_name), group)
    cached: tuple[Any, PreparedData] | None = None
    try:
        while True:
            message = [None]
            dist.broadcast_object_list(message, src=0)
            if message[0] is None:
                return
            recipe, digest = message[0]
            if cached is None or cached[0] != recipe.data:
                cached = None  # one data set in memory at a time
                cached = (recipe.data, prepare_data(recipe.data, "cpu"))
            data = cached[1]
            if data.digest != digest:
                raise RuntimeError(f"rank {group.rank} read other data than rank 0 "
                                   f"(digest {data.digest}, not {digest})")
            # A failure every rank raised (a pruned trial, a bad recipe) is recorded by rank 0;
            # this rank waits for the next trial. One of its own ends the process.
            with contextlib.suppress(StoppedByLeader, UserError), fatal_unless_shared():
                train_in_group(recipe, data, device, (), False, "train", group)
    finally:
        dist.destroy_process_group()


@dataclass
class Finished:
    """What rank 0 sends back when its ranks are done: everything of a TrainResult but tensors.

    ``state`` is the evaluated model's ``state_dict`` as ``torch.save`` bytes, unwrapped from
    DDP, so it loads into a plain model.
    """

    state: bytes
    status: str
    reason: str
    history: list[dict[str, float]]
    train_seconds: float
    images_seen: int


def fit_on_devices(recipe: Recipe, data: PreparedData, device: torch.device,
                   callbacks: Sequence[EpochCallback], progress: bool,
                   description: str) -> TrainResult:
    """Train on ``recipe.trainer.devices`` ranks and rebuild their result here, on ``device``.

    A callback that raised stops every rank, and is raised here once the ranks are gone.
    """
    finished, stopped = _train_on_ranks(recipe, data, device, callbacks, progress, description)
    if stopped is not None:
        raise stopped
    placement = Placement.for_recipe(recipe, device)
    model = build_model(recipe.model, data.num_classes, data.in_channels, data.image_size)
    model.load_state_dict(load_state(finished))
    model = model.to(device, memory_format=placement.memory_format)
    return TrainResult(model=model, placement=placement, status=finished.status,
                       reason=finished.reason, history=finished.history,
                       train_seconds=finished.train_seconds, images_seen=finished.images_seen,
                       infer=evaluation_infer(recipe, model, data.num_classes),
                       eval_batch_size=recipe.trainer.eval_batch_size,
                       compile_tag=compiling.decide(recipe.trainer.compile, device, 0,
                                                    distributed=True).tag)


def _train_on_ranks(recipe: Recipe, data: PreparedData, device: torch.device,
                    callbacks: Sequence[EpochCallback], progress: bool,
                    description: str) -> tuple[Finished, BaseException | None]:
    """Train on ``recipe.trainer.devices`` ranks started here, running ``callbacks`` here.

    Args:
        recipe: The trial's recipe.
        data: Prepared data; each rank gets a copy on its own device.
        device: The caller's device: CUDA (one rank per GPU) or the CPU (gloo).
        callbacks: Run in this process after each epoch with rank 0's metrics; one that raises
            stops every rank.
        progress: Show rank 0's progress bars.
        description: Label of the progress bars.

    Returns:
        What rank 0 sent back, and the exception a callback raised (None if none did); the
        caller re-raises it once the result is built.

    Raises:
        RuntimeError: A rank crashed or was killed; the others are stopped first.
    """
    devices = recipe.trainer.devices
    context = mp.get_context("spawn")
    here, there = context.Pipe()
    # The ranks read the training and validation sets from shared CPU memory (torch passes
    # tensors to spawned processes that way) and never the test set, which stays here.
    cpu_data = replace(data, test_x=data.test_x[:0].cpu(), test_y=data.test_y[:0].cpu(),
                       **{f.name: getattr(data, f.name).cpu() for f in fields(data)
                          if f.name in _RANK_SPLITS})
    ranks = mp.start_processes(
        _rank_main, args=(Registry.modules(), recipe, cpu_data, device.type, devices, _free_port(),
                          there,
                          progress, description),
        nprocs=devices, join=False, start_method="spawn")
    stopped: BaseException | None = None
    finished: Finished | None = None
    try:
        while finished is None:
            if not here.poll(_POLL_SECONDS):
                ranks.join(timeout=0)  # raises when a rank died or raised
                if all(not process.is_alive() for process in ranks.processes):
                    raise RuntimeError("the ranks ended without sending their result")
                continue
            message, payload = here.recv()
            if message == "epoch":
                stopped = _run_callbacks(callbacks, *payload) if stopped is None else stopped
                here.send(stopped is None)
            else:
                finished = payload
        _wait_for_exit(ranks)
    except ProcessException as error:
        raise RuntimeError(f"a rank of the trial failed: {error}") from None
    finally:
        for process in ranks.processes:
            if process.is_alive():
                process.kill()
            process.join()
        here.close()
    return finished, stopped


def _wait_for_exit(ranks: Any) -> None:
    """Wait for the ranks to end once rank 0 has sent the result.

    A rank that dies while it shuts down (gloo's threads can abort a process at exit, "terminate
    called without an active exception") takes nothing from a trial whose result is already
    here, so that is a warning, not a crash.
    """
    try:
        while not ranks.join(timeout=_POLL_SECONDS):
            pass
    except ProcessException as error:
        log.warning("a rank ended badly after the trial's result came back: %s", error)


def load_state(finished: Finished) -> dict[str, torch.Tensor]:
    """Return the state_dict rank 0 sent, on the CPU."""
    return torch.load(io.BytesIO(finished.state), map_location="cpu", weights_only=True)


def _run_callbacks(callbacks: Sequence[EpochCallback], epoch: int,
                   metrics: dict[str, float]) -> BaseException | None:
    try:
        for callback in callbacks:
            callback(epoch, metrics)
    except Exception as error:  # noqa: BLE001 - any reason to stop is carried to the caller
        return error
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank_main(rank: int, part_modules: list[str], recipe: Recipe, data: PreparedData,
               device_type: str, size: int, port: int, pipe: Any, progress: bool,
               description: str) -> None:
    """One rank: join the group, train, and (rank 0) report each epoch and the result."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A spawned process starts bare: importing the modules that registered parts and hooks in
    # the caller (the tricks, among others) registers them here too.
    for module in part_modules:
        # A module this process cannot import (a notebook's, say) leaves its parts out; a recipe
        # that needs one of them then fails with the registry's one line.
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=size)
    group = Group(rank, size)
    device = rank_device(torch.device(device_type), group)
    # The data stays on the CPU here, shared with the other ranks: the loop moves this rank's shard
    # of the training set and the validation set to the device, and nothing else.

    def report(epoch: int, metrics: dict[str, float]) -> None:
        pipe.send(("epoch", (epoch, metrics)))
        if not pipe.recv():
            raise StoppedByLeader(f"stopped after epoch {epoch}")

    try:
        result = train_in_group(recipe, data, device, [report] if rank == 0 else [],
                                progress and rank == 0, description, group)
        if size > 1:
            # Every rank that trained to the end waits here for the others before any tears
            # gloo down, so no rank's threads still talk to a peer that is gone (which can abort
            # a process at exit).
            dist.barrier()
        if rank == 0:
            buffer = io.BytesIO()
            torch.save({k: v.cpu() for k, v in result.model.state_dict().items()}, buffer)
            pipe.send(("done", Finished(buffer.getvalue(), result.status, result.reason,
                                        result.history, result.train_seconds,
                                        result.images_seen)))
    except StoppedByLeader:
        if rank == 0:
            pipe.send(("done", Finished(b"", "stopped", "", [], 0.0, 0)))
    finally:
        dist.destroy_process_group()
