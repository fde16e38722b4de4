"""Process settings for speed on a CPU, applied by the ``mosmos`` commands, the bundles' ``initialize`` lists and
``scripts/benchmark.py``.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and gives it
back to the system when it is freed, so a process that allocates and frees tensors of hundreds of megabytes, as a
3D network's training step or a sliding-window pass does, has the kernel fault in and zero every page of them again
at each step (what that costs is measured in ``docs/benchmarks.md``). :func:`keep_freed_memory` has glibc serve
those blocks from its heap and keep freed memory for reuse, what preloading jemalloc or tcmalloc does (PyTorch's
CPU performance guide recommends them), in the process itself through ``mallopt``. The price: memory freed by the
process is not handed back to the system while it runs (its resident size stays at its peak, which the next step
reaches again anyway).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

__all__ = ["keep_freed_memory", "OPT_OUT_VARIABLE"]

logger = logging.getLogger(__name__)

OPT_OUT_VARIABLE = "MOSMOS_SYSTEM_MALLOC"  # set to 1 to leave the C library's allocator as it is
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's malloc.h
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Have glibc's ``malloc`` keep freed memory for reuse instead of unmapping large blocks (``M_MMAP_MAX = 0``,
    ``M_TRIM_THRESHOLD`` 2 GB). Returns whether it is in effect: ``False`` off Linux, on a C library without
    ``mallopt`` (musl), or with ``MOSMOS_SYSTEM_MALLOC=1`` in the environment. Safe to call more than once; applies
    to the whole process from this call on (worker processes forked later inherit it)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT_VARIABLE, "0") not in ("", "0"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: mallopt's options are glibc's
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    logger.debug("glibc malloc keeps freed memory: %s", _applied)
    return _applied
