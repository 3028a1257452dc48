"""Data parallelism on torch.distributed: each rank holds a shard, the engine sums across ranks.

Every rank runs the same algorithms with the same seed. The only collective operations are in
the engine: the sums of products, gradients and diagonals over the ranks' micro-batches, the unit
counts that normalise them, and agreement on choices made from local data (the differentiation
route). ``all_reduce`` hands every rank the same bits, so every rank's Lanczos sees the same
numbers and takes the same decisions; no vector is broadcast. Launch with
``torchrun --nproc-per-node N -m hesscli ...``: gloo on the CPU, nccl on CUDA.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hesscli.batches import Dataset
from hesscli.engine.weighting import Weighting, local_units
from hesscli.errors import DataError, DistributedError, PeerFailedError

#: Environment variables a launcher (torchrun, or srun/mpirun set up alike) provides.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


_CPU = torch.device("cpu")


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a collective that fails because a peer went away into one clear line.

    When one rank stops (a clean error, or the launcher killing it), its peers' pending
    collectives fail with a backend error (gloo: "Connection closed by peer"). That is not
    this rank's fault: it says that a peer failed, and the peer's own message says why.
    Running out of memory inside a collective stays what it is.
    """
    try:
        yield
    except RuntimeError as exc:  # torch.distributed.DistBackendError is a RuntimeError
        if "out of memory" in str(exc).lower():
            raise
        # The backend's own words ("Connection reset by peer", with a source path) only
        # restate that the peer is gone; the peer's own line says why.
        raise PeerFailedError(
            f"another process of this launch failed, so the {what} across processes could "
            "not complete",
            "see that process's message, fix it and relaunch",
        ) from exc


@dataclass(frozen=True)
class Group:
    """This process's place in the run, and the collective operations the engine needs.

    Attributes:
        rank: This process's rank (0 prints the results).
        world_size: Number of processes.
        backend: ``gloo``, ``nccl``, or ``none`` for a single process.
        device: Where the collectives' tensors live (the CPU for gloo).
    """

    rank: int = 0
    world_size: int = 1
    backend: str = "none"
    device: torch.device = _CPU

    @property
    def active(self) -> bool:
        """Whether there are other processes to reduce with."""
        return self.backend != "none" and self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints and writes files."""
        return self.rank == 0

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place; every rank gets the same result."""
        if not self.active:
            return tensor
        if tensor.device == self.device:
            with _collective("sum"):
                dist.all_reduce(tensor)
            return tensor
        moved = tensor.to(self.device)
        with _collective("sum"):
            dist.all_reduce(moved)
        tensor.copy_(moved)
        return tensor

    def gather(self, value: int) -> list[int]:
        """One integer from every rank, in rank order (shard sizes, unit counts)."""
        if not self.active:
            return [value]
        mine = torch.tensor([value], dtype=torch.int64, device=self.device)
        every = [torch.zeros_like(mine) for _ in range(self.world_size)]
        with _collective("exchange of counts"):
            dist.all_gather(every, mine)
        return [int(t) for t in every]

    def everywhere(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (a choice made from local data, agreed)."""
        if not self.active:
            return flag
        box = torch.tensor([int(flag)], dtype=torch.int64, device=self.device)
        with _collective("agreement"):
            dist.all_reduce(box, op=dist.ReduceOp.MIN)
        return bool(box.item())

    def agree(self, choice: str) -> str:
        """Rank 0's ``choice``, on every rank."""
        if not self.active:
            return choice
        box = [choice]
        with _collective("agreement"):
            dist.broadcast_object_list(box, src=0, device=self.device)
        return str(box[0])


SINGLE = Group()


def launched() -> bool:
    """Whether a launcher such as torchrun started this process as one rank of several."""
    return all(name in os.environ for name in LAUNCHER_VARIABLES)


def join(device: torch.device, requested: bool | None) -> tuple[Group, torch.device]:
    """Join the launcher's process group; return it and this rank's device.

    Args:
        device: The resolved ``--device``; a bare ``cuda`` becomes ``cuda:LOCAL_RANK``.
        requested: ``--distributed`` (True), ``--no-distributed`` (False), or ``None``: join
            when a launcher started this process.
    """
    if requested is False or (requested is None and not launched()):
        return SINGLE, device
    if not launched():
        raise DistributedError(
            "--distributed needs a launcher: the variables "
            f"{', '.join(LAUNCHER_VARIABLES)} are not set",
            "start the command with 'torchrun --nproc-per-node N -m hesscli ...'",
        )
    backend, device, comm = placement(device)
    if backend == "nccl":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        try:
            # Bound to this rank's GPU: NCCL's barrier and collectives then need no guess.
            bound = {"device_id": device} if backend == "nccl" else {}
            dist.init_process_group(backend, **bound)
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DistributedError(
                f"cannot join the {backend} process group: {first}",
                "check the launcher's MASTER_ADDR/MASTER_PORT and that every rank started",
            ) from exc
        atexit.register(_leave)
    elif dist.get_backend() != backend:
        raise DistributedError(
            f"the process group uses {dist.get_backend()}, but --device {device} needs {backend}",
            "use the same --device for every command in the process",
        )
    return Group(dist.get_rank(), dist.get_world_size(), backend, comm), device


def placement(device: torch.device) -> tuple[str, torch.device, torch.device]:
    """The backend, this rank's device and the collectives' device of a launched rank.

    CUDA: NCCL, one GPU per process, ``cuda:LOCAL_RANK`` for a bare ``cuda`` (or ``auto``);
    the collectives run on that GPU. CPU: gloo, collectives on the CPU. A pure function of
    ``device``, ``LOCAL_RANK``/``LOCAL_WORLD_SIZE`` and the GPU count (tested without GPUs).

    Raises:
        DistributedError: for other devices, a ``LOCAL_RANK`` without a GPU of its own, or one
            GPU named for several processes.
    """
    if device.type == "cpu":
        return "gloo", device, torch.device("cpu")
    if device.type != "cuda":
        raise DistributedError(
            f"distributed runs need the CPU (gloo) or CUDA (nccl), not {device.type}",
            "pass --device cpu or --device cuda",
        )
    local, here = _local("LOCAL_RANK", 0), _local("LOCAL_WORLD_SIZE", 1)
    if device.index is not None and here > 1:
        raise DistributedError(
            f"--device {device} puts all {here} processes on this machine on one GPU; NCCL "
            "needs one GPU per process",
            "pass --device cuda (or auto): each process then uses cuda:LOCAL_RANK",
        )
    if device.index is None:
        count = torch.cuda.device_count()
        if local >= count:
            raise DistributedError(
                f"process LOCAL_RANK={local} has no GPU of its own: this machine has {count}",
                f"start at most {count} processes per machine (torchrun --nproc-per-node "
                f"{count}), or use --device cpu",
            )
        device = torch.device("cuda", local)
    return "nccl", device, device


def _local(name: str, default: int) -> int:
    """A launcher's integer variable (``LOCAL_RANK``), refusing a malformed one."""
    text = os.environ.get(name, str(default))
    try:
        return int(text)
    except ValueError:
        raise DistributedError(
            f"the launcher variable {name}={text!r} is not an integer",
            "start the command with torchrun, which sets it",
        ) from None


def leave() -> None:
    """Leave the process group after a run that finished on every rank.

    The barrier first: a rank tearing its connections down while a peer is still using them
    makes gloo abort the process (SIGABRT) at exit.
    """
    if dist.is_initialized():
        with _collective("final barrier"):
            dist.barrier()
        dist.destroy_process_group()


def _leave() -> None:
    """At exit after an error: tear down without waiting for peers that may never come."""
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(dataset: Dataset, group: Group) -> Dataset:
    """This rank's contiguous share of the samples: ⌊rN/W⌋ to ⌊(r+1)N/W⌋ (sizes may differ).

    Contiguous shards in rank order put the samples back in their original order, so the
    engine's weighted sums over ranks are those of one process over all samples.
    """
    total = dataset.num_samples
    if total < group.world_size:
        raise DistributedError(
            f"{total} samples cannot be shared by {group.world_size} processes",
            f"use at most {total} processes, or more data",
        )
    start = group.rank * total // group.world_size
    stop = (group.rank + 1) * total // group.world_size
    return dataset.subset(start, stop)


def weighting_for(
    dataset: Dataset, kind: str, group: Group, *, shift: int = 0, single_pass: bool = False
) -> tuple[Weighting, list[int]]:
    """The units of the loss over every rank, and each rank's sample count.

    ``shift`` and ``single_pass`` are those of :class:`Weighting`.

    Raises:
        DataError: when a rank holds no unit at all (only padding), whose mean is undefined.
    """
    units, samples = local_units(dataset, kind, shift)
    every_unit, every_sample = group.gather(units), group.gather(samples)
    empty = [rank for rank, count in enumerate(every_unit) if count == 0]
    if empty:
        where = "the data" if not group.active else f"the shard of rank {empty[0]}"
        raise DataError(
            f"{where} holds no real tokens (every target is padding)",
            "use fewer processes, or data with real targets",
        )
    weighting = Weighting(kind, sum(every_unit), sum(every_sample), shift, single_pass)
    return weighting, every_sample
