"""Seeing inside: the graph, the tape, anomaly mode, the BPTT ledger, gradient flow in time.

    tg.inspect.to_dot(loss, names=model)      # Graphviz DOT of the graph; render(...) -> SVG/PNG
    with tg.inspect.trace() as t: ...         # print(t): every op forward and backward, in order
    with tg.detect_anomaly(): ...             # the first op making NaN/inf, its site and time step
    with tg.inspect.ledger(model) as led: ... # each parameter's gradient, split by time step
    tg.inspect.gradient_flow(cell, xs)        # ||dL/dh_t|| and dh_T/dh_t as a product of J_k

In Jupyter each of them displays itself: to_dot's result as an SVG drawing, a trace and a
ledger as HTML tables, a GradientFlow as a table (and ``.plot()`` gives a matplotlib figure).

All of them observe the tape through `tinygrad_rnn.observers.add_observer`; outside their
``with`` blocks they cost nothing.
"""

from .anomaly import AnomalyError, detect_anomaly
from .dot import DotSource, record_steps, render, to_dot
from .gradient_flow import (
    GradientFlow,
    gradient_flow,
    plot_gradient_flow,
    rnn_closed_form,
    set_forget_bias,
    set_spectral_radius,
    step_jacobian,
)
from .ledger import ledger
from .trace import TapeRecord, trace

__all__ = ["AnomalyError", "detect_anomaly", "DotSource", "record_steps", "render", "to_dot",
           "GradientFlow", "gradient_flow", "plot_gradient_flow", "rnn_closed_form",
           "set_forget_bias", "set_spectral_radius", "step_jacobian", "ledger", "TapeRecord", "trace"]
