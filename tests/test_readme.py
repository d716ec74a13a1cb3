"""The README's Python blocks run as written, and its two commands stay the CI's."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_python_blocks_run_and_compute_what_they_claim():
    blocks = _python_blocks()
    assert len(blocks) >= 2
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["W"].grad.shape == (4, 3)
    assert namespace["ys"].shape == (20, 8, 16)
    assert namespace["h_T"].shape == (8, 16)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(line for line in readme.splitlines() if "pytest" in line and "pip install" in line)
    setup, run = test_command.rsplit(" && ", 1)
    assert setup in ci and run in ci
