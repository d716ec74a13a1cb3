"""docs/internals.md quotes the core: every excerpt it labels with a file is in that file, and
its layout section names every module the core imports."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_LABELLED = re.compile(r"```python\n# (tinygrad_rnn/\S+\.py)[^\n]*\n(.*?)```", flags=re.S)


def _lines(text):
    return [line.strip() for line in text.splitlines() if line.strip()]


def _excerpts():
    return _LABELLED.findall((ROOT / "docs" / "internals.md").read_text())


def test_the_walkthrough_quotes_the_core():
    files = {path for path, _ in _excerpts()}
    assert {"tinygrad_rnn/autograd.py", "tinygrad_rnn/rnn/unroll.py"} <= files


@pytest.mark.parametrize("path, excerpt", _excerpts())
def test_each_excerpt_matches_the_code(path, excerpt):
    quoted, source = _lines(excerpt), _lines((ROOT / path).read_text())
    starts = [i for i, line in enumerate(source) if line == quoted[0]]
    assert any(source[i:i + len(quoted)] == quoted for i in starts), \
        f"docs/internals.md quotes lines that are not (or no longer) in {path}:\n{excerpt}"


def _layout_section():
    text = (ROOT / "docs" / "internals.md").read_text()
    return text.split("\n## The layout", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("core", ["autograd.py", "tensor.py"])
def test_the_layout_names_every_module_the_core_imports(core):
    source = (ROOT / "tinygrad_rnn" / core).read_text()
    imported = set(re.findall(r"^from \.(\w+)", source, flags=re.M))   # .x or .engine.x
    layout = _layout_section()
    missing = sorted(m for m in imported if f"{m}.py" not in layout and f"{m}/" not in layout)
    assert not missing, f"{core} imports {missing}, which docs/internals.md's layout does not name"


def test_autograd_py_opens_with_function_and_the_walk():
    """A reader meets Function, apply and the walk first; the rest comes after them."""
    source = (ROOT / "tinygrad_rnn" / "autograd.py").read_text()
    first = re.findall(r"^(?:class|def) (\w+)", source, flags=re.M)[:5]
    assert first == ["ShapeError", "Function", "backward", "_walking", "_walk"]
