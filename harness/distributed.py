"""One trial on several devices: DistributedDataParallel ranks, started by the harness or torchrun.

``trainer.devices=N`` makes :func:`harness.train.fit` start N ranks itself (:func:`fit_on_devices`):
one per GPU with NCCL, or N CPU processes with gloo. The calling process trains nothing; it
stays the one that talks to the outside (the epoch callbacks: MLflow, Optuna, pruning) and gets
the trained weights back from rank 0, so its caller sees the same ``TrainResult`` as with one
device. Under ``torchrun`` the ranks already exist and ``fit`` joins their process group.

Each rank holds only its shard of the training set on its device: a contiguous block of rows
(:class:`Shard`). Every rank draws the same permutation from the same generator, so the global
batch order does not depend on N. A step puts the global batch together from the shards with one
all-reduce (each rank fills the rows it holds, zeros elsewhere), then augments it and runs the
batch hooks on the whole batch, drawing from the shared generator exactly as one device does,
and trains on its contiguous slice of it (:meth:`Group.bounds`). So every rank trains on
batch/N images, and batch hooks that mix images across the batch see the batch one
device sees. The cost is one batch of images over the wire per step, against the shard's memory
saved: on a data set that fits one device and a slow link, ``devices=1`` is the faster choice.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from harness.checks import check_device_fit
from harness.data import PreparedData
from harness.errors import UserError
from harness.tricks import load_tricks

log = logging.getLogger(__name__)

# Seconds the launching process waits for a message from rank 0 before it looks whether a rank
# died; a dead rank is found within this long.
_POLL_SECONDS = 0.2
# The splits of PreparedData the ranks train and validate on.
_RANK_SPLITS = ("train_x", "train_y", "val_x", "val_y")


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


@dataclass(frozen=True)
class Shard:
    """A rank's contiguous rows of the training set, on its device, images and labels in one.

    ``packed`` holds each row's flattened image and, in its last column, its label as a float
    (exact below 2**24 classes), so one all-reduce per step moves both.

    Attributes:
        packed: ``[rows held, C*H*W + 1]`` float32, on the rank's device.
        start: The global index of the first row held.
        image_shape: ``(C, H, W)``.
        group: The ranks the training set is shared among.
    """

    packed: torch.Tensor
    start: int
    image_shape: tuple[int, ...]
    group: Group

    @classmethod
    def of(cls, images: torch.Tensor, labels: torch.Tensor, group: Group,
           device: torch.device) -> Shard:
        """Return ``group``'s rank's share of a training set held anywhere (the CPU, say).

        Only the share is copied to ``device``; the caller may drop the whole set after.
        """
        start, stop = group.bounds(len(labels))
        share = torch.cat([images[start:stop].flatten(1),
                           labels[start:stop, None].to(images.dtype)], dim=1)
        return cls(share.to(device), start, tuple(images.shape[1:]), group)

    def __len__(self) -> int:
        return len(self.packed)

    def contribution(self, rows: torch.Tensor) -> torch.Tensor:
        """Return ``[len(rows), C*H*W + 1]``: the rows of the batch held here, zeros elsewhere."""
        local = rows - self.start
        held = (local >= 0) & (local < len(self.packed))
        if len(self.packed) == 0:  # fewer training rows than ranks: this rank holds none
            return self.packed.new_zeros((len(rows), self.packed.shape[1]))
        # Gathered without a boolean index, so CUDA does not wait on the row count.
        picked = self.packed.index_select(0, torch.where(held, local, 0))
        return torch.where(held[:, None], picked, 0.0)

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the images and labels of the global batch ``rows``, from every rank's shard.

        Every rank must call it with the same ``rows``: exactly one rank holds each row, so the
        sum over the ranks is that row, bit for bit.
        """
        packed = self.group.sum(self.contribution(rows))
        images = packed[:, :-1].unflatten(1, self.image_shape).contiguous()
        return images, packed[:, -1].long()


def current_group() -> Group:
    """Return the group this process trains in; join torchrun's when it started this process."""
    global _joined_torchrun
    if not dist.is_available():
        return Group()
    if not dist.is_initialized() and torchrun_rank() is not None:
        # Started by torchrun (or a scheduler that sets its variables): join the others.
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        _joined_torchrun = True
    if not dist.is_initialized():
        return Group()
    return Group(dist.get_rank(), dist.get_world_size())


def torchrun_size() -> int:
    """Return how many ranks torchrun (or a scheduler setting its variables) started; 1 if none."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def torchrun_rank() -> int | None:
    """Return this process's rank when torchrun started several; None otherwise."""
    if torchrun_size() <= 1:
        return None
    return int(os.environ.get("RANK", "0"))


# Under torchrun every rank runs ``harness.run``, but only rank 0 runs the study: it talks to
# Optuna and MLflow and sends each trial's recipe to the others (``announce``), which train it
# with rank 0 (``follow``) and write nothing. Set once this process joined torchrun's group.
_joined_torchrun = False


def announce(recipe: Any, digest: str) -> None:
    """On rank 0 under torchrun: send the other ranks the trial ``fit`` is about to train."""
    if _joined_torchrun:
        dist.broadcast_object_list([(recipe, digest)], src=0)


def release_followers() -> None:
    """On rank 0 under torchrun: tell the other ranks the study is over, so they end."""
    if torchrun_rank() is None:
        return
    current_group()  # a study with nothing left to train has not joined yet
    dist.broadcast_object_list([None], src=0)
    dist.destroy_process_group()


def joined_torchrun() -> bool:
    """Whether this process trains as one of the ranks torchrun started."""
    return _joined_torchrun


def shared(error: BaseException) -> BaseException:
    """Mark ``error`` as raised on every rank at once (a stop they agreed on), and return it."""
    error.every_rank = True  # type: ignore[attr-defined]
    return error


@contextlib.contextmanager
def fatal_unless_shared() -> Iterator[None]:
    """End the process when an error that the other ranks did not also see leaves the block.

    Under torchrun the other ranks would wait for this one in their next collective; exiting
    makes torchrun stop them all, and the next start of the study re-runs the trial. Errors
    every rank raises (a stop they agreed on, a bad recipe) pass through.
    """
    try:
        yield
    except (StoppedByLeader, UserError):
        raise
    except Exception as error:
        if getattr(error, "every_rank", False):
            raise
        print(f"error: rank {dist.get_rank()} failed alone, which stops every rank: "
              f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
        os._exit(1)


def follow(fit: FitFunction, device_name: str) -> None:
    """On a rank other than 0 under torchrun: train every trial rank 0 announces, until it ends.

    The rank prepares each trial's data itself, on the CPU (its shard goes to the device in
    ``fit``), and checks it is rank 0's by its digest. It creates no run and prints nothing: a
    trial that fails, or that rank 0 stops, fails here the same way and rank 0 records it.
    """
    from harness.data import prepare_data  # the data sources pull in PIL; only ranks need them

    group = current_group()
    device = rank_device(torch.device(device_name if device_name != "auto" else
                                      "cuda" if torch.cuda.is_available() else "cpu"), group)
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
            with contextlib.suppress(StoppedByLeader, UserError):
                fit(recipe, data, device=device, progress=False)
    finally:
        dist.destroy_process_group()


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

    The same check as the command line's (:func:`harness.checks.check_device_fit`), for
    callers of ``fit`` that skip it.

    Args:
        trainer: The recipe's ``TrainerSpec``.
        device: Where the run trains.
        group: The ranks already started (by torchrun), or one rank.
    """
    if not group.active:
        check_device_fit(device.type, trainer.devices, sync_bn=trainer.sync_bn)
        return
    if trainer.devices not in (1, group.size):
        raise UserError(f"trainer.devices={trainer.devices} but {group.size} ranks were started")
    # torchrun placed the ranks, maybe on several machines: their GPUs are not this one's to
    # count.
    check_device_fit(device.type, group.size, sync_bn=trainer.sync_bn, cuda_count=group.size)


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
    # The ranks read the training and validation sets from shared CPU memory (torch passes
    # tensors to spawned processes that way) and never the test set, which stays here.
    cpu_data = replace(data, test_x=data.test_x[:0].cpu(), test_y=data.test_y[:0].cpu(),
                       **{f.name: getattr(data, f.name).cpu() for f in fields(data)
                          if f.name in _RANK_SPLITS})
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
    # The data stays on the CPU here, shared with the other ranks: fit moves this rank's shard
    # of the training set and the validation set to the device, and nothing else.

    def report(epoch: int, metrics: dict[str, float]) -> None:
        pipe.send(("epoch", (epoch, metrics)))
        if not pipe.recv():
            raise StoppedByLeader(f"stopped after epoch {epoch}")

    try:
        result = fit(recipe, data, device=device, callbacks=[report] if rank == 0 else [],
                     progress=progress and rank == 0, description=description)
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
