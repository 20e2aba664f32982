"""One trial on several devices: DistributedDataParallel ranks, started by the harness or torchrun.

``trainer.devices=N`` makes :func:`harness.train.fit` start N ranks itself (:func:`fit_on_devices`):
one per GPU with NCCL, or N CPU processes with gloo. The calling process trains nothing; it
stays the one that talks to the outside (the epoch callbacks: MLflow, Optuna, pruning) and gets
the trained weights back from rank 0, so its caller sees the same ``TrainResult`` as with one
device. Under ``torchrun`` the ranks already exist and ``fit`` joins their process group.

Every rank holds the whole training set on its device and draws the same permutation from the
same generator, so the global batch order does not depend on N. Each rank takes its contiguous
slice of every global batch (:meth:`Group.bounds`), after augmentation and the batch hooks,
which also draw from the shared generator on the whole batch.
"""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from harness.data import PreparedData
from harness.errors import UserError
from harness.tricks import load_tricks

# Seconds the launching process waits for a message from rank 0 before it looks whether a rank
# died; a dead rank is found within this long.
_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Group:
    """Where this process sits among the ranks of one trial; one rank alone is the plain loop.

    Args:
        rank: This process's index, from 0.
        size: How many ranks train the trial.
    """

    rank: int = 0
    size: int = 1

    @property
    def active(self) -> bool:
        """Whether several ranks train together (collectives are needed)."""
        return self.size > 1

    @property
    def leader(self) -> bool:
        """Whether this rank reports the epochs (rank 0)."""
        return self.rank == 0

    def bounds(self, count: int) -> tuple[int, int]:
        """Return the ``[start, stop)`` of this rank's contiguous share of ``count`` rows."""
        return count * self.rank // self.size, count * (self.rank + 1) // self.size

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Return ``tensor`` summed over the ranks (in place)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """Return whether ``flag`` is true on any rank, so every rank takes the same branch."""
        if not self.active:
            return flag
        return bool(self.sum(torch.tensor(float(flag), device=device)).item() > 0)

    def gather_rows(self, local: torch.Tensor, count: int) -> torch.Tensor:
        """Return the rows every rank computed on its share of ``count``, in rank order.

        Args:
            local: This rank's rows ``[share, ...]``, its share given by :meth:`bounds`.
            count: Rows over all ranks.
        """
        if not self.active:
            return local
        shares = [Group(rank, self.size).bounds(count) for rank in range(self.size)]
        longest = max(stop - start for start, stop in shares)
        padded = local.new_zeros((longest, *local.shape[1:]))
        padded[:len(local)] = local
        parts = [torch.empty_like(padded) for _ in shares]
        dist.all_gather(parts, padded)
        return torch.cat([part[:stop - start] for part, (start, stop) in zip(parts, shares)])


def current_group() -> Group:
    """Return the group this process trains in; join torchrun's when it started this process."""
    if not dist.is_available():
        return Group()
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Started by torchrun (or a scheduler that sets its variables): join the others.
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        return Group()
    return Group(dist.get_rank(), dist.get_world_size())


def rank_device(device: torch.device, group: Group) -> torch.device:
    """Return the device a rank trains on: its own GPU on CUDA, the CPU otherwise."""
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", group.rank))
        return torch.device("cuda", local)
    if device.type != "cpu":
        raise UserError(f"trainer.devices > 1 needs CUDA or the CPU, not {device.type}")
    return device


def check_devices(trainer: Any, device: torch.device, group: Group) -> None:
    """Raise a UserError when ``trainer.devices`` ranks cannot train on ``device``.

    Args:
        trainer: The recipe's ``TrainerSpec``.
        device: Where the run trains.
        group: The ranks already started (by torchrun), or one rank.
    """
    devices = trainer.devices
    if device.type not in ("cuda", "cpu"):
        raise UserError(f"trainer.devices > 1 needs CUDA or the CPU, not {device.type}")
    if device.type == "cuda" and devices > torch.cuda.device_count():
        raise UserError(f"trainer.devices={devices} needs {devices} GPUs; "
                        f"{torch.cuda.device_count()} are visible")
    if trainer.sync_bn and device.type != "cuda":
        raise UserError("trainer.sync_bn needs CUDA devices (SyncBatchNorm has no CPU kernel)")
    if group.active and devices not in (1, group.size):
        raise UserError(f"trainer.devices={devices} but {group.size} ranks were started")


class StoppedByLeader(Exception):
    """Rank 0's callbacks stopped the run (pruned, or failed); the other ranks end quietly."""


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


FitFunction = Callable[..., Any]


def fit_on_devices(fit: FitFunction, recipe: Any, data: PreparedData, device: torch.device,
                   callbacks: Sequence[Callable[[int, dict[str, float]], None]],
                   progress: bool, description: str) -> tuple[Finished, BaseException | None]:
    """Train on ``recipe.trainer.devices`` ranks started here, running ``callbacks`` here.

    Args:
        fit: ``harness.train.fit``, which every rank runs.
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
    cpu_data = replace(data, **{f.name: getattr(data, f.name).cpu() for f in fields(data)
                                if isinstance(getattr(data, f.name), torch.Tensor)})
    ranks = mp.start_processes(
        _rank_main, args=(fit, recipe, cpu_data, device.type, devices, _free_port(), there,
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
            kind, payload = here.recv()
            if kind == "epoch":
                stopped = _run_callbacks(callbacks, *payload) if stopped is None else stopped
                here.send(stopped is None)
            else:
                finished = payload
        while not ranks.join(timeout=_POLL_SECONDS):
            pass
    except ProcessException as error:
        raise RuntimeError(f"a rank of the trial failed: {error}") from None
    finally:
        for process in ranks.processes:
            if process.is_alive():
                process.kill()
            process.join()
        here.close()
    return finished, stopped


def load_state(finished: Finished) -> dict[str, torch.Tensor]:
    """Return the state_dict rank 0 sent, on the CPU."""
    return torch.load(io.BytesIO(finished.state), map_location="cpu", weights_only=True)


def _run_callbacks(callbacks: Sequence[Callable[[int, dict[str, float]], None]], epoch: int,
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


def _rank_main(rank: int, fit: FitFunction, recipe: Any, data: PreparedData, device_type: str,
               size: int, port: int, pipe: Any, progress: bool, description: str) -> None:
    """One rank: join the group, train, and (rank 0) report each epoch and the result."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    load_tricks()  # a spawned process starts bare: the recipe's parts and hooks register here
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=size)
    device = rank_device(torch.device(device_type), Group(rank, size))
    data = replace(data, **{f.name: getattr(data, f.name).to(device) for f in fields(data)
                            if isinstance(getattr(data, f.name), torch.Tensor)})

    def report(epoch: int, metrics: dict[str, float]) -> None:
        pipe.send(("epoch", (epoch, metrics)))
        if not pipe.recv():
            raise StoppedByLeader(f"stopped after epoch {epoch}")

    try:
        result = fit(recipe, data, device=device, callbacks=[report] if rank == 0 else [],
                     progress=progress and rank == 0, description=description)
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
