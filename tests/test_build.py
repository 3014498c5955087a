"""End to end: a QUICK build for rpi4 on real Fashion-MNIST makes a complete bundle whose harness
runs; re-runs hit the cache; bad input and unmet budgets fail clearly with nothing half-written."""
from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_sparse import pipeline
from edge_sparse.config import BuildConfig
from edge_sparse.errors import BudgetError, EdgeSparseError

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
DESIGN_FILES = {"model.tflite", "model.onnx", "model_fp32.onnx", "labels.txt", "metadata.json", "eval.npz",
                "bench.py", "report.md", "manifest.json"}


def _bench(bundle: Path, *args, timeout=240):
    return subprocess.run([sys.executable, "bench.py", "--runs", "50", "--warmup-runs", "5", *args],
                          cwd=bundle, capture_output=True, text=True, timeout=timeout)


def _roomy_copy(bundle: Path, dest: Path) -> Path:
    """A copy of `bundle` whose latency budget no run can miss.

    bench.py's verdict compares wall-clock latency on this shared, noisy host with the target's budget; a test
    that needs exit 0 must not depend on the machine's load (CI once measured p90 0.81 ms vs 0.70 ms on ORT).
    """
    shutil.copytree(bundle, dest)
    meta = json.loads((dest / "metadata.json").read_text())
    meta["latency_ms"]["budget"] = 1e3
    _write_meta(dest, meta)
    return dest


def _write_meta(d: Path, meta: dict) -> None:
    """Edit a bundle's metadata.json as a rebuild would: bench.py checks it against manifest.json."""
    from edge_sparse import bundle

    (d / "metadata.json").write_text(json.dumps(meta))
    bundle.write_manifest(d)


def test_bundle_is_complete(quick):
    d = quick["bundle"]
    meta = json.loads((d / "metadata.json").read_text())
    assert (d / "model.tflite").stat().st_size / 1024 < meta["dense"]["size_kb_int8"]  # really smaller, not masked
    names = {p.name for p in d.iterdir()}
    assert DESIGN_FILES <= names and {"candidates.png", "robustness.png", "training.png"} <= names
    manifest = json.loads((d / "manifest.json").read_text())["files"]
    from edge_sparse import _io, bundle

    assert set(manifest) == names - {"manifest.json"}
    assert all(_io.sha256_file(d / n) == e["sha256"] for n, e in manifest.items())
    assert bundle.check(d) == []
    meta = json.loads((d / "metadata.json").read_text())
    for k in ("target", "dataset", "labels", "input", "output", "model", "dense", "sparsity", "accuracy", "latency_ms",
              "versions", "build"):
        assert k in meta, k
    for k in ("shape", "layout", "dtype", "mean", "std", "scale", "zero_point"):
        assert k in meta["input"], k
    assert meta["input"]["dtype"] == "int8" and meta["output"]["dtype"] == "int8" and meta["input"]["layout"] == "NHWC"
    for k in ("torch_fp32_dense", "torch_fp32", "tflite_int8", "onnx_int8", "n_eval"):
        assert k in meta["accuracy"], k
    assert meta["latency_ms"]["predicted_p90"] <= meta["latency_ms"]["budget"]
    assert meta["model"]["macs"] < meta["dense"]["macs"] and 0 < meta["sparsity"] < 1
    assert (d / "labels.txt").read_text().splitlines() == meta["labels"]
    with np.load(d / "eval.npz") as z:
        assert z["x"].dtype == np.uint8 and z["x"].shape[1:] == (28, 28, 1) and len(z["x"]) == meta["accuracy"]["n_eval"]
    from edge_sparse.export import metadata

    assert metadata.read((d / "model.tflite").read_bytes()) == meta
    report = (d / "report.md").read_text()
    assert "budget" in report and "candidates.png" in report and "| model.tflite | int8 |" in report
    from PIL import Image

    with Image.open(d / "candidates.png") as im:
        assert im.size[0] > 300


def test_rerun_uses_cache(quick, tmp_path):
    d = quick["dir"]
    before = (quick["bundle"] / "model.onnx").read_bytes()  # (model.tflite embeds per-bundle metadata)
    b = pipeline.run("rpi4", BuildConfig.quick(), out_dir=tmp_path / "dist", cache_dir=d / "cache")
    assert (tmp_path / "dist" / "rpi4" / "model.onnx").read_bytes() == before  # the same model, not retrained
    assert all(b.times[s] == 0.0 for s in pipeline.STAGES if s != "bundle")
    # the bundle of a cached re-run still reports the memory of the run that trained (torch + data: > 200 MiB)
    meta = json.loads((tmp_path / "dist" / "rpi4" / "metadata.json").read_text())
    assert meta["build"]["peak_rss_mb_when_built"] > 200
    assert b.results["verify"]["accuracy"] == quick["b"].results["verify"]["accuracy"]


def test_same_seed_same_result(quick, tmp_path):
    b = pipeline.run("rpi4", BuildConfig.quick(), out_dir=tmp_path / "dist", cache_dir=tmp_path / "cache",
                     until_stage="search")
    a = quick["b"]
    assert b.results["search"]["chosen"] == a.results["search"]["chosen"]
    assert b.results["train"]["val_acc"] == a.results["train"]["val_acc"]
    assert not (tmp_path / "dist").exists()


def test_harness_within_budget_and_accuracy_matches(quick, tmp_path):
    d = _roomy_copy(quick["bundle"], tmp_path / "b")
    meta = json.loads((d / "metadata.json").read_text())
    r = _bench(d, "--json", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["runtime"] == "ai_edge_litert" and rep["xnnpack"] is True and rep["within_budget"] is True
    assert rep["accuracy_top1"] == pytest.approx(meta["accuracy"]["tflite_int8"], abs=1e-6)
    lat = rep["latency_ms"]
    assert lat["n"] >= 50 and lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert rep["peak_rss_mb"] > 10 and rep["init_ms"] > 0 and rep["device"]["cores"] >= 1
    assert "verdict: WITHIN" in r.stdout
    o = _bench(d, "--runtime", "onnxruntime", "--json", str(tmp_path / "o.json"))
    assert o.returncode == 0, o.stderr
    assert json.loads((tmp_path / "o.json").read_text())["accuracy_top1"] == pytest.approx(meta["accuracy"]["onnx_int8"], abs=1e-6)


def test_harness_warns_when_xnnpack_is_missing(quick, tmp_path):
    r = _bench(_roomy_copy(quick["bundle"], tmp_path / "b"), "--runtime", "tflite_runtime", "--runs", "5")
    assert r.returncode == 0, r.stdout + r.stderr  # a verdict (within a budget no run can miss), not a crash
    assert "XNNPACK did not take this graph" in r.stdout and "ai-edge-litert" in r.stdout


def test_harness_bad_inputs(quick, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(quick["bundle"], b)
    for args, words in ((["--runtime", "coreml"], "unknown --runtime"), (["--threads", "0"], "--threads must be >= 1"),
                        (["--runtime", "onnxruntime", "--model", "model.tflite"], "runs .onnx")):
        r = _bench(b, *args)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    meta = json.loads((b / "metadata.json").read_text())
    # edited without a rebuild -> the manifest no longer matches: refused
    (b / "metadata.json").write_text(json.dumps({**meta, "threads": 1}))
    r = _bench(b)
    assert r.returncode == 2 and "metadata.json: sha256" in r.stderr
    # over budget -> exit 1
    meta["latency_ms"]["budget"] = 1e-6
    _write_meta(b, meta)
    r = _bench(b)
    assert r.returncode == 1 and "verdict: OVER" in r.stdout
    # budget missing -> exit 2
    del meta["latency_ms"]["budget"]
    _write_meta(b, meta)
    r = _bench(b)
    assert r.returncode == 2 and "latency_ms.budget" in r.stderr
    meta["latency_ms"]["budget"] = 1e3
    _write_meta(b, meta)
    # eval.npz missing -> latency only, says so
    (b / "eval.npz").unlink()
    man = json.loads((b / "manifest.json").read_text())
    del man["files"]["eval.npz"]
    (b / "manifest.json").write_text(json.dumps(man))
    r = _bench(b)
    assert r.returncode == 0 and "latency only" in r.stdout
    # tampered model -> refused before loading
    data = bytearray((b / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "model.tflite").write_bytes(bytes(data))
    r = _bench(b)
    assert r.returncode == 2 and "sha256" in r.stderr and "Traceback" not in r.stderr
    # truncated model whose manifest was updated to match -> the runtime refuses, cleanly
    (b / "model.tflite").write_bytes(bytes(data[:2000]))
    from edge_sparse import bundle

    shutil.copyfile(quick["bundle"] / "eval.npz", b / "eval.npz")
    bundle.write_manifest(b)
    r = _bench(b)
    assert r.returncode == 2 and "truncated" in r.stderr and "Traceback" not in r.stderr


def test_harness_is_standalone(quick, tmp_path):
    src = (quick["bundle"] / "bench.py").read_text()
    assert not re.search(r"^\s*(import|from)\s+edge_sparse", src, re.M)  # format names mention it; imports must not
    b = _roomy_copy(quick["bundle"], tmp_path / "elsewhere")
    r = subprocess.run([sys.executable, "-I", "bench.py", "--runs", "10"], cwd=b, capture_output=True, text=True,
                       timeout=120, env={"PATH": os.environ["PATH"]})
    assert r.returncode == 0, r.stderr


def _edited_rpi4(tmp_path, monkeypatch, old: str, new: str) -> None:
    """A copy of targets/ whose rpi4.toml has `old` replaced by `new`, made the active profile set."""
    tdir = tmp_path / "targets"
    shutil.copytree(ROOT / "targets", tdir)
    p = tdir / "rpi4.toml"
    assert old in p.read_text()
    p.write_text(p.read_text().replace(old, new))
    monkeypatch.setenv("EDGE_SPARSE_TARGETS", str(tdir))


def test_unreachable_budget_fails_listing_candidates(quick, tmp_path, monkeypatch):
    _edited_rpi4(tmp_path, monkeypatch, "latency_budget_ms = 1.00", "latency_budget_ms = 0.01")
    with pytest.raises(BudgetError) as e:
        pipeline.run("rpi4", BuildConfig.quick(), out_dir=tmp_path / "dist", cache_dir=quick["dir"] / "cache")
    msg = str(e.value)
    assert "no width allocation meets target 'rpi4'" in msg and "(0.01 ms, less a 23% margin for prediction error)" in msg
    assert "narrowest allowed widths predict" in msg and "rpi4.toml" in msg
    assert not (tmp_path / "dist").exists()
    from edge_sparse.cli import main

    assert main(["build", "--target", "rpi4", "--quick", "--out", str(tmp_path / "dist"),
                 "--cache", str(quick["dir"] / "cache")]) == 3


def test_interrupted_stage_leaves_no_cache_entry(quick, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(quick["dir"] / "cache", cache)
    victim = next(p for p in cache.iterdir() if p.name.startswith("robustness-"))
    shutil.rmtree(victim)

    def boom(b, d):
        (d / "partial.json").write_text("{")
        raise KeyboardInterrupt

    monkeypatch.setitem(pipeline.STAGE_FNS, "robustness", boom)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run("rpi4", BuildConfig.quick(), out_dir=tmp_path / "dist", cache_dir=cache)
    assert not victim.exists() and not any(p.name.endswith(".tmp") for p in cache.iterdir())
    monkeypatch.undo()
    b = pipeline.run("rpi4", BuildConfig.quick(), out_dir=tmp_path / "dist", cache_dir=cache)
    assert b.times["train"] == b.times["export"] == 0.0 and b.times["robustness"] > 0
    assert (tmp_path / "dist" / "rpi4" / "model.tflite").is_file()


def test_unwritable_dist(quick, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(EdgeSparseError, match="cannot write"):
        pipeline.run("rpi4", BuildConfig.quick(), out_dir=blocker / "dist", cache_dir=quick["dir"] / "cache")


def test_cli_unknown_target_and_stage(capsys):
    from edge_sparse.cli import main

    assert main(["build", "--target", "rpi9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown target 'rpi9'") and "rpi4" in err
    assert main(["build", "--target", "rpi4", "--until", "polish"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "invalid choice: 'polish'" in err[0] and "verify" in err[0]


def test_verify_arm_same_top1_within_one_lsb(quick, capsys):
    """The bundle on a real aarch64 userland under qemu-user: int8 outputs within 1 LSB of the host's, top-1
    identical except on near-ties (an AVX2 host saw tflite-runtime flip one image whose two best logits tie).

    Not bit-identity: XNNPACK's int8 kernels differ per x86 ISA (AVX2 vs AVX-512 VNNI) and may round 1 LSB apart.
    """
    import re

    from edge_sparse import arm

    try:
        arm.ensure_tools()
    except arm.Fail as e:
        pytest.skip(f"qemu-user/mmdebstrap unavailable here: {e}")
    rc = arm.main(["--bundle", str(quick["bundle"]), "--target", "rpi4", "--eval-limit", "100",
                   "--sysroot", str(ROOT / "build" / "arm64-sysroot")])
    captured = capsys.readouterr()
    out = captured.out
    line = next((l for l in out.splitlines() if l.startswith("[ai_edge_litert] aarch64 (cortex-a72, emulated)")), None)
    assert line is not None, out + captured.err
    assert "-> OK (rule: int8 within 1 LSB; top-1 identical except near-ties" in line, line
    m = re.search(r"(\d+) of (\d+) values differ, max \|diff\| ([0-9.]+)", line)
    if m:  # the count is stated, and what differs stays within the stated 1 LSB
        assert int(m.group(1)) <= int(m.group(2)) and float(m.group(3)) <= 1, line
    else:
        assert "bit-identical" in line, line
    assert rc == 0, out


def test_retrain_reference_has_the_same_training_budget(quick, tmp_path):
    """reference="retrain": "dense vs shipped" compares models trained equally long; the sparsity-0 point
    fine-tunes too; "warmup" is the train stage's model as is, and says the comparison is unequal."""
    from edge_sparse import models

    cache = quick["dir"] / "cache"
    cfg = BuildConfig.quick(reference="retrain")
    b = pipeline.run("rpi4", cfg, out_dir=tmp_path / "dist", cache_dir=cache)
    assert b.times["train"] == b.times["search"] == 0.0  # shared with the QUICK build
    assert b.keys["finetune"] != quick["b"].keys["finetune"]  # the reference mode decides a sparsity-0 fine-tune
    ref = b.results["reference"]
    assert ref["kind"] == "retrain" and ref["same_budget"] and ref["epochs"] == cfg.train.epochs + cfg.finetune.epochs
    assert len(ref["history"]) == cfg.finetune.epochs
    meta = json.loads((tmp_path / "dist" / "rpi4" / "metadata.json").read_text())
    assert meta["dense"]["epochs"] == ref["epochs"] and "same" in meta["dense"]["reference"]
    warm = models.load(b.dirs["train"] / "dense")[0].state_dict()
    dense = models.load(b.dirs["reference"] / "dense")[0].state_dict()
    assert not all(torch.equal(warm[k], dense[k]) for k in warm)
    # --no-dense-reference (= warmup): the train stage's model itself, and the metadata says the comparison is unequal
    b2 = pipeline.run("rpi4", BuildConfig.quick(reference="warmup"), out_dir=tmp_path / "dist", cache_dir=cache,
                      until_stage="reference")
    assert b2.times["train"] == 0.0 and not b2.results["reference"]["same_budget"]
    dense2 = models.load(b2.dirs["reference"] / "dense")[0].state_dict()
    assert all(torch.equal(warm[k], dense2[k]) for k in warm)
    # sparsity 0 (study point): fine-tuned like every other point, and that run is the reference
    b3 = pipeline.run("rpi4", BuildConfig.quick(fixed_sparsity=0.0, reference="retrain"), out_dir=tmp_path / "dist",
                      cache_dir=cache, until_stage="reference")
    assert b3.results["finetune"]["final"]["sparsity"] == 0 and len(b3.results["finetune"]["history"]) == cfg.finetune.epochs
    same = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert same(b3.results["reference"]["history"]) == same(b3.results["finetune"]["history"])


def test_teacher_reference_is_the_dense_model_the_pruning_started_from(quick, tmp_path):
    """The default reference ("teacher"): the train stage's dense model is both the KD teacher and the report's
    reference — nothing more is trained for it, its weights are the train stage's, the report says what it is,
    and a sparsity-0 point (nothing pruned) is not fine-tuned further."""
    from edge_sparse import bundle, models

    b, cfg = quick["b"], BuildConfig.quick()
    assert cfg.reference == "teacher" and cfg.finetune.kd_alpha > 0
    ref = b.results["reference"]
    assert ref["kind"] == "teacher" and not ref["same_budget"] and ref["epochs"] == cfg.train.epochs
    assert ref["history"] == b.results["train"]["history"]
    warm = models.load(b.dirs["train"] / "dense")[0].state_dict()
    dense = models.load(b.dirs["reference"] / "dense")[0].state_dict()
    assert all(torch.equal(warm[k], dense[k]) for k in warm)
    words = bundle._reference_words(b)
    assert "the dense model the pruning started from" in words and f"trained {cfg.train.epochs} epochs" in words
    assert "distilling from it" in words
    meta = json.loads((quick["bundle"] / "metadata.json").read_text())
    assert meta["dense"]["reference"] == words
    b0 = pipeline.run("rpi4", BuildConfig.quick(fixed_sparsity=0.0), out_dir=tmp_path / "dist",
                      cache_dir=quick["dir"] / "cache", until_stage="finetune")
    assert b0.results["finetune"]["history"] == []


def test_study_two_points_resumes_per_point(quick, tmp_path):
    from edge_sparse.study import run_study, summarize, verdict

    out = tmp_path / "study"
    kw = dict(seeds=[0], attacks=["pgd", "apgd-ce"], eps=[2.0], robust_n=100, steps=3, cache_dir=quick["dir"] / "cache")
    res = run_study("rpi4", BuildConfig.quick(), [0, 0.5], out, **kw)
    rows = res["rows"]
    assert [r["sparsity"] for r in rows] == [0.0, 0.5]
    assert rows[1]["macs"] < rows[0]["macs"] and rows[1]["predicted_p90_ms"] < rows[0]["predicted_p90_ms"]
    assert rows[0]["host_p50_ms_1t"] > 0 and rows[0]["test_n"] == 500
    assert set(rows[0]["robust"]) == {"pgd_fp32_eps2", "pgd_int8_eps2", "apgd-ce_fp32_eps2", "apgd-ce_int8_eps2"}
    for r in rows:  # the attacks do something: robust accuracy below clean accuracy on the same images
        clean = r["clean_fp32_robust_set"]
        assert r["robust"]["apgd-ce_fp32_eps2"] < clean and r["robust"]["pgd_fp32_eps2"] < clean
    names = {p.name for p in out.iterdir()}
    assert {"study.csv", "study.json", "study.md", "accuracy_vs_latency.png", "robust_vs_sparsity.png",
            "difference_vs_dense.png", "points"} <= names
    md = (out / "study.md").read_text()
    assert "## Verdict" in md and "95 %" in md
    saved = json.loads((out / "study.json").read_text())  # the verdict is reproducible from the committed JSON
    s = saved["settings"]
    assert verdict(summarize(saved["rows"], s["attacks"], s["eps"]), s["attacks"], s["eps"]) == saved["verdict"]
    # interrupted after the first point: the re-run keeps the finished point and redoes only the missing one
    done = out / "points" / "sparsity0-seed0.json"
    before = done.stat().st_mtime_ns
    (out / "points" / "sparsity0.5-seed0.json").unlink()
    (out / "study.json").unlink()
    res2 = run_study("rpi4", BuildConfig.quick(), [0, 0.5], out, **kw)
    assert done.stat().st_mtime_ns == before and (out / "study.json").is_file()
    assert res2["rows"][1]["robust"] == rows[1]["robust"]  # same seed, same cached model: the same numbers
    # a point made under other settings is recomputed, not mixed in: a third run with another eps redoes both
    res3 = run_study("rpi4", BuildConfig.quick(), [0, 0.5], out, **{**kw, "eps": [4.0]})
    assert done.stat().st_mtime_ns != before and set(res3["rows"][0]["robust"]) == {
        "pgd_fp32_eps4", "pgd_int8_eps4", "apgd-ce_fp32_eps4", "apgd-ce_int8_eps4"}
    assert (out / "study.csv").read_text().count("\n") == 3  # header + one row per sparsity


def test_harness_without_any_runtime_says_what_to_install(quick, tmp_path):
    shadow = tmp_path / "shadow"
    for name in ("ai_edge_litert", "tflite_runtime", "tensorflow", "onnxruntime"):
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text("raise ImportError('not installed (test shadow)')\n")
    r = subprocess.run([sys.executable, "bench.py"], cwd=quick["bundle"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(shadow)})
    assert r.returncode == 2 and "no runtime for model.tflite is installed" in r.stderr and "pip install" in r.stderr
    assert "Traceback" not in r.stderr


def test_robust_accuracy_floor_fails_the_build(quick, tmp_path, monkeypatch):
    _edited_rpi4(tmp_path, monkeypatch, "channel_multiple = 8",
                 "channel_multiple = 8\nrobust_eps = 8.0\nrobust_accuracy_floor_pct = 99.0")
    with pytest.raises(pipeline.GateError, match=r"robust accuracy .* at eps 8/255 is below rpi4's floor 99.0%"):
        pipeline.run("rpi4", BuildConfig.quick(), out_dir=tmp_path / "dist", cache_dir=quick["dir"] / "cache")
    assert not (tmp_path / "dist").exists()


def test_tflite_support_metadata_round_trip(quick):
    """labels, normalisation and our JSON travel inside model.tflite, readable by TFLite Support."""
    from edge_sparse.export import metadata

    d = quick["bundle"]
    meta = json.loads((d / "metadata.json").read_text())
    got = metadata.read_support_metadata(d / "model.tflite")
    assert got["files"] == ["labels.txt"] and got["labels"].splitlines() == meta["labels"]
    tensor = got["metadata"]["subgraph_metadata"][0]["input_tensor_metadata"][0]
    norm = next(u for u in tensor["process_units"] if u["options_type"] == "NormalizationOptions")["options"]
    assert norm["mean"][0] == pytest.approx(meta["input"]["mean"][0] * 255, rel=1e-5)
    assert norm["std"][0] == pytest.approx(meta["input"]["std"][0] * 255, rel=1e-5)
    assert metadata.read((d / "model.tflite").read_bytes()) == meta  # our entry survives the populator


def test_cli_finetune_recipe_flags(capsys):
    """--finetune-lr / --kd-alpha reach the fine-tune config; out-of-range values are one clear error."""
    import argparse

    from edge_sparse.cli import _build_args, _config, main

    p = argparse.ArgumentParser()
    _build_args(p)
    cfg = _config(p.parse_args(["--target", "rpi4", "--epochs", "3", "--finetune-epochs", "6",
                                "--finetune-lr", "0.05", "--kd-alpha", "0"]))
    assert (cfg.train.epochs, cfg.finetune.epochs, cfg.finetune.lr, cfg.finetune.kd_alpha) == (3, 6, 0.05, 0.0)
    assert _config(p.parse_args(["--target", "rpi4", "--no-dense-reference"])).reference == "warmup"
    assert _config(p.parse_args(["--target", "rpi4", "--reference", "retrain"])).reference == "retrain"
    c = _config(p.parse_args(["--target", "rpi4", "--augment", "crop_flip", "--schedule", "cosine", "--lr", "0.2",
                              "--kd-temperature", "2"]))
    assert (c.train.augment, c.finetune.augment, c.train.schedule, c.finetune.schedule, c.train.lr,
            c.finetune.kd_temperature) == ("crop_flip", "crop_flip", "cosine", "cosine", 0.2, 2.0)
    d = _config(p.parse_args(["--target", "rpi4"]))
    assert d == BuildConfig() and d.reference == "teacher" and (d.finetune.kd_alpha, d.finetune.lr) == (0.0, 0.1)
    assert main(["build", "--target", "rpi4", "--kd-alpha", "1.5"]) == 2
    assert "--kd-alpha must be in [0, 1], got 1.5" in capsys.readouterr().err
    assert main(["build", "--target", "rpi4", "--prune-steps", "0"]) == 2
    assert "prune_steps must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(EdgeSparseError, match="prune_steps must be >= 1"):
        BuildConfig(prune_steps=0)


def _npz(x, y):
    import io

    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    return buf.getvalue()


def _eval(b):
    with np.load(b / "eval.npz") as d:
        return d["x"], d["y"]


def _meta_edit(fn):
    def edit(b):
        meta = json.loads((b / "metadata.json").read_text())
        fn(meta)
        (b / "metadata.json").write_text(json.dumps(meta))
    return edit


# (id, edit of a bundle copy whose manifest is then regenerated, bench.py args, exit code, words on stderr)
HARNESS_BAD = [
    ("labels-column", lambda b: (b / "eval.npz").write_bytes(_npz(_eval(b)[0], _eval(b)[1][:, None])), [], 2,
     "y must be one integer label per image"),
    ("labels-range", lambda b: (b / "eval.npz").write_bytes(_npz(_eval(b)[0], _eval(b)[1] + 10)), [], 2,
     "labels must lie in [0, 10)"),
    ("images-float", lambda b: (b / "eval.npz").write_bytes(_npz(_eval(b)[0].astype(np.float32), _eval(b)[1])), [], 2,
     "x must be uint8 images of shape (N, 28, 28, 1)"),
    ("images-size", lambda b: (b / "eval.npz").write_bytes(_npz(_eval(b)[0][:, :20], _eval(b)[1])), [], 2,
     "x must be uint8 images of shape (N, 28, 28, 1)"),
    ("eval-garbage", lambda b: (b / "eval.npz").write_bytes(b"not a zip"), [], 2, "eval.npz: unreadable"),
    ("eval-no-y", lambda b: (b / "eval.npz").write_bytes(_npz(_eval(b)[0], _eval(b)[1]).replace(b"y.npy", b"z.npy")),
     [], 2, "expected arrays x (uint8 NHWC) and y"),
    ("meta-no-mean", _meta_edit(lambda m: m["input"].pop("mean")), [], 2, "field input.mean"),
    ("meta-threads-str", _meta_edit(lambda m: m.update(threads="4")), [], 2, "field threads must be an integer"),
    ("meta-budget-str", _meta_edit(lambda m: m["latency_ms"].update(budget="0.7")), [], 2, "field latency_ms.budget"),
    ("meta-std-zero", _meta_edit(lambda m: m["input"].update(std=[0.0])), [], 2, "field input.std must be positive"),
    ("meta-not-json", lambda b: (b / "metadata.json").write_text("{"), [], 2, "metadata.json is not valid JSON"),
    ("meta-list", lambda b: (b / "metadata.json").write_text("[]"), [], 2, "must be a JSON object"),
    ("model-zeros", lambda b: (b / "model.tflite").write_bytes(bytes(4096)), [], 2, "not a TFLite flatbuffer"),
    ("json-missing-dir", None, ["--json", "{tmp}/nope/r.json"], 2, "does not exist"),
    ("json-is-dir", None, ["--json", "{tmp}"], 2, "is a directory"),
    ("dump-missing-dir", None, ["--dump-outputs", "{tmp}/nope/o.npy"], 2, "--dump-outputs"),
    ("runs-zero", None, ["--runs", "0"], 2, "--runs must be >= 1"),
    ("rounds-zero", None, ["--rounds", "0"], 2, "--rounds must be >= 1"),
    ("eval-limit-negative", None, ["--eval-limit", "-1"], 2, "--eval-limit must be >= 0"),
    ("model-unlisted", lambda b: shutil.copyfile(b / "model.tflite", b / "other.tflite") and "keep-manifest",
     ["--model", "other.tflite"], 2, "not listed in"),
    ("model-wrong-ext", None, ["--model", "report.md"], 2, "runs .tflite or .onnx models"),
    ("probes-not-dir", None, ["--probes", "{tmp}/none"], 2, "not a directory"),
    ("probes-no-suite", None, ["--probes", "{tmp}"], 2, "probes.json is missing"),
]


@pytest.mark.parametrize("case", HARNESS_BAD, ids=[c[0] for c in HARNESS_BAD])
def test_harness_bad_input_catalogue(quick, tmp_path, case):
    """Each bad bundle or flag: exit 2, one `error:` line naming the thing, no traceback, nothing written."""
    from edge_sparse import bundle

    _, edit, args, code, words = case
    b = _roomy_copy(quick["bundle"], tmp_path / "b")
    if edit is not None:
        if edit(b) != "keep-manifest":
            bundle.write_manifest(b)  # damaged before it was hashed: the checks after the sha256 must catch it
    out = tmp_path / "out"
    out.mkdir()
    args = [a.replace("{tmp}", str(out)) for a in args]
    r = _bench(b, *args)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stderr)
    assert words in lines[0] and "Traceback" not in r.stderr, lines[0]
    assert "runs" not in r.stdout  # refused before the timing run
    assert list(out.iterdir()) == [] and not list(b.glob("*.tmp*"))


def test_harness_probe_suite_checks(quick, tmp_path):
    """--probes: a damaged suite is refused naming the probe; a good one is timed, interleaved, as JSON."""
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copyfile(quick["bundle"] / "model.tflite", suite / "m.tflite")
    import hashlib

    digest = hashlib.sha256((suite / "m.tflite").read_bytes()).hexdigest()
    entry = {"name": "m", "file": "m.tflite", "sha256": digest}
    bench = [sys.executable, str(quick["bundle"] / "bench.py"), "--probes", str(suite), "--runs", "20", "--rounds", "2"]
    for probes, words in (({"format": "x", "probes": []}, "not a probe suite"),
                          ({"format": "edge_sparse.probes/1", "probes": [{**entry, "sha256": "0" * 64}]},
                           "sha256 does not match probes.json"),
                          ({"format": "edge_sparse.probes/1", "probes": [{**entry, "file": "../m.tflite"}]},
                           "must be a .tflite inside"),
                          ({"format": "edge_sparse.probes/1", "probes": [entry, entry]}, "appears twice")):
        (suite / "probes.json").write_text(json.dumps(probes))
        r = subprocess.run(bench, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    (suite / "probes.json").write_text(json.dumps({"format": "edge_sparse.probes/1", "probes": [entry]}))
    r = subprocess.run(bench + ["--json", str(tmp_path / "t.json")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["format"] == "edge_sparse.probe_timings/1" and t["threads"] == 1 and t["failed"] == {}
    assert t["timings"]["m"]["n"] == 20 and 0 < t["timings"]["m"]["p50"] <= t["timings"]["m"]["p90"]


@pytest.mark.slow
def test_harness_survives_damaged_models(quick, tmp_path):
    """A slice of `python -m benchmarks.harness_fuzz` (the full 200 runs are in BENCHMARKS.md): every damaged
    model ends in a verdict or a one-line refusal, never a signal, hang, traceback or internal error."""
    from benchmarks.harness_fuzz import run_case

    outcomes = [run_case(quick["bundle"], case, timeout=120) for case in range(10)]
    assert all(c["outcome"] in ("ran", "refused") for c in outcomes), outcomes


def test_damaged_cache_entry_is_recomputed_and_stale_temps_removed(quick, tmp_path, capsys):
    """A truncated model in a cache entry is found by its hash, warned about and recomputed; a `.tmp` entry
    a killed build left behind is removed; the re-run gives the same bundle."""
    cache = tmp_path / "cache"
    shutil.copytree(quick["dir"] / "cache", cache)
    entry = cache / quick["b"].dirs["finetune"].name  # the entry this configuration reuses
    victim = next(p for p in entry.rglob("*.safetensors"))
    victim.write_bytes(victim.read_bytes()[:100])
    (cache / ".export-deadbeef.abc.tmp").mkdir()
    pipeline.run("rpi4", BuildConfig.quick(), out_dir=tmp_path / "dist", cache_dir=cache)
    err = capsys.readouterr().err
    assert f"cache entry {entry} is damaged ({victim.relative_to(entry)} does not match its hash)" in err
    assert "finetune ..." in err and not (cache / ".export-deadbeef.abc.tmp").exists()
    assert (tmp_path / "dist" / "rpi4" / "model.onnx").read_bytes() == (quick["bundle"] / "model.onnx").read_bytes()


def test_new_data_under_the_same_dir_changes_the_key(cifar10_dir, tmp_path):
    d = tmp_path / "c10"
    shutil.copytree(cifar10_dir, d)
    k0 = pipeline.data_fingerprint("cifar10", d)
    assert pipeline.data_fingerprint("cifar10", d) == k0
    f = next(p for p in sorted(d.rglob("*")) if p.is_file())
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    assert pipeline.data_fingerprint("cifar10", d) != k0


def test_a_library_upgrade_invalidates_the_stages_it_decides(tmp_path, monkeypatch):
    """A cached .tflite made by another onnx2tf (or a model trained by another torch) is not reused: the stage's
    libraries are in its key, and the keys chain, so the stages after it go too; the stages before it stay."""
    import importlib.metadata

    from edge_sparse.targets import load_target

    b = pipeline.Build(load_target("rpi4"), BuildConfig.quick(), tmp_path / "cache", tmp_path / "dist")
    before = pipeline._keys(b)
    real = importlib.metadata.version
    for dist, changed, kept in (("onnx2tf", {"export", "dense_export", "verify", "robustness"}, {"train", "search"}),
                                ("torch", set(pipeline.STAGES) - {"bundle"} | {"dense_export"}, set())):
        monkeypatch.setattr(importlib.metadata, "version", lambda d, dist=dist: "0.0-other" if d == dist else real(d))
        after = pipeline._keys(b)
        assert {k for k in before if before[k] != after[k]} == changed, dist
        assert all(before[k] == after[k] for k in kept)
    monkeypatch.setattr(importlib.metadata, "version", real)
    assert pipeline._keys(b) == before


def test_second_build_on_a_cache_waits_for_the_first(tmp_path):
    lock = pipeline._lock_cache(tmp_path)
    code = (f"from pathlib import Path; from edge_sparse import pipeline; print('trying', flush=True); "
            f"pipeline._lock_cache(Path({str(tmp_path)!r})); print('got it')")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "trying"
        time.sleep(2)
        assert p.poll() is None  # still waiting
    finally:
        lock.close()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and "got it" in out and "waiting for another build" in err


def test_accuracy_floor_gate_fails_the_build(quick, tmp_path, monkeypatch):
    """The accuracy floor, enforced, stops the build before a bundle exists, saying by how much it missed."""
    import dataclasses

    _edited_rpi4(tmp_path, monkeypatch, "accuracy_floor_pct = 88.0", "accuracy_floor_pct = 99.5")
    cfg = dataclasses.replace(BuildConfig.quick(), enforce_accuracy_floor=True)
    with pytest.raises(pipeline.GateError, match=r"shipped int8 accuracy .*% is below rpi4's floor 99.5% \(short by"):
        pipeline.run("rpi4", cfg, out_dir=tmp_path / "dist", cache_dir=quick["dir"] / "cache")
    assert not (tmp_path / "dist").exists()


def test_size_gate_fails_the_build(quick, tmp_path, monkeypatch):
    """The size gate judges the real model.tflite, not the search's estimate: with an estimate that says every
    candidate is tiny and a 30 KiB budget, the exported model is over it and the build stops naming both sizes."""
    from edge_sparse import search

    _edited_rpi4(tmp_path, monkeypatch, "model_size_budget_kb = 96", "model_size_budget_kb = 30")
    monkeypatch.setattr(search, "estimate_size_kb", lambda params, channels: 1.0)
    with pytest.raises(pipeline.GateError, match=r"model.tflite is [0-9.]+ KiB > size budget 30(\.0)? KiB"):
        pipeline.run("rpi4", BuildConfig.quick(), out_dir=tmp_path / "dist", cache_dir=quick["dir"] / "cache")
    assert not (tmp_path / "dist").exists()


def test_parity_gate_fails_the_build(quick, tmp_path, monkeypatch):
    """With the parity gate enforced and an agreement bar no int8 model can meet, the build fails naming the model."""
    import dataclasses

    from edge_sparse import verify

    monkeypatch.setattr(verify, "INT8_MIN_AGREEMENT", 100.01)
    cfg = dataclasses.replace(BuildConfig.quick(), enforce_parity=True)
    with pytest.raises(pipeline.GateError, match=r"top-1 agreement .*% < 100.01%"):
        pipeline.run("rpi4", cfg, out_dir=tmp_path / "dist", cache_dir=quick["dir"] / "cache")
    assert not (tmp_path / "dist").exists()


def test_dense_reference_export_is_shared_between_builds(quick, tmp_path):
    """The dense reference is exported once per dense model, calibration and export code (its own cache entry): a
    build whose shipped model exports again reuses it; an entry made from other dense weights (a reference entry
    recomputed differently) and `--from export` export it again."""
    a = quick["b"]
    assert a.results["export"]["dense_export"].startswith("dense-export-")
    cache = tmp_path / "cache"
    shutil.copytree(quick["dir"] / "cache", cache)
    entry = cache / a.results["export"]["dense_export"].split()[0]
    shutil.rmtree(cache / a.dirs["export"].name)  # the shipped model's export is gone, the dense one's kept
    b = pipeline.run("rpi4", BuildConfig.quick(), out_dir=tmp_path / "dist", cache_dir=cache)
    assert b.times["export"] > 0 and b.results["export"]["dense_export"] == f"{entry.name} (reused)"
    meta = json.loads((entry / "stage.json").read_text())
    (entry / "stage.json").write_text(json.dumps({**meta, "dense_sha256": "0" * 64}))  # made from other weights
    shutil.rmtree(cache / b.dirs["export"].name)
    c = pipeline.run("rpi4", BuildConfig.quick(), out_dir=tmp_path / "dist2", cache_dir=cache)
    assert c.results["export"]["dense_export"] == f"{entry.name} (made now)"
    assert json.loads((entry / "stage.json").read_text())["dense_sha256"] == meta["dense_sha256"]
    d = pipeline.run("rpi4", BuildConfig.quick(), out_dir=tmp_path / "dist3", cache_dir=cache, from_stage="export")
    assert d.results["export"]["dense_export"] == f"{entry.name} (made now)"
