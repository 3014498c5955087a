"""`python -m benchmarks.byom`: bring your own model — the two numbers of the bring-your-own-model issue, measured.

1. **Pretrained start.** A user's dense ResNet-8, trained 9 epochs on Fashion-MNIST with the project's `fit` and no
   sparsity term (one-cycle lr 0.1, the default build's dense recipe otherwise), saved as safetensors, then
   `edge-sparse build --target rpi4 --weights it` (1 sparsity-inducing epoch from the weights, search, 9-epoch
   fine-tune, export, verify, bundle). Read: shipped int8 `.tflite` vs the given model on all 10k test images
   (paired interval from the build's own metadata), and the build's wall time vs the stage times of the
   from-scratch default build (`dist/rpi4/metadata.json`, `stage_seconds_when_built`).
2. **`--no-train`.** `examples/my_net.py:mobilenet_v2` (inverted residuals, depthwise, ReLU6) at 3x96x96 on an
   image folder (10 Fashion-MNIST classes as RGB 96x96 PNGs: 300 train + 100 test per class), trained 10 epochs
   by `fit` as the user's weights, then `edge-sparse build --target host --no-train --accuracy-floor 70` (prune by
   Taylor importance, BN re-estimation, export, verify, bundle) with the host profile's budget set to 1.5x faster
   than dense (a compression without training cannot take 2x from a net this small and keep its accuracy: at 2x
   the first run shipped nothing, 19.6 % int8 after pruning 58 % of the channels of a 76.7 % model): wall time to
   the bundle, goal <= 3 minutes on 2 cores.

Each part's result is written to benchmarks/out/byom/<part>.json as it finishes (a re-run skips finished parts;
the trained weights are kept), and all of them to benchmarks/byom.json (committed: the section's numbers);
`--write` splices the section into BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import publish

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out" / "byom"
TAG = "byom"


def _log(msg: str) -> None:
    print(f"[byom {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _save(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)


def _build(args: list[str], log: Path) -> tuple[int, float]:
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "edge_sparse", "build", *args], stdout=f, stderr=subprocess.STDOUT,
                            cwd=ROOT).returncode
    return rc, time.time() - t0


def pretrained(seed: int = 0) -> dict:
    from edge_sparse import data, models
    from edge_sparse.config import BuildConfig
    from edge_sparse.train import accuracy, fit

    w = OUT / f"resnet8-9ep-seed{seed}.safetensors"
    splits = data.load("fashion-mnist", seed=seed)
    if not w.is_file():
        _log(f"training the user's dense ResNet-8 (9 epochs, no sparsity term, seed {seed})")
        torch.manual_seed(seed)
        m = models.create("resnet8", in_channels=1, num_classes=10, input_size=28)
        t0 = time.time()
        fit(m, splits, BuildConfig().train.replace(sparsity_reg="none", seed=seed))
        _log(f"trained in {time.time() - t0:.0f} s")
        _save(m, w)
    out = OUT / f"pretrained-seed{seed}"
    cache = OUT / f"pretrained-seed{seed}-cache"  # its own cache: nothing of another build is reused
    _log("edge-sparse build --target rpi4 --weights ... (fresh cache)")
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    rc, wall = _build(["--target", "rpi4", "--weights", str(w), "--seed", str(seed), "--out", str(out),
                       "--cache", str(cache)], OUT / f"pretrained-seed{seed}.log")
    if rc != 0:
        return {"seed": seed, "error": f"build exited {rc}; see {OUT / f'pretrained-seed{seed}.log'}"}
    meta = json.loads((out / "rpi4" / "metadata.json").read_text())
    t = meta["accuracy"]["test"]
    scratch = json.loads((ROOT / "dist" / "rpi4" / "metadata.json").read_text()) if (ROOT / "dist" / "rpi4" / "metadata.json").is_file() else None
    shutil.rmtree(cache, ignore_errors=True)
    return {"seed": seed, "wall_s": wall, "stage_seconds": meta["build"]["stage_seconds"],
            "given_fp32": t["torch_fp32_dense"], "shipped_int8": t["tflite_int8"], "shipped_fp32": t["torch_fp32"],
            "int8_minus_given": t["shipped_int8_minus_dense_fp32"], "agreement": t["int8_agreement_pct"],
            "macs": meta["model"]["macs"], "dense_macs": meta["dense"]["macs"], "sparsity": meta["sparsity"],
            "predicted_p90_ms": meta["latency_ms"]["predicted_p90"], "budget_ms": meta["latency_ms"]["budget"],
            "reference": meta["dense"]["reference"],
            "scratch_stage_seconds": (scratch or {}).get("build", {}).get("stage_seconds_when_built"),
            "scratch_git_commit": (scratch or {}).get("build", {}).get("git_commit")}


def _folder(root: Path, per_class_train: int = 300, per_class_test: int = 100, size: int = 96) -> Path:
    """10 Fashion-MNIST classes as RGB PNGs of `size`^2: root/train/<class>/, root/val/<class>/ (val = test split)."""
    if (root / ".done").is_file():
        return root
    from PIL import Image

    from edge_sparse import data

    train, test, classes = data.load_fashion_mnist()
    for split, s, n in (("train", train, per_class_train), ("val", test, per_class_test)):
        for label, name in enumerate(classes):
            d = root / split / name.replace("/", "-").replace(" ", "_")
            d.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(s.y == label)[:n]:
                Image.fromarray(s.images([i])[0][:, :, 0]).convert("RGB").resize((size, size), Image.BILINEAR).save(d / f"{i}.png")
    (root / ".done").write_text("ok\n")
    return root


def no_train(budget: str = "1.2x") -> dict:
    from edge_sparse import data, usermodel
    from edge_sparse.config import TrainConfig
    from edge_sparse.train import fit

    folder = _folder(OUT / "images96")
    ref = f"{ROOT / 'examples' / 'my_net.py'}:mobilenet_v2"
    w = OUT / "mobilenet_v2-96-10ep.safetensors"
    if not w.is_file():
        _log("training the user's MobileNetV2-style net at 3x96x96 (4 epochs on the image folder)")
        splits = data.load("folder", folder, seed=0, image_size=96)
        m = usermodel.instantiate(ref)
        t0 = time.time()
        fit(m, splits, TrainConfig(epochs=10, schedule="onecycle", augment="none", sparsity_reg="none", lr=0.05))
        _log(f"trained in {time.time() - t0:.0f} s")
        _save(m, w)
    out, cache = OUT / f"notrain-{budget}", OUT / f"notrain-{budget}-cache"
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    _log("edge-sparse build --target host --model examples/my_net.py:mobilenet_v2 --no-train (fresh cache)")
    import os
    import re

    targets = OUT / "targets"  # the committed profiles, host's budget at `budget`, its size budget at 1 MiB
    shutil.rmtree(targets, ignore_errors=True)
    shutil.copytree(ROOT / "targets", targets)
    h = targets / "host.toml"
    h.write_text(re.sub(r"model_size_budget_kb = [0-9.]+", "model_size_budget_kb = 1024",
                        re.sub(r'latency_budget = "[^"]*"', f'latency_budget = "{budget}"', h.read_text())))
    os.environ["EDGE_SPARSE_TARGETS"] = str(targets)
    rc, wall = _build(["--target", "host", "--model", ref, "--weights", str(w), "--no-train", "--dataset", "folder",
                       "--data-dir", str(folder), "--input-size", "96", "--accuracy-floor", "70", "--out", str(out),
                       "--cache", str(cache)], OUT / f"notrain-{budget}.log")
    os.environ.pop("EDGE_SPARSE_TARGETS")
    if rc != 0:  # the gates refused the model: say which, and how far the pipeline got in how long
        log = (OUT / f"notrain-{budget}.log").read_text()
        lines = [ln for ln in log.splitlines() if ln.startswith(("error:", "  chosen:", "  candidate dense"))]
        ver = next(cache.glob("verify-*/stage.json"), None)  # the given model's own int8 parity, for context
        dense_agree = (json.loads(ver.read_text())["dense_parity"]["dense_int8.tflite"]["agreement"] if ver else None)
        return {"budget": budget, "error": f"build exited {rc}", "wall_s": wall, "log": lines,
                "given_int8_agreement": dense_agree}
    meta = json.loads((out / "host" / "metadata.json").read_text())
    t = meta["accuracy"]["test"]
    shutil.rmtree(cache, ignore_errors=True)
    return {"budget": budget, "wall_s": wall, "stage_seconds": meta["build"]["stage_seconds"], "test_n": t["n"],
            "given_fp32": t["torch_fp32_dense"], "shipped_int8": t["tflite_int8"], "agreement": t["int8_agreement_pct"],
            "int8_minus_given": t["shipped_int8_minus_dense_fp32"], "macs": meta["model"]["macs"],
            "dense_macs": meta["dense"]["macs"], "sparsity": meta["sparsity"], "latency_ms": meta["latency_ms"]}


def markdown(res: dict) -> str:
    L = [f"<!-- {TAG}:begin -->", "## Bring your own model (`python -m benchmarks.byom`)\n"]
    p = res.get("pretrained")
    if p and "error" not in p:
        d = p["int8_minus_given"]
        sc = p.get("scratch_stage_seconds") or {}
        scratch = sum(sc.values()) if sc else None
        L.append(f"**Pretrained start** (seed {p['seed']}): a dense ResNet-8 trained 9 epochs without the sparsity term "
                 f"scores **{p['given_fp32']['acc']:.2f} %** fp32 on all 10k test images; `edge-sparse build --target rpi4 "
                 f"--weights` it (1 sparsity epoch from the weights, search, 9 fine-tune epochs) ships {p['macs'] / 1e6:.2f} M "
                 f"of {p['dense_macs'] / 1e6:.2f} M MACs (predicted p90 {p['predicted_p90_ms']:.3f} ms ≤ {p['budget_ms']:.2f} ms) "
                 f"at **{p['shipped_int8']['acc']:.2f} %** int8: {d['diff_pt']:+.2f} pt against the given model "
                 f"(paired 95 % {d['ci95_pt'][0]:+.2f}…{d['ci95_pt'][1]:+.2f}; goal: within 0.5 pt), int8 agreement "
                 f"{p['agreement']:.2f} %. Wall time **{p['wall_s']:.0f} s** (fresh cache)"
                 + (f" vs {scratch:.0f} s of stage time for the from-scratch default build (its `stage_seconds_when_built`)."
                    if scratch else "."))
    elif p:
        L.append(f"Pretrained start: {p['error']}")
    for n in res.get("no_train", []):
        head = (f"\n**`--no-train` at {n['budget']}**: `examples/my_net.py:mobilenet_v2` at 3×96×96, weights trained 10 "
                f"epochs on a 3,000-image folder, `--target host` with its budget at {n['budget']} faster than dense "
                f"(measured here), `--accuracy-floor 70`")
        if "error" not in n:
            d, lat = n["int8_minus_given"], n["latency_ms"]
            L.append(f"{head}: **a bundle in {n['wall_s']:.0f} s** (goal ≤ 180 s), {n['macs'] / 1e6:.1f} of "
                     f"{n['dense_macs'] / 1e6:.1f} M MACs, predicted p90 {lat['predicted_p90']:.4f} ms ≤ {lat['budget']:.4f} ms; "
                     f"int8 {n['shipped_int8']['acc']:.2f} % vs the given model's {n['given_fp32']['acc']:.2f} % on "
                     f"{n['test_n']:,} test images ({d['diff_pt']:+.2f} pt), int8 agreement {n['agreement']:.2f} %.")
        else:
            L.append(f"{head}: pruned, BN re-estimated, exported and verified in **{n['wall_s']:.0f} s**"
                     f"{' (' + n['note'] + ')' if n.get('note') else ''}, then the gates "
                     f"refused the model ({n['error']}):\n")
            L += [f"    {ln.strip()}" for ln in n.get("log", [])]
            if n.get("given_int8_agreement") is not None:
                L.append(f"\n  (the given model's own int8 .tflite agrees with its fp32 on {n['given_int8_agreement']:.1f} % of "
                         f"the test images: the 99 % parity gate refuses it too)")
    if res.get("no_train"):
        L.append("\nWithout any training, a cut costs what it costs: `--no-train` is for small cuts (a 1.2× budget here); "
                 "the pretrained start above is the path that keeps accuracy at real speedups. Wall times include the "
                 "host latency table's probes for this architecture only when cold (about 50 s once).")
    L.append(f"\nMeasured {res.get('date', '?')}; every number from benchmarks/byom.json.")
    L.append(f"<!-- {TAG}:end -->")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    from edge_sparse import _io

    ap = argparse.ArgumentParser(prog="python -m benchmarks.byom")
    ap.add_argument("--parts", default="no_train,pretrained", help="comma-separated: no_train, pretrained")
    ap.add_argument("--no-train-budgets", default="1.2x,1.5x", help="host budgets of the --no-train part, e.g. 1.2x,1.5x")
    ap.add_argument("--write", action="store_true", help="splice the section into BENCHMARKS.md")
    a = ap.parse_args(argv)
    parts = [s for s in a.parts.split(",") if s]
    bad = [s for s in parts if s not in ("no_train", "pretrained")]
    if bad:
        print(f"error: --parts: unknown {', '.join(bad)}; valid: no_train, pretrained", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    prev = json.loads((ROOT / "benchmarks" / "byom.json").read_text()) if (ROOT / "benchmarks" / "byom.json").is_file() else {}
    res = {"date": prev.get("date", time.strftime("%Y-%m-%d")), "no_train": []}
    f = OUT / "pretrained.json"
    if f.is_file():
        res["pretrained"] = json.loads(f.read_text())
    elif "pretrained" in parts:
        res["pretrained"] = pretrained()
        _io.write_json(f, res["pretrained"])
        res["date"] = time.strftime("%Y-%m-%d")
    for budget in [b for b in a.no_train_budgets.split(",") if b]:
        f = OUT / f"no_train-{budget}.json"
        if f.is_file():
            res["no_train"].append(json.loads(f.read_text()))
        elif "no_train" in parts:
            res["no_train"].append(no_train(budget))
            _io.write_json(f, res["no_train"][-1])
            res["date"] = time.strftime("%Y-%m-%d")
    _io.write_json(ROOT / "benchmarks" / "byom.json", res)
    return publish(markdown(res), TAG, a.write)


if __name__ == "__main__":
    raise SystemExit(main())
