"""The linear scan ``h_t = a_t * h_{t-1} + b_t`` as Numba loops (imported on first use only).

Arrays are (T, N) C-contiguous, N = B * H independent recurrences, ``h0`` (N,), ``out``
(T, N), all of one dtype (float32 or float64: one compiled signature each). ``reverse``
runs the recurrence from t = T-1 down to 0. `scan_serial` is the plain loop; two
ways to spread the work over cores:

* `scan_blocked`: the N recurrences in one contiguous block of columns per thread (prange).
  Inside a block the loop over time is outer and the loop over columns inner, so each step
  reads and writes one contiguous run of memory and LLVM vectorizes it. (Narrow blocks of
  64 columns were 3-10x slower than one thread: every step of every task touched a new
  page.)
* `scan_chunked`: T cut into chunks, for when N is too small to share out. Each chunk
  scans from zero and keeps the product of its a's; a short sequential pass carries the true
  state into each chunk; each chunk then adds ``(prod of its a's so far) * state_in``. This
  is the associative combine of Martin & Cundy (2018) at one level: depth T/C + C instead of
  T, for about twice the arithmetic.
"""

import numpy as np
from numba import njit, prange

BLOCK = 16          # a task's columns are a multiple of this: whole 64-byte lines of float32


@njit(cache=True)
def scan_serial(a, b, h0, reverse, out):
    """One thread, the time loop outer: the loop that runs on two threads and for every scan
    below `scan_kernels.PARALLEL_MIN_SIZE` (waking threads alone costs ~15 µs)."""
    T, N = b.shape
    h = h0.copy()               # a private carry: out may not alias it, so the loop vectorizes
    for s in range(T):
        t = T - 1 - s if reverse else s
        for j in range(N):
            h[j] = a[t, j] * h[j] + b[t, j]
            out[t, j] = h[j]
    return out


@njit(parallel=True, cache=True)
def scan_blocked(a, b, h0, reverse, out, n_blocks):
    """The N columns in ``n_blocks`` contiguous blocks, one task each; time loop outer."""
    T, N = b.shape
    width = (N + n_blocks - 1) // n_blocks
    width = (width + BLOCK - 1) // BLOCK * BLOCK       # whole cache lines per task
    n_blocks = (N + width - 1) // width
    for blk in prange(n_blocks):
        lo = blk * width
        hi = min(lo + width, N)
        h = h0[lo:hi].copy()
        for s in range(T):
            t = T - 1 - s if reverse else s
            a_t, b_t, out_t = a[t, lo:hi], b[t, lo:hi], out[t, lo:hi]
            for j in range(hi - lo):
                h[j] = a_t[j] * h[j] + b_t[j]
                out_t[j] = h[j]
    return out


@njit(parallel=True, cache=True)
def scan_chunked(a, b, h0, reverse, out, n_chunks):
    T, N = b.shape
    size = (T + n_chunks - 1) // n_chunks
    n_chunks = (T + size - 1) // size
    prod = np.empty((n_chunks, N), dtype=out.dtype)      # product of each chunk's a's
    state_in = np.empty((n_chunks, N), dtype=out.dtype)  # the true state entering each chunk
    # Phase 1: each chunk scans from zero (chunk 0 from h0, so it needs no fix-up).
    for c in prange(n_chunks):
        start, stop = c * size, min((c + 1) * size, T)
        t = T - 1 - start if reverse else start
        for j in range(N):
            h_prev = h0[j] if c == 0 else 0.0
            out[t, j] = a[t, j] * h_prev + b[t, j]
            prod[c, j] = a[t, j]
        for s in range(start + 1, stop):
            prev = t
            t = T - 1 - s if reverse else s
            for j in range(N):
                out[t, j] = a[t, j] * out[prev, j] + b[t, j]
                prod[c, j] *= a[t, j]
    # Phase 2, sequential over the chunks only: the true state entering chunk c is chunk
    # c-1's local end plus (product of its a's) times the state that entered it.
    for j in range(N):
        state_in[0, j] = h0[j]
    for c in range(1, n_chunks):
        last = c * size - 1
        t_last = T - 1 - last if reverse else last
        for j in range(N):
            end = out[t_last, j]
            if c > 1:
                end += prod[c - 1, j] * state_in[c - 1, j]
            state_in[c, j] = end
    # Phase 3: each later chunk adds (product of its a's up to t) times its entering state.
    for c in prange(1, n_chunks):
        start, stop = c * size, min((c + 1) * size, T)
        running = np.ones(N, dtype=out.dtype)
        for s in range(start, stop):
            t = T - 1 - s if reverse else s
            for j in range(N):
                running[j] *= a[t, j]
                out[t, j] += running[j] * state_in[c, j]
    return out


@njit(cache=True)
def scan_backward_serial(a, g, h, h0, reverse, dh, da):
    """The gradient of `scan_serial` in one pass backwards through its steps: ``dh_t = g_t +
    a_{t+1} dh_{t+1}`` and ``da_t = dh_t h_{t-1}`` fused (the rule is
    `scan_kernels.scan_backward_reference`; the tests hold the two together). Returns dh0,
    the carry left after the first step, ``a_1 dh_1``."""
    T, N = g.shape
    carry = np.zeros(N, dtype=g.dtype)          # a_{t+1} * dh_{t+1}, zero past the last step
    for s in range(T):
        t = s if reverse else T - 1 - s         # the forward's steps, last first
        prev = t + 1 if reverse else t - 1      # the step before t in the forward's order
        h_prev = h0 if prev < 0 or prev >= T else h[prev]
        for j in range(N):
            d = g[t, j] + carry[j]
            dh[t, j] = d
            da[t, j] = d * h_prev[j]
            carry[j] = a[t, j] * d
    return carry
