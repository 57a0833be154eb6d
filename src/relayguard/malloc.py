"""Give large freed buffers back to the operating system at once.

glibc's malloc serves big requests with mmap() and unmaps them when freed, but after the first
such free it raises its threshold to that size (up to 32 MiB), so later message-sized buffers come
from the heap and stay in the process when freed. Measured on one 25 MiB message: the relay's
peak RSS 330 -> 252 MiB, and RSS afterwards 330 -> 174 MiB. Setting the threshold fixes it
(and turns the adjustment off). Elsewhere than glibc, nothing happens.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number
THRESHOLD = 1024 * 1024  # buffers from this size on are mapped, and unmapped when freed


def return_large_buffers() -> bool:
    """Set glibc's mmap threshold; False where there is no mallopt() to call."""
    try:
        libc = ctypes.CDLL(None)  # the C library this interpreter already uses
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    return bool(mallopt and mallopt(M_MMAP_THRESHOLD, THRESHOLD))
