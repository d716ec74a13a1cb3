"""docs/internals.md quotes the core: every excerpt it labels with a file is in that file."""

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
