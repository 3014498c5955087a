"""Target profiles: every shipped profile validates; each class of bad input names the file and key."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_sparse.errors import EdgeSparseError
from edge_sparse.targets import list_targets, load_target

GOOD = (Path(__file__).resolve().parent.parent / "targets" / "rpi4.toml").read_text()


def test_shipped_profiles_load():
    names = list_targets()
    assert {"rpi4", "rpi5", "android-arm64", "host"} <= set(names)
    for n in names:
        t = load_target(n)
        assert t.name == n
        assert (t.latency_budget_ms or 0) > 0 or (t.speedup or 0) > 1
        assert t.threads >= 1 and t.input_dtype == "int8" and t.runtime in ("tflite", "onnx")
        if t.latency_table is None:  # an estimate: sourced, positive and MAC-increasing
            assert t.latency_model.source.strip()
            assert 0 < t.predict_ms(1_000_000, 10) < t.predict_ms(2_000_000, 10)
    host = load_target("host")  # measured here, never coefficients fitted on another machine
    assert host.latency_table == "host" and host.latency_model is None and host.latency_budget == "1.6x"


def _write(tmp_path, text, name="rpi4"):
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "mutate, key, words",
    [
        (lambda s: s + '\nturbo = true\n', "turbo", "unknown key"),
        (lambda s: re.sub(r"(?m)^threads = .*\n", "", s), "threads", "missing key"),
        (lambda s: re.sub(r"(?m)^threads = .*$", 'threads = "four"', s), "threads", "must be an integer"),
        (lambda s: re.sub(r"(?m)^latency_budget_ms = .*$", "latency_budget_ms = -1.0", s), "latency_budget_ms", "must be > 0"),
        (lambda s: re.sub(r"(?m)^threads = .*$", "threads = 0", s), "threads", "must be > 0"),
        (lambda s: re.sub(r"(?m)^runtime = .*$", 'runtime = "coreml"', s), "runtime", "valid"),
        (lambda s: re.sub(r"(?m)^accuracy_floor_pct = .*$", "accuracy_floor_pct = 120", s), "accuracy_floor_pct", "percentage"),
        (lambda s: re.sub(r"(?m)^ms_per_mmac = .*$", "ms_per_mmac = 0", s), "latency_model.ms_per_mmac", "must be > 0"),
        (lambda s: s.replace("[latency_model]", "[latency_model]\nwarp = 1"), "latency_model.warp", "unknown key"),
        (lambda s: re.sub(r"(?m)^threads = .*$", "threads = 8", s), "threads", "cores"),
    ],
)
def test_bad_profiles_name_file_and_key(tmp_path, mutate, key, words):
    p = _write(tmp_path, mutate(GOOD))
    with pytest.raises(EdgeSparseError) as e:
        load_target(p)
    msg = str(e.value)
    assert str(p) in msg and key.split(".")[-1] in msg and words in msg, msg
    assert "\n" not in msg


def test_invalid_toml_and_name_mismatch(tmp_path):
    with pytest.raises(EdgeSparseError, match="not valid TOML"):
        load_target(_write(tmp_path, "name = ", "broken"))
    with pytest.raises(EdgeSparseError, match="must match"):
        load_target(_write(tmp_path, GOOD, "other"))


def test_unknown_target_lists_valid_ones():
    with pytest.raises(EdgeSparseError) as e:
        load_target("rpi9")
    assert "rpi4" in str(e.value) and "android-arm64" in str(e.value)


def test_cli_targets_lists_budgets(capsys):
    from edge_sparse.cli import main

    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for n in ("rpi4", "rpi5", "android-arm64", "host"):
        assert n in out
    assert str(load_target("rpi4").latency_budget_ms).rstrip("0").rstrip(".") in out
