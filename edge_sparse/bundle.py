"""The deployment bundle `dist/<target>/`: model.tflite, model.onnx, model_fp32.onnx, labels.txt,
metadata.json, eval.npz, bench.py, report.md (+ plots), manifest.json (sha256 and size of each file).

In:  a finished `pipeline.Build` (export, verify and robustness results in its cache).
Out: the bundle directory, written beside its final place and renamed into it (all or nothing).
Run: the last stage of `make build TARGET=<name>`.
"""
from __future__ import annotations

import json
import resource
import shutil
from pathlib import Path

from edge_sparse import _io
from edge_sparse.errors import EdgeSparseError

HARNESS = Path(__file__).resolve().parent / "harness" / "bench.py"
BUNDLE_FILES = ("model.tflite", "model.onnx", "model_fp32.onnx", "labels.txt", "metadata.json", "eval.npz",
                "bench.py", "report.md")


def io_params(tflite_path: Path) -> dict:
    """Input/output dtype, shape, scale and zero point as the .tflite itself declares them."""
    from edge_sparse.verify import tflite_interpreter

    it = tflite_interpreter(tflite_path)
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    return {"input": {"shape": [int(v) for v in i["shape"]], "dtype": i["dtype"].__name__,
                      "scale": float(i["quantization"][0]), "zero_point": int(i["quantization"][1])},
            "output": {"shape": [int(v) for v in o["shape"]], "dtype": o["dtype"].__name__,
                       "scale": float(o["quantization"][0]), "zero_point": int(o["quantization"][1])}}


def _reference_words(b) -> str:
    r, c = b.results, b.cfg
    shipped = c.train.epochs + c.finetune.epochs
    if r["reference"].get("given"):
        return (f"the model you gave ({c.model}, weights {c.weights}), evaluated as is, not retrained; the shipped model "
                f"is it pruned{'' if c.no_train else f' after {c.train.epochs} sparsity epochs and {c.finetune.epochs} fine-tune epochs'}"
                f"{' with BN statistics re-estimated and no training (--no-train)' if c.no_train else ''}")
    if r["reference"].get("kind") == "teacher":
        ft = c.finetune
        if r["search"]["chosen"]["sparsity"] == 0:
            return (f"the shipped model itself: the dense model met the budget, so nothing was pruned; it trained "
                    f"{c.train.epochs} epochs ({c.train.schedule}, lr {c.train.lr:g})")
        return (f"the dense model the pruning started from: the same architecture unpruned, trained {c.train.epochs} "
                f"epochs ({c.train.schedule}, lr {c.train.lr:g}, sparsity objective {c.train.sparsity_reg} "
                f"lambda {c.train.sparsity_lambda:g}); the shipped model is it pruned, then fine-tuned "
                f"{len(r['finetune']['history'])} epochs"
                f"{f' distilling from it (alpha {ft.kd_alpha:g}, T {ft.kd_temperature:g})' if ft.kd_alpha > 0 else ''}")
    if r["reference"]["same_budget"]:
        return (f"the same architecture unpruned, trained for the same {r['reference']['epochs']} epochs as the shipped "
                f"model ({c.train.epochs} warm-up + {c.finetune.epochs} with the fine-tune recipe)")
    return (f"the {c.train.epochs}-epoch warm-up model the pruning started from; the shipped model trained "
            f"{shipped} epochs, so this comparison favours the shipped model")


def _latency_meta(t, r, chosen: dict, dense_c: dict) -> dict:
    lat = r["search"].get("latency") or {}
    src = lat.get("source", "estimate")
    prov = lat.get("provenance", {})
    return {"predicted_p90": chosen["predicted_p90_ms"], "predicted_p50": chosen.get("predicted_p50_ms"),
            "budget": lat.get("budget_ms", t.latency_budget_ms), "budget_spec": t.describe_budget(),
            "effective_budget": lat.get("effective_budget_ms"), "margin": lat.get("margin", 0.0),
            "dense_predicted_p90": dense_c["predicted_p90_ms"], "source": src, "weights": lat.get("weights"),
            "provenance": {k: v for k, v in prov.items() if k not in ("source_text", "anchor_source_text")},
            "latency_model": (f"estimate fitted on real device timings ({prov.get('shape_from', '').split(':')[0]}), scaled to "
                              f"{prov.get('anchor')}" if src == "estimate" and prov.get("held_out") else
                              f"published-figure estimate ([latency_model] of targets/{t.name}.toml)" if src == "estimate" else
                              f"measured latency table ({prov.get('device')}, {prov.get('cpu')}, "
                              f"{prov.get('runtime_version')}, {prov.get('threads')} threads, {prov.get('date')})")}


def metadata(b) -> dict:
    from edge_sparse.versions import environment_versions, git_commit

    t, r = b.target, b.results
    e = b.dirs["export"]
    io = io_params(e / "model.tflite")
    chosen = r["finetune"]["final"]  # the shipped model's own numbers (equal to the search's unless iterative)
    dense_c = next(c for c in r["search"]["candidates"] if c["sparsity"] == 0)
    rob = r.get("robustness", {})
    return {
        "format": "edge_sparse.bundle/1",
        "target": t.name, "device": t.device, "threads": t.threads, "runtime": t.runtime,
        "dataset": b.cfg.dataset, "labels": list(b.splits.classes),
        "input": {**io["input"], "layout": "NHWC", "mean": list(b.splits.mean), "std": list(b.splits.std),
                  "raw": "uint8 pixels; normalise (x/255 - mean)/std, then quantise with scale/zero_point",
                  "onnx_layout": "NCHW float32 (model.onnx takes normalised float; Q/DQ inside)"},
        "output": {**io["output"], "meaning": "logits; dequantise (q - zero_point) * scale"},
        "model": {"arch": b.cfg.model, "params": chosen["params"], "macs": chosen["macs"], "layers": chosen["layers"],
                  "size_kb": round((e / "model.tflite").stat().st_size / 1024, 2),
                  "unpruned": r["search"].get("unprunable", []),  # layers kept whole, and why
                  "dropped_blocks": r["search"].get("dropped_blocks", []),  # blocks removed whole (residual, or units that keep their width)
                  "weights_notes": r["train"].get("weights_notes", [])},
        "dense": {"params": dense_c["params"], "macs": dense_c["macs"], "layers": dense_c["layers"],
                  "size_kb_int8": round((e / "dense_int8.tflite").stat().st_size / 1024, 2),
                  "epochs": r["reference"]["epochs"], "reference": _reference_words(b)},
        "sparsity": chosen["sparsity"], "criterion": b.cfg.criterion, "channel_multiple": t.channel_multiple,
        "prune_steps": chosen["prune_steps"],
        "accuracy": r["verify"]["accuracy"],
        "latency_ms": _latency_meta(t, r, chosen, dense_c),
        "size_budget_kb": t.model_size_budget_kb, "accuracy_floor_pct": t.accuracy_floor_pct,
        "robustness": {"n": rob.get("n"), "eps_per_255": rob.get("eps"),
                       "pgd_transfer_tflite_int8": {k: v.get("tflite_int8_pgd_transfer") for k, v in rob.get("sparse_fp32", {}).get("eps", {}).items()},
                       "pgd_sparse_fp32": {k: v["pgd"] for k, v in rob.get("sparse_fp32", {}).get("eps", {}).items()},
                       "pgd_dense_fp32": {k: v["pgd"] for k, v in rob.get("dense_fp32", {}).get("eps", {}).items()}},
        "versions": environment_versions(),
        "build": {"git_commit": git_commit(), "seed": b.cfg.seed, "quick": b.cfg.limit_train is not None,
                  "skipped_images": len(b.splits.skipped),  # unreadable images left out (--skip-bad-images)
                  "gates_enforced": {"parity": b.cfg.enforce_parity, "accuracy_floor": b.cfg.enforce_accuracy_floor,
                                     "latency_budget": b.cfg.fixed_sparsity is None, "size_budget": b.cfg.fixed_sparsity is None},
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # this run
                  "peak_rss_mb_when_built": max((v.get("_peak_rss_mb", 0) for v in r.values() if isinstance(v, dict)),
                                                default=0) or None,  # the runs that computed the stages
                  "stage_seconds": {k: round(v, 2) for k, v in b.times.items()},
                  "stage_seconds_when_built": {k: round(v.get("_seconds", 0), 2) for k, v in r.items() if isinstance(v, dict)}},
    }


def write(b) -> dict:
    from edge_sparse import report
    from edge_sparse.export import metadata as md

    dest = b.out_dir / b.target.name
    meta = metadata(b)
    e, v = b.dirs["export"], b.dirs["verify"]
    with _io.atomic_dir(dest) as tmp:
        (tmp / "labels.txt").write_text("\n".join(b.splits.classes) + "\n")
        (tmp / "model_ours.tflite").write_bytes(md.embed((e / "model.tflite").read_bytes(), meta))
        md.write_support_metadata(tmp / "model_ours.tflite", tmp / "model.tflite", tmp / "labels.txt",
                                  [m * 255 for m in b.splits.mean], [s * 255 for s in b.splits.std])
        (tmp / "model_ours.tflite").unlink()
        for name in ("model.onnx", "model_fp32.onnx"):
            shutil.copyfile(e / name, tmp / name)
        shutil.copyfile(v / "eval.npz", tmp / "eval.npz")
        shutil.copyfile(HARNESS, tmp / "bench.py")
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        report.write(b, meta, tmp)
        write_manifest(tmp)
    return {"path": str(dest), "files": sorted(p.name for p in dest.iterdir())}


def write_manifest(d: Path) -> dict:
    files = {p.name: {"sha256": _io.sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(d.iterdir()) if p.is_file() and p.name != "manifest.json"}
    missing = [f for f in BUNDLE_FILES if f not in files]
    if missing:
        raise EdgeSparseError(f"bundle {d} is missing {missing}")
    manifest = {"format": "edge_sparse.manifest/1", "files": files}
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def check(d: Path) -> list[str]:
    """Problems with a bundle on disk (missing files, sha256 mismatches); empty when it is whole."""
    d = Path(d)
    try:
        manifest = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        return [f"{d}/manifest.json unreadable ({e})"]
    probs = [f"{f} missing" for f in BUNDLE_FILES if not (d / f).is_file()]
    for name, ent in manifest["files"].items():
        p = d / name
        if not p.is_file():
            probs.append(f"{name} listed but missing")
        elif _io.sha256_file(p) != ent["sha256"]:
            probs.append(f"{name} sha256 mismatch")
    return probs
