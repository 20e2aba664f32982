"""Where a process sits among the ranks of one trial, and what the ranks share while they train.

The loop (:mod:`harness.training.loop`) reads this module and nothing above it: the
:class:`Group` it trains in, the :class:`Shard` of the training set it holds, and the helpers
that let every rank agree on a stop. Starting ranks is :mod:`harness.training.devices`'s job.

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
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from harness.core.checks import check_device_fit
from harness.core.errors import UserError


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

    The same check as the command line's (:func:`harness.core.checks.check_device_fit`), for
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

