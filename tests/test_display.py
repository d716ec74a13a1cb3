"""Rich display in Jupyter: each ``_repr_*_`` method is called directly and its HTML (parsed
with html.parser, tags checked to nest) or SVG (parsed with xml.etree) must hold the expected
op names and numbers. IPython is not needed for any of it."""

import shutil
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn import Tensor
from tinygrad_rnn.inspect import dot as dot_module
from tinygrad_rnn.inspect import gradient_flow, ledger, to_dot, trace

VOID_TAGS = {"br", "hr", "img", "meta", "input", "col", "wbr"}


class ParsedHTML(HTMLParser):
    """Checks that every tag is closed in order; collects the text and each table's cells."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.tables, self.text, self.captions = [], [], [], []

    def handle_starttag(self, tag, attrs):
        if tag in VOID_TAGS:
            return
        self.stack.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("")
        elif tag == "caption":
            self.captions.append("")

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self.stack and self.stack[-1] in ("td", "th"):
            self.tables[-1][-1][-1] += data
        elif self.stack and self.stack[-1] == "caption":
            self.captions[-1] += data


def parse_html(text):
    assert isinstance(text, str) and text.strip()
    page = ParsedHTML()
    page.feed(text)
    page.close()
    assert page.stack == [], f"unclosed tags {page.stack}"
    return page


def rows_of(table):
    """{first cell: the other cells} of a two-column (key, value) table."""
    return {row[0]: row[1:] for row in table}


# --- Tensor ----------------------------------------------------------------------------------

def test_tensor_html_shows_shape_dtype_grad_status_and_values():
    w = Tensor(np.array([[1.2345, -2.0], [3.5, 0.25]]), requires_grad=True, name="W_<hh> & co")
    page = parse_html(w._repr_html_())
    facts = rows_of(page.tables[0])
    assert facts["name"] == ["W_<hh> & co"]                 # escaped: text, not a tag
    assert facts["shape"] == ["(2, 2)"] and facts["dtype"] == ["float64"]
    assert facts["autograd"] == ["leaf, requires_grad=True"] and facts[".grad"] == ["None"]
    assert facts["values"] == ["min -2, max 3.5, mean 0.7461"]
    assert "1.2345" in "".join(page.text)                   # the preview

    loss = (w * 2.0).tanh().sum()
    loss.backward()
    facts = rows_of(parse_html(w._repr_html_()).tables[0])
    assert facts[".grad"] == [f"array (2, 2), norm {np.linalg.norm(w.grad):.4g}"]
    assert rows_of(parse_html(loss._repr_html_()).tables[0])["autograd"] == \
        ["made by sum (grad_fn), requires grad"]
    constant = Tensor(np.array([np.nan, 1.0], dtype=np.float32))
    facts = rows_of(parse_html(constant._repr_html_()).tables[0])
    assert facts["autograd"] == ["constant (requires_grad=False)"] and facts["dtype"] == ["float32"]
    assert facts["values"] == ["1 of 2 values are NaN/inf"] and ".grad" not in facts


def test_tensor_html_preview_is_short_for_big_tensors():
    big = Tensor(np.arange(10_000.0).reshape(100, 100))
    page = parse_html(big._repr_html_())
    preview = "".join(page.text)
    assert "..." in preview and len(big._repr_html_()) < 3000
    assert rows_of(page.tables[0])["values"] == ["min 0, max 9999, mean 5000"]


def test_tensor_text_repr_is_unchanged():
    assert repr(Tensor(np.array([1.0, 2.0]), requires_grad=True)) == \
        "Tensor([1., 2.], dtype=float64, requires_grad=True)"
    assert repr(Tensor(np.array([1.0])) * 2) == "Tensor([2.], dtype=float64)"


# --- to_dot ----------------------------------------------------------------------------------

def small_graph():
    w = Tensor(np.ones((3, 2)), requires_grad=True, name="w")
    x = Tensor(np.arange(6.0).reshape(2, 3))
    return (x @ w).tanh().sum()


def test_to_dot_is_still_a_string():
    source = to_dot(small_graph())
    assert isinstance(source, str) and source.startswith("digraph tinygrad_rnn {")
    assert source == str(source) and "matmul" in source and source.count("->") >= 4


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_to_dot_renders_as_svg_with_graphviz():
    source = to_dot(small_graph())
    svg = source._repr_svg_()
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = [el.text for el in root.iter("{http://www.w3.org/2000/svg}text")]
    for op in ("matmul", "tanh", "sum"):
        assert op in texts
    assert "(3, 2) float64" in texts                         # the parameter's shape and dtype
    assert source._repr_html_() is None                      # SVG wins in the notebook
    assert source._repr_svg_() is svg                        # rendered once


def test_to_dot_shows_its_text_without_graphviz(monkeypatch):
    monkeypatch.setattr(dot_module.shutil, "which", lambda name: None)
    source = to_dot(small_graph())
    assert source._repr_svg_() is None
    page = parse_html(source._repr_html_())
    assert "".join(page.text) == str(source)                 # the DOT text, escaped and intact


# --- trace and ledger ------------------------------------------------------------------------

def test_trace_html_is_the_tape_as_two_tables():
    w = Tensor(np.ones((3, 2)), requires_grad=True, name="w")
    x = Tensor(np.arange(6.0).reshape(2, 3))
    with trace() as t:
        loss = ((x @ w).tanh() * 2.0).sum()
        loss.backward()
    page = parse_html(t._repr_html_())
    forward, backward = page.tables
    assert forward[0] == ["#", "op", "inputs", "outputs", "dtype", "on the tape", "where"]
    assert [row[1] for row in forward[1:]] == ["matmul", "tanh", "mul", "sum"]
    assert forward[1][:4] == ["#1", "matmul", "in1 (2, 3), w (3, 2)", "t1 (2, 2)"]
    assert forward[3][2] == "t2 (2, 2), 2.0"                 # a scalar operand shows its value
    assert [row[:2] for row in backward[1:]] == [["#4", "sum"], ["#3", "mul"], ["#2", "tanh"],
                                                 ["#1", "matmul"]]
    assert backward[-1][3] == "w.grad += (3, 2)"
    assert page.captions[0] == "forward: 4 ops, in the order they ran"


def test_ledger_html_has_a_row_per_step_with_the_text_tables_numbers():
    tg.manual_seed(0)
    cell = tg.RNNCell(3, 4)
    rnn = tg.Unroll(cell)
    xs = tg.randn(5, 2, 3, seed=1)
    with ledger(cell) as led:
        ys, _ = rnn(xs)
        (ys[-1] ** 2).sum().backward()
    page = parse_html(led._repr_html_())
    (table,) = page.tables
    head, body = table[0], table[1:]
    assert head == ["step", "|dL/dh_t|", "|dL/dweight_ih|", "|dL/dweight_hh|", "|dL/dbias_ih|",
                    "|dL/dbias_hh|", "saturated"]
    assert [row[0] for row in body] == ["0", "1", "2", "3", "4", "outside", "sum=.grad"]
    w_hh = head.index("|dL/dweight_hh|")
    norms = led.param_grad_norms("weight_hh")
    assert [float(row[w_hh]) for row in body[:5]] == pytest.approx(norms, rel=1e-3)
    assert float(body[-1][w_hh]) == pytest.approx(np.linalg.norm(cell.weight_hh.grad), rel=1e-3)
    assert body == [line.split() for line in led.table().splitlines()[1:]]   # same as the text


def test_an_empty_ledger_says_so_in_html():
    with ledger() as led:
        pass
    assert "nothing recorded" in "".join(parse_html(led._repr_html_()).text)


# --- gradient flow ---------------------------------------------------------------------------

def rnn_flow(T=6):
    tg.manual_seed(0)
    cell = tg.RNNCell(2, 3)
    return gradient_flow(cell, np.random.default_rng(0).standard_normal((T, 2, 2)))


def test_gradient_flow_html_table():
    flow = rnn_flow()
    page = parse_html(flow._repr_html_())
    (table,) = page.tables
    assert table[0] == ["T - t", "|dL/dh_t|", "sigma_max", "sigma_min"]
    assert [row[0] for row in table[1:]] == ["0", "1", "2", "5", "6"]
    g, smax, _ = flow.at_distance(5)
    assert table[4][1:3] == [f"{g:.3e}", f"{smax:.3e}"]
    assert "diag(tanh'(a_k)) W_hh" in page.captions[0]       # the formula checked against the tape


def test_gradient_flow_plot_returns_a_figure_of_the_numbers():
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    flow = rnn_flow()
    fig = flow.plot(label="rnn", title="vanishing")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    (line,) = fig.axes[0].get_lines()
    assert line.get_label() == "rnn"
    np.testing.assert_array_equal(line.get_xdata(), flow.distance)
    np.testing.assert_allclose(line.get_ydata(), flow.grad_norms)
    np.testing.assert_allclose(fig.axes[1].get_lines()[0].get_ydata(), flow.sigma_max.mean(axis=1))
    assert fig.axes[0].get_yscale() == "log"
    assert fig._suptitle.get_text() == "vanishing"
    png = fig._repr_png_()                                       # a notebook draws it, pyplot or not
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


def test_gradient_flow_plot_without_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)     # imports fail, as without it
    monkeypatch.setitem(sys.modules, "tinygrad_rnn.inspect._figure", None)
    with pytest.raises(ImportError, match=r"tinygrad-rnn\[plot\]"):
        rnn_flow().plot()
