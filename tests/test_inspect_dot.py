"""to_dot / render: the graph behind a tensor as Graphviz."""

import re
import shutil
import subprocess

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn.inspect import dot as dot_module
from tinygrad_rnn.inspect import record_steps, render, to_dot

HAVE_DOT = shutil.which("dot") is not None


def reachable_ops(t):
    """The tape nodes behind t, found independently of to_dot."""
    seen, stack = set(), [t._ctx]
    while stack:
        ctx = stack.pop()
        if ctx is None or ctx in seen:
            continue
        seen.add(ctx)
        stack.extend(p._ctx for p in ctx.parents)
    return seen


def op_boxes(text):
    return re.findall(r'^\s*(n\d+) \[shape=box, label="([^"]*)"\];$', text, flags=re.M)


def small_model():
    tg.manual_seed(0)
    rnn = tg.Unroll(tg.GRUCell(3, 4))
    readout = tg.nn.Linear(4, 2)
    xs = tg.randn(5, 2, 3, seed=0)
    return rnn, readout, xs


def test_one_box_per_op_with_name_shape_and_dtype():
    rnn, readout, xs = small_model()
    ys, _ = rnn(xs)
    loss = readout(ys).sum()
    text = to_dot(loss, names={"W_out": readout.weight, **dict(rnn.named_parameters())})
    boxes = op_boxes(text)
    ops = reachable_ops(loss)
    assert len(boxes) == len(ops)
    labels = sorted(label.split("\\n")[0] for _, label in boxes)
    assert labels == sorted(type(c).op_name() for c in ops)
    assert 'label="sum\\n() float64"' in text
    assert 'label="linear\\n(5, 2, 2) float64"' in text        # the readout over all steps
    # Parameters by name, marked as requiring grad; the input sequence slices are grey constants.
    assert 'label="cell.weight_hh\\n(12, 4) float64\\nrequires grad"' in text
    assert 'label="W_out\\n(2, 4) float64\\nrequires grad"' in text
    assert text.count("no grad") >= 5
    assert text.startswith("digraph") and text.rstrip().endswith("}")


def test_edges_follow_the_data():
    x = tg.Tensor(np.ones((2, 3)), requires_grad=True, name="x")
    y = (x.tanh() * 2.0).sum()
    text = to_dot(y)
    ids = {label.split("\\n")[0]: nid for nid, label in op_boxes(text)}
    x_id = re.search(r'^\s*(n\d+) \[shape=ellipse.*label="x\\n', text, flags=re.M).group(1)
    assert f"{x_id} -> {ids['tanh']};" in text
    assert f"{ids['tanh']} -> {ids['mul']};" in text
    assert f"{ids['mul']} -> {ids['sum']};" in text
    assert re.search(rf"{ids['sum']} -> out0;", text)


def test_multi_output_edges_say_which_output():
    x = tg.Tensor(np.ones((2, 4)), requires_grad=True)
    a, b = x.chunk(2)
    text = to_dot((a * b).sum())
    assert '[label="[0] (2, 2)"]' in text and '[label="[1] (2, 2)"]' in text


def test_a_100_step_unroll_collapses_to_one_box_per_step():
    tg.manual_seed(0)
    rnn = tg.Unroll(tg.LSTMCell(2, 3))
    with record_steps():
        ys, _ = rnn(tg.randn(100, 1, 2, seed=0))
    loss = ys.sum()
    full = to_dot(loss, names=rnn)
    collapsed = to_dot(loss, names=rnn, collapse_steps=True)
    assert len(op_boxes(full)) == len(reachable_ops(loss))
    assert full.count("subgraph cluster_step_") == 100            # uncollapsed: clusters per step
    steps = re.findall(r'^\s*step(\d+) \[shape=box3d', collapsed, flags=re.M)
    assert sorted(map(int, steps)) == list(range(100))
    assert [label.split("\\n")[0] for _, label in op_boxes(collapsed)] == ["stack", "sum"]
    assert 'label="time step 7\\n13 ops: ' in collapsed
    for t in range(99):
        assert f"step{t} -> step{t + 1};" in collapsed            # the recurrence, step to step
    assert len(collapsed) < len(full) / 4


def test_collapse_needs_recorded_steps_and_a_freed_graph_is_an_error():
    rnn, _, xs = small_model()
    ys, _ = rnn(xs)
    with pytest.raises(ValueError, match="record_steps"):
        to_dot(ys.sum(), collapse_steps=True)
    loss = ys.sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="freed by backward"):
        to_dot(loss)
    with pytest.raises(TypeError, match="expected a Tensor"):
        to_dot("loss")


@pytest.mark.skipif(not HAVE_DOT, reason="the Graphviz 'dot' program is not installed")
def test_the_dot_text_parses_with_graphviz():
    rnn, readout, xs = small_model()
    with record_steps():
        ys, _ = rnn(xs)
    loss = readout(ys).sum()
    for collapse in (False, True):
        text = to_dot(loss, names=rnn, collapse_steps=collapse)
        # dot exits non-zero (and says why on stderr) on any syntax error
        done = subprocess.run(["dot", "-Tsvg"], input=text.encode(), capture_output=True, check=False)
        assert done.returncode == 0, done.stderr.decode()
        assert b"<svg" in done.stdout


@pytest.mark.skipif(not HAVE_DOT, reason="the Graphviz 'dot' program is not installed")
def test_render_writes_svg_and_png(tmp_path):
    rnn, _, xs = small_model()
    ys, _ = rnn(xs)
    loss = ys.sum()
    render(loss, tmp_path / "g.svg", names=rnn)
    render(loss, tmp_path / "g.png", names=rnn)
    assert b"<svg" in (tmp_path / "g.svg").read_bytes()
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_without_dot_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(dot_module.shutil, "which", lambda name: None)
    x = tg.Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(RuntimeError, match="apt-get install graphviz"):
        render(x.sum(), tmp_path / "g.svg")
    with pytest.raises(ValueError, match="cannot tell the format"):
        render(x.sum(), tmp_path / "g.txt")
