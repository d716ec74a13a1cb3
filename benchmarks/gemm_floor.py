"""The GEMM floor of a recurrent forward+backward: the matrix products an optimal
implementation cannot avoid, timed alone in numpy.

For a cell whose input side is ``x_t W_x^T`` (all gates' x-parts, ``n_x`` columns) and whose
recurrent side is a chain of per-step products ``u_k W_k^T`` (``u_k`` (B, k_in), ``W_k^T``
(k_in, k_out)), with the gradients of x and every weight:

* forward: one GEMM over all T·B rows for the input side, then per step each recurrent product;
* backward: per step each recurrent product's input gradient (``dG_t W_k``), the chain the
  reverse loop must walk; then one GEMM each for ``dx = dG_x W_x``, ``dW_x = dG_xᵀ X`` and every
  ``dW_k = dG_kᵀ U_k`` over all T·B rows.

Everything else (the gates' elementwise work, bias sums, the workspace) is left out, so no
implementation can be faster; ``ours compiled / GEMM floor`` says how close one comes. The
buffers are allocated once and the products written into them (``out=``), as an optimal
implementation would; transposed weights are contiguous copies (OpenBLAS is slower on
transposed views, see README.md).
"""

import numpy as np

# cell -> (n_x(H), [(k_in(H), k_out(H)), ...]): the input side's width and the per-step
# products, in units of the hidden size H (k_in = None means the input size I).
FLOOR_SHAPES = {
    "rnn": (1, [(1, 1)]),
    "lstm": (4, [(1, 4)]),
    "gru": (3, [(1, 3)]),
    # f's h-part, then h~'s (f h)-part: two dependent products a step (hence two per step).
    "mgu": (2, [(1, 1), (1, 1)]),
    # minGRU: gates from x_t only (z and h~ both Linear(I, H)); nothing recurrent to multiply.
    "mingru": (2, []),
}


def gemm_floor(cell, T, B, I, H, dtype):
    """A no-argument function that runs the cell's floor GEMMs once on random data."""
    n_x, recurrent = FLOOR_SHAPES[cell]
    rng = np.random.default_rng(0)

    def rand(*shape):
        return rng.standard_normal(shape).astype(dtype)

    X = rand(T * B, I)
    W_x, W_xT = rand(n_x * H, I), rand(I, n_x * H)
    G_x, dX = np.empty((T * B, n_x * H), dtype), np.empty((T * B, I), dtype)
    dW_x = np.empty((n_x * H, I), dtype)
    dG_x = rand(T * B, n_x * H)
    products = []
    for k_in, k_out in recurrent:
        k_in, k_out = k_in * H, k_out * H
        products.append({"U": rand(T, B, k_in), "W": rand(k_out, k_in), "WT": rand(k_in, k_out),
                         "G": np.empty((B, k_out), dtype), "dG": rand(T, B, k_out),
                         "dU": np.empty((B, k_in), dtype), "dW": np.empty((k_out, k_in), dtype)})

    def run():
        np.matmul(X, W_xT, out=G_x)
        for t in range(T):
            for p in products:
                np.matmul(p["U"][t], p["WT"], out=p["G"])
        for t in reversed(range(T)):
            for p in reversed(products):
                np.matmul(p["dG"][t], p["W"], out=p["dU"])
        np.matmul(dG_x, W_x, out=dX)
        np.matmul(dG_x.T, X, out=dW_x)
        for p in products:
            np.matmul(p["dG"].reshape(T * B, -1).T, p["U"].reshape(T * B, -1), out=p["dW"])

    return run
