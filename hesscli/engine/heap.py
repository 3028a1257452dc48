"""The C heap on the CPU: keep freed memory for the next pass, trim only when it piles up.

Every curvature pass on the CPU allocates the same large, activation-sized tensors again. glibc
serves blocks above its mmap threshold (at most 32 MiB) with fresh ``mmap`` pages and unmaps
them when freed, and ``malloc_trim`` hands free heap pages back too: either way the next pass
faults every page in anew and the kernel zeroes it. On MiniLM that was 3.1 million page faults
and about 4.5 s of system time for one eigenvalue (10 passes), against 0.8 million and 1.6 s when
freed memory is kept for reuse, at 9 % more peak memory.

So the operator asks glibc (once per process, :func:`keep_freed_memory`) to serve large blocks
from the heap and not to give its top back on every free, and trims after a pass only when the
resident memory has grown by a tenth over what it was after the first pass
(:class:`HeapTrimmer`): fragmentation stays bounded without paying the faults every pass. Off
glibc all of this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os

#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
#: Blocks below this come from the heap (reused) rather than from fresh mmap pages.
MMAP_THRESHOLD = 1 << 30
#: Free memory at the top of the heap kept rather than returned on every free.
TRIM_THRESHOLD = 1 << 34
#: Extra heap requested with each growth, so that growing is rare.
TOP_PAD = 64 << 20
#: Resident growth over the first pass's that makes :class:`HeapTrimmer` trim.
GROWTH = 1.1


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim``; else nothing)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc keep large freed blocks for reuse (once per process); whether it took."""
    libc = _libc()
    if libc is None:
        return False
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_TOP_PAD, TOP_PAD),
    )
    return all(libc.mallopt(ctypes.c_int(p), ctypes.c_int(min(v, 2**31 - 1))) for p, v in settings)


def resident_bytes() -> int:
    """This process's resident memory now (0 where ``/proc`` is unavailable)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class HeapTrimmer:
    """Trims the heap after a pass only when resident memory has grown since the first pass.

    The resident memory after the first pass (what it used, freed blocks kept for reuse) is
    the reference; a later pass trims when it ends above :data:`GROWTH` times that, so kept
    memory is reused pass after pass while a slow creep (fragmentation over hundreds of
    passes) stays bounded.
    """

    def __init__(self) -> None:
        self._reference = 0

    def after_pass(self) -> None:
        """Called after every data pass on the CPU."""
        now = resident_bytes()
        if not self._reference:
            self._reference = now
        elif now > GROWTH * self._reference:
            trim_heap()
