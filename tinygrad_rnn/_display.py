"""How a Tensor shows itself: its text ``repr``, and HTML for Jupyter's rich display (the
``_repr_html_`` methods of Tensor, trace, ledger and GradientFlow). IPython is never imported:
a notebook calls these methods itself, and a terminal never does. Every piece of text goes
through `html.escape`. Loaded on the first display, not by ``import tinygrad_rnn``."""

from html import escape

import numpy as np

_TABLE_STYLE = "border-collapse: collapse; font-family: monospace; font-size: 12px"
_CELL_STYLE = "padding: 1px 8px; text-align: right"
_LEFT_STYLE = "padding: 1px 8px; text-align: left"


def html_table(head, rows, caption=None, cls="tinygrad-rnn"):
    """A ``<table>`` with one header row and ``rows`` (lists of cell texts), all escaped."""
    parts = [f'<table class="{escape(cls)}" style="{_TABLE_STYLE}">']
    if caption:
        parts.append(f'<caption style="text-align: left">{escape(caption)}</caption>')
    parts.append("<thead><tr>" + "".join(f'<th style="{_CELL_STYLE}">{escape(str(h))}</th>'
                                         for h in head) + "</tr></thead>")
    parts.append("<tbody>")
    for row in rows:
        parts.append("<tr>" + "".join(f'<td style="{_CELL_STYLE}">{escape(str(c))}</td>'
                                      for c in row) + "</tr>")
    parts.append("</tbody></table>")
    return "\n".join(parts)


def grad_status(t):
    """How a tensor takes part in autograd, in words."""
    if t._ctx is not None:
        return f"made by {type(t._ctx).op_name()} (grad_fn), requires grad"
    if t.requires_grad:
        return "leaf, requires_grad=True"
    return "constant (requires_grad=False)"


def tensor_repr(t):
    """``Tensor([[...]], dtype=float64, grad_fn=tanh)``: the values, and how ``t`` takes part in
    autograd (made by an op, or a leaf that requires grad)."""
    body = np.array2string(t.data, precision=4, separator=", ", threshold=40, prefix="Tensor(")
    extra = ""
    if t._ctx is not None:
        extra = f", grad_fn={type(t._ctx).op_name()}"
    elif t.requires_grad:
        extra = ", requires_grad=True"
    return f"Tensor({body}, dtype={t.dtype}{extra})"


def tensor_html(t):
    """Shape, dtype, grad status, ``.grad``, a few statistics and a short preview of ``t``."""
    data = t.data
    facts = [("shape", str(t.shape)), ("dtype", str(t.dtype)), ("autograd", grad_status(t))]
    if t.name:
        facts.insert(0, ("name", t.name))
    if t._ctx is None and t.requires_grad:
        grad = t.grad
        facts.append((".grad", "None" if grad is None else f"array {grad.shape}, "
                      f"norm {np.linalg.norm(grad):.4g}"))
    if data.size and data.dtype.kind in "biuf":
        finite = np.isfinite(data) if data.dtype.kind == "f" else np.ones(data.shape, bool)
        stats = (f"min {data.min():.4g}, max {data.max():.4g}, mean {data.mean():.4g}"
                 if finite.all() else f"{int((~finite).sum())} of {data.size} values are NaN/inf")
        facts.append(("values", stats))
    preview = np.array2string(data, precision=4, separator=", ", threshold=40, edgeitems=3)
    rows = "".join(f'<tr><th style="{_LEFT_STYLE}">{escape(k)}</th>'
                   f'<td style="{_LEFT_STYLE}">{escape(v)}</td></tr>' for k, v in facts)
    return (f'<div class="tinygrad-rnn-tensor"><strong>Tensor</strong>'
            f'<table style="{_TABLE_STYLE}">{rows}</table>'
            f'<pre style="margin: 2px 0">{escape(preview)}</pre></div>')
