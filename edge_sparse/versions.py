"""What a bundle records about the software that built it: package versions and the git commit.

Kept apart from pipeline.py so that bundle.py (which the pipeline calls) does not import the pipeline back.
"""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Optional


def package_versions(dists) -> dict:
    """{distribution: its installed version, or None where it is not installed}, in the order given."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in dists:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def environment_versions() -> dict:
    return {"python": platform.python_version(),
            **package_versions(("torch", "tensorflow", "onnx", "onnxruntime", "ai-edge-litert", "onnx2tf", "torch-pruning",
                                "numpy"))}


def git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
