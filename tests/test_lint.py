"""The project's lint (pyproject's [tool.ruff]): pyflakes everywhere, and no blocking call inside
a coroutine of the gateway, whose event loop is the proxy's."""

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_ruff_is_clean():
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--quiet", str(root)],
                         capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
