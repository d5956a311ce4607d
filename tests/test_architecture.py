"""The package's layers as contracts (import-linter, configured in pyproject.toml): CI fails on a broken one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(lint).exists():
        pytest.fail("import-linter is not installed: run ./scripts/setup.sh --test")
    run = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout.split("Contracts:")[-1]


def test_methods_do_not_import_inference():
    """The circle issue 8 named: a method module importing inference would close it again."""
    for path in (ROOT / "src" / "modalsynth" / "methods").glob("*.py"):
        text = path.read_text()
        assert "inference" not in "".join(
            line for line in text.splitlines() if line.lstrip().startswith(("from", "import"))
        ), path
