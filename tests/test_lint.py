"""The house rules that a machine can check: ruff on everything, mypy --strict on the packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean() -> None:
    res = _run(str(BIN / "ruff"), "check", "snapfs", "content", "runtime", "tests", "bench")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_strict_is_clean() -> None:
    # Files and strictness come from [tool.mypy] in pyproject.toml.
    res = _run(str(BIN / "mypy"))
    assert res.returncode == 0, res.stdout + res.stderr
