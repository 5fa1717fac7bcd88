"""The project's type check (pyproject's [tool.mypy]: check_untyped_defs over whazing_gateway,
whazing_standin and addons/), run the way CI runs it."""

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_mypy_is_clean():
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "mypy"], capture_output=True, text=True, cwd=root, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success: no issues found" in out.stdout
