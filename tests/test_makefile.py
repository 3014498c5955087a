"""The Makefile's entry points expand to the commands the README promises (dry runs: nothing is executed)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _dry(*args: str) -> str:
    r = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_study_sparsity_list_reaches_the_cli_whole():
    # $(or $(SPARSITY),0,0.3,...) once split the default list at its commas and studied sparsity 0 alone
    assert "--sparsity 0,0.3,0.5,0.7 --seeds 0,1,2" in _dry("study", "TARGET=rpi4")
    assert "--sparsity 0,0.5 --seeds 0,1,2\n" in _dry("study", "TARGET=rpi4", "SPARSITY=0,0.5")
