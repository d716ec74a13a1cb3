"""``tinygrad-rnn gradflow``: how much gradient survives going back T - t steps, per cell.

For each cell (fresh weights, or trained ones from a checkpoint) it runs `gradient_flow` on
one random input sequence with a loss on the last step only, prints ``||dL/dh_t||`` and the
singular values of ``dh_T/dh_t`` by distance in time, and saves a log-scale plot.

    tinygrad-rnn gradflow --cells rnn,lstm,gru --steps 100
    tinygrad-rnn gradflow --cells rnn --spectral-radius 1.5       # exploding
    tinygrad-rnn gradflow --checkpoint model.safetensors           # trained vs fresh
"""

import sys

import numpy as np

from ..inspect.gradient_flow import (
    default_distances,
    gradient_flow,
    plot_gradient_flow,
    set_forget_bias,
    set_spectral_radius,
)
from ..nn.init import manual_seed
from ..rnn import GRUCell, LSTMCell, RNNCell, Stack
from ..serialization import load

CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}


def add_arguments(p):
    p.add_argument("--cells", default="rnn,lstm,gru",
                   help="comma-separated cells to compare: rnn, lstm, gru (default: all three)")
    p.add_argument("--steps", type=int, default=100, help="sequence length T (default 100)")
    p.add_argument("--hidden", type=int, default=32, help="hidden size H (default 32)")
    p.add_argument("--input-size", type=int, default=8, help="input size I (default 8)")
    p.add_argument("--batch", type=int, default=4, help="sequences averaged over (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, inputs and loss")
    p.add_argument("--input-scale", type=float, default=1.0,
                   help="standard deviation of the random inputs (default 1)")
    p.add_argument("--spectral-radius", type=float, default=None, metavar="R",
                   help="rescale W_hh (each gate's H x H block for LSTM/GRU) to spectral radius R: "
                        "R < 1 shows vanishing, R > 1 exploding (default: PyTorch's init as is)")
    p.add_argument("--forget-bias", type=float, default=1.0,
                   help="LSTM forget-gate bias (default 1.0, the usual practice; 'nan' keeps "
                        "PyTorch's init)")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="a file written by tg.save holding a model state dict: compare its trained "
                        "recurrent cell with a fresh one of the same shape")
    p.add_argument("--out", default="gradflow.png", help="where to save the plot (PNG; default "
                   "./gradflow.png)")
    p.add_argument("--no-plot", action="store_true", help="print the numbers only")
    p.add_argument("--no-jacobian", action="store_true",
                   help="skip the per-step Jacobians (faster; no singular values)")


def run(args):
    try:
        cells = _build_cells(args)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        print(f"gradflow: {exc}", file=sys.stderr)
        return 2
    if args.spectral_radius is not None:
        for _, cell, _ in cells:
            set_spectral_radius(cell, args.spectral_radius)
    rng = np.random.default_rng(args.seed)
    results = []
    for label, cell, make_inputs in cells:
        xs = make_inputs(rng, args.steps, args.batch)
        flow = gradient_flow(cell, xs, seed=args.seed, jacobians=not args.no_jacobian)
        results.append((label, flow))
    print(report(results, args))
    if not args.no_plot:
        try:
            plot(results, args.out, title=_title(args))
        except ImportError:
            print("gradflow: matplotlib is needed for the plot (pip install matplotlib), or pass "
                  "--no-plot", file=sys.stderr)
            return 2
        print(f"plot saved to {args.out}")
    return 0


def _title(args):
    radius = "" if args.spectral_radius is None else f", W_hh spectral radius {args.spectral_radius:g}"
    return f"gradient flow back through time (T = {args.steps}, H = {args.hidden}{radius})"


def _gaussian_inputs(size, scale):
    def make(rng, T, B):
        return rng.standard_normal((T, B, size)) * scale
    return make


def _build_cells(args):
    if args.steps < 1 or args.hidden < 1 or args.batch < 1 or args.input_size < 1:
        raise ValueError("--steps, --hidden, --batch and --input-size must be positive")
    if args.checkpoint is not None:
        return _checkpoint_cells(args)
    names = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in names if c not in CELLS]
    if unknown or not names:
        raise ValueError(f"--cells: unknown cell(s) {unknown or names}; choose from {', '.join(CELLS)}")
    out = []
    for name in names:
        manual_seed(args.seed)
        cell = CELLS[name](args.input_size, args.hidden, dtype=np.float64)
        if name == "lstm" and not np.isnan(args.forget_bias):
            set_forget_bias(cell, args.forget_bias)
        out.append((name, cell, _gaussian_inputs(args.input_size, args.input_scale)))
    return out


# --- checkpoints: trained vs fresh ---------------------------------------------------------

_GATES = {1: "rnn", 3: "gru", 4: "lstm"}


def find_state_dict(obj):
    """The first dict in a loaded checkpoint whose keys include some ``...weight_hh``."""
    if isinstance(obj, dict):
        if any(isinstance(k, str) and k.endswith("weight_hh") for k in obj):
            return obj
        for v in obj.values():
            found = find_state_dict(v)
            if found is not None:
                return found
    return None


def cell_from_state_dict(state, seed=0):
    """(kind, trained cell, fresh cell, input size): a built-in cell (a Stack when there are
    several layers) rebuilt in float64 from the ``weight_ih/weight_hh/bias_*`` entries."""
    prefixes = [k[:-len("weight_hh")] for k in state if k.endswith("weight_hh")]   # layer order
    trained, fresh, kinds = [], [], set()
    for prefix in prefixes:
        W_ih, W_hh = np.asarray(state[prefix + "weight_ih"]), np.asarray(state[prefix + "weight_hh"])
        H = W_hh.shape[1]
        gates = W_hh.shape[0] // H
        if W_hh.shape[0] % H or gates not in _GATES:
            raise ValueError(f"checkpoint: {prefix}weight_hh has shape {W_hh.shape}, which is not "
                             "a built-in RNN (H, H), GRU (3H, H) or LSTM (4H, H) cell")
        kind = _GATES[gates]
        kinds.add(kind)
        cls = CELLS[kind]
        bias = prefix + "bias_ih" in state
        manual_seed(seed + len(trained))
        fresh.append(cls(W_ih.shape[1], H, bias=bias, dtype=np.float64))
        cell = cls(W_ih.shape[1], H, bias=bias, dtype=np.float64)
        own = {name: p for name, p in cell.named_parameters()}
        for name, p in own.items():
            if prefix + name not in state:
                raise KeyError(f"checkpoint: no entry {prefix + name!r} for the {kind} layer "
                               f"'{prefix.rstrip('.')}'")
            p.data = np.array(state[prefix + name], dtype=np.float64)
        trained.append(cell)
    if len(kinds) != 1:
        raise ValueError(f"checkpoint: mixed cell kinds {sorted(kinds)}")
    kind = kinds.pop()
    if len(trained) == 1:
        return kind, trained[0], fresh[0], trained[0].input_size
    return f"{kind} x{len(trained)}", Stack(trained), Stack(fresh), trained[0].input_size


def _checkpoint_cells(args):
    obj = load(args.checkpoint)
    state = find_state_dict(obj)
    if state is None:
        raise ValueError(f"checkpoint '{args.checkpoint}' holds no model state dict with a "
                         "recurrent cell (no key ending in 'weight_hh')")
    kind, trained, fresh, input_size = cell_from_state_dict(state, args.seed)
    make = _gaussian_inputs(input_size, args.input_scale)
    # A language model's first layer reads embeddings: feed rows of its table, as in training.
    table = next((np.asarray(v) for k, v in state.items() if k.endswith("embed.weight")
                  and np.ndim(v) == 2 and np.shape(v)[1] == input_size), None)
    if table is not None:
        table = table.astype(np.float64)

        def make(rng, T, B):
            return table[rng.integers(0, table.shape[0], size=(T, B))]
    return [(f"{kind} (trained)", trained, make), (f"{kind} (fresh)", fresh, make)]


# --- output ------------------------------------------------------------------------------------

def report(results, args):
    """The numbers behind the plot: ||dL/dh_t|| and mean sigma_max by distance, per cell."""
    T = args.steps
    lines = [f"gradient flow: T = {T}, batch {args.batch}, seed {args.seed}; loss on the last step "
             "only; |dL/dh_t| over the batch (1 at t = T); sigma = singular values of dh_T/dh_t "
             "(over the whole state, mean over the batch)"]
    head = f"{'T - t':>6}"
    with_jac = results and results[0][1].sigma_max.size > 0
    for label, _ in results:
        head += f"  {label + ' |dL/dh|':>22}" + (f"  {'sigma_max':>10}" if with_jac else "")
    lines.append(head)
    for d in default_distances(T):
        row = f"{d:>6}"
        for _, flow in results:
            g, smax, _ = flow.at_distance(d)
            row += f"  {g:>22.3e}" + (f"  {smax:>10.3e}" if with_jac else "")
        lines.append(row)
    for label, flow in results:
        if flow.formula_error is not None:
            lines.append(f"{label}: the tape's J_k and the seed's diag(tanh'(a_k)) W_hh agree to "
                         f"{flow.formula_error:.1e} (max abs difference)")
    return "\n".join(lines)


def plot(results, path, title=""):
    plot_gradient_flow(results, title=title).savefig(path, dpi=110)
    return path
