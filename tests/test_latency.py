"""The latency model and its calibration from an on-device harness report."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_sparse.errors import EdgeSparseError
from edge_sparse.latency import calibrate, percentiles
from edge_sparse.targets import load_target

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def targets_copy(tmp_path, monkeypatch):
    d = tmp_path / "targets"
    shutil.copytree(ROOT / "targets", d)
    monkeypatch.setenv("EDGE_SPARSE_TARGETS", str(d))
    return d


def _report(tmp_path, p90=1.5, macs=4_000_000, layers=10, target="rpi4"):
    p = tmp_path / "bench.json"
    p.write_text(json.dumps({"target": target, "latency_ms": {"p90": p90}, "model": {"macs": macs, "layers": layers},
                             "device": {"cpu_model": "Cortex-A72"}}))
    return p


def test_calibrate_makes_prediction_match_the_device(targets_copy, tmp_path):
    before = load_target("rpi4")
    r = calibrate("rpi4", _report(tmp_path))
    after = load_target("rpi4")
    assert after.predict_ms(4_000_000, 10) == pytest.approx(1.5, rel=1e-4)
    assert r["scale"] == pytest.approx(1.5 / before.predict_ms(4_000_000, 10))
    # the split between fixed / per-layer / per-MAC cost is kept
    assert after.latency_model.ms_per_mmac / after.latency_model.ms_per_layer == pytest.approx(
        before.latency_model.ms_per_mmac / before.latency_model.ms_per_layer, rel=1e-4)
    text = (targets_copy / "rpi4.toml").read_text()
    assert "Calibrated" in text and "# Raspberry Pi 4" in text  # comments survive
    assert after.latency_budget_ms == before.latency_budget_ms


def test_calibrate_bad_reports(targets_copy, tmp_path):
    with pytest.raises(EdgeSparseError, match="no such harness report"):
        calibrate("rpi4", tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"latency_ms": {}}))
    with pytest.raises(EdgeSparseError, match="not a bench.py --json report"):
        calibrate("rpi4", bad)
    with pytest.raises(EdgeSparseError, match="for target 'rpi5'"):
        calibrate("rpi4", _report(tmp_path, target="rpi5"))
    with pytest.raises(EdgeSparseError, match="> 0"):
        calibrate("rpi4", _report(tmp_path, p90=0))


def test_percentiles():
    p = percentiles([1.0] * 89 + [2.0] * 11)
    assert p["p50"] == 1.0 and p["p90"] > 1.0 and p["max"] == 2.0 and p["n"] == 100
