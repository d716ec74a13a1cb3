"""Keep glibc from handing the tape's memory back to the OS after every backward.

A forward through an unrolled RNN allocates the whole tape (tens of MB at moderate sizes) in
arrays below glibc's mmap threshold, so they come from the heap; backward frees them all at once,
and glibc then trims the free top of the heap back to the OS (its trim threshold is 128 KiB
unless an earlier large free raised it). The next forward page-faults the same memory in
again: measured up to 1.5x on an LSTM at T=100, B=32, H=128, depending only on what the
process happened to allocate before. Setting the trim threshold to 1 GiB and the mmap
threshold to 32 MiB (glibc's own ceiling for its adaptive threshold) makes the memory stay
and the speed reproducible; freed memory is still reused by the process, it just is not
returned to the OS while the process runs, as with PyTorch's caching allocators.

Like numpy's automatic ``madvise(MADV_HUGEPAGE)``, this is a default with a way out:
nothing is changed unless the C library is glibc, the user has not tuned malloc already
(``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or
``GLIBC_TUNABLES`` in the environment), and ``TINYGRAD_RNN_TUNE_MALLOC`` is not ``0``.
It runs once, at the first Unroll or the first backward, whichever comes first.
"""

import ctypes
import os
import platform
import threading

M_TRIM_THRESHOLD = -1       # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 1 << 30
MMAP_THRESHOLD = 32 << 20

_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
                  "GLIBC_TUNABLES")

_lock = threading.Lock()
state = {"done": False, "applied": False, "reason": "not yet run"}


def tune_malloc():
    """Apply the settings above once per process; returns whether they were applied."""
    if state["done"]:               # every later call: one dict lookup
        return state["applied"]
    with _lock:
        if not state["done"]:
            state["applied"], state["reason"] = _apply()
            state["done"] = True
        return state["applied"]


def status():
    """(applied, why): for tests, benchmarks and users who wonder."""
    return state["applied"], state["reason"]


def _apply():
    if os.environ.get("TINYGRAD_RNN_TUNE_MALLOC", "1").strip().lower() in ("0", "false", "no", "off"):
        return False, "TINYGRAD_RNN_TUNE_MALLOC=0"
    user = [name for name in _USER_SETTINGS if name in os.environ]
    if user:
        return False, f"malloc already tuned by the environment ({', '.join(user)})"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False, "not glibc"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False, "mallopt not found"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return ok, "applied" if ok else "mallopt refused"
