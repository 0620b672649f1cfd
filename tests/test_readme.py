"""The README's two commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    setup, tests = blocks[0].strip(), blocks[1].strip()
    # The main job needs the project alone; the test extra is installed by the test command.
    assert "pip install -e . " in setup and "[test]" not in setup
    assert "kdengine run recipes/classification.toml" in setup
    assert 'pip install -e ".[test]"' in tests
    assert tests in ci.splitlines()
    assert "python3 -m venv .venv" in ci
