"""Device memory: what the machine and device have, how sizes read, and what running out is.

The memory plan (:mod:`hesscli.engine.memory`) sizes micro-batches and vmap chunks to a budget:
``--max-memory`` (read by :func:`parse_size`), or by default a share of the device's memory
(:func:`automatic_budget`: half on the CPU, 80 % on CUDA, split between the ranks that share the
device). The default is a share of the *total* memory, not of the memory free at the moment: the
micro-batch decides the order of the sums, so sizing it by a reading of the free memory would
make the same inputs give different bits from run to run. The free memory is a gate instead
(:func:`check_free`): a plan that does not fit in what is free now is refused up front with one
line, never killed later. :func:`is_out_of_memory` and :func:`release_cached` are what the
operator's out-of-memory retries lean on.
"""

from __future__ import annotations

import os
import re

import torch

from hesscli.engine.heap import trim_heap
from hesscli.errors import ConfigError, MemoryLimitError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 10**3,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 10**6,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 10**9,
    "t": 1 << 40,
    "tib": 1 << 40,
    "tb": 10**12,
}
#: Share of the total memory a run plans to use when no budget is given (CPU, CUDA).
AUTOMATIC_SHARE = {"cpu": 0.5, "cuda": 0.8}


def parse_size(text: str) -> int:
    """Bytes in ``8GiB``, ``8G`` (binary), ``8GB`` (decimal), ``512MB``, ``1.5GiB`` or ``1000``."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS or float(match.group(1)) * _UNITS[unit] < 1:
        raise ConfigError(
            f"--max-memory {text!r} is not a memory size",
            "write it like 8GiB, 8G (binary), 8GB (decimal) or 512MB",
        )
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(size: int) -> str:
    """``1.5 GiB``, ``512 MiB``, ``1500 GiB``: sizes for messages (``parse_size`` reads them)."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            value = size / scale
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
    return f"{size} B"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator running out (CUDA, or the CPU allocator)."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc)
    return "out of memory" in text.lower() or "can't allocate memory" in text


def release_cached(device: torch.device) -> None:
    """Give cached allocator blocks back, so a retry starts from a clean device."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        trim_heap()


def free_bytes(device: torch.device) -> int:
    """Free memory of ``device``: the CUDA device's, or the machine's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return _machine_bytes("MemAvailable:", "SC_AVPHYS_PAGES", 4 << 30)


def total_bytes(device: torch.device) -> int:
    """All memory of ``device``: the CUDA device's, or the machine's physical memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1])
    return _machine_bytes("MemTotal:", "SC_PHYS_PAGES", 8 << 30)


def _machine_bytes(field: str, pages: str, fallback: int) -> int:
    """A ``/proc/meminfo`` field in bytes, else ``sysconf`` pages, else ``fallback``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf(pages) * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return fallback


def ranks_here() -> int:
    """Processes of this run on this machine (torchrun's ``LOCAL_WORLD_SIZE``)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def ranks_sharing(device: torch.device) -> int:
    """Processes of this run whose memory comes from ``device``'s.

    On the CPU every process on the machine shares it. On CUDA each process of a torchrun
    launch has its own GPU (``cuda:LOCAL_RANK``), so only processes beyond the GPU count
    would share one.
    """
    local = ranks_here()
    if device.type != "cuda":
        return local
    return max(1, -(-local // max(1, torch.cuda.device_count())))


def automatic_budget(device: torch.device) -> int:
    """A share of the device's total memory, split between the ranks that share the device.

    The total, not the free memory: the budget sizes micro-batches, and so must not change
    between two runs of the same inputs (see the module docstring).
    """
    share = AUTOMATIC_SHARE.get(device.type, 0.5)
    return int(total_bytes(device) * share / ranks_sharing(device))


def check_free(needed: int, device: torch.device, *, source: str) -> None:
    """Refuse up front a run that needs more than this rank's share of the free memory.

    Raises:
        MemoryLimitError: naming the size needed, what is free, and ``--max-memory``.
    """
    free = free_bytes(device) // ranks_sharing(device)
    if needed <= free:
        return
    raise MemoryLimitError(
        f"this run needs about {format_size(needed)} on {device} ({source}) and only "
        f"{format_size(free)} is free now",
        f"free some memory, or pass --max-memory {format_size(free).replace(' ', '')} to size "
        "the run to what is free (smaller micro-batches, fewer Lanczos vectors)",
    )
