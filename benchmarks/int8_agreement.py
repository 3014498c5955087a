"""`python -m benchmarks.int8_agreement`: where the int8 .tflite disagrees with torch fp32, per seed of the default build.

For each seed (the default `make build TARGET=rpi4`, from the stage cache: run `make seeds` or the recipes first),
on all 10k test images: the flips (int8 top-1 != fp32 top-1), how many of them are exact ties of the two largest
int8 logits (the output quantiser cannot tell them apart; argmax takes the lower class index), how many have an
fp32 top-2 margin below one output quantisation step, and the agreement of three alternatives built from the same
fp32 ONNX with the same converter: (0) the shipped conversion without its bias correction (what builds
shipped before it); (a) 2,000 calibration images from the train split instead of the build's 512;
(b) the final FULLY_CONNECTED kept in float (TensorFlow's QuantizationDebugger with `denylisted_ops`: int8 input,
float logits), and the p50 latency of (b) against the shipped model, timed side by side here.

Writes benchmarks/int8_agreement.json and the section of BENCHMARKS.md between its markers (`--write`).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import publish

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "int8_agreement.json"  # committed: the section's numbers
TAG = "int8-agreement"


def _convert(sm: Path, calib: np.ndarray, out: Path, float_fc: bool, correct_bias: bool = True) -> Path:
    """The build's own full-int8 conversion (`export.tflite.convert`), or the same with the final FC left in float."""
    import tensorflow as tf

    from edge_sparse.export import tflite as etflite

    if not float_fc:
        etflite.convert(sm, out, calib, correct_bias=correct_bias)
        return out

    def rep():
        for i in range(len(calib)):
            yield [calib[i : i + 1].astype(np.float32)]

    c = tf.lite.TFLiteConverter.from_saved_model(str(sm))
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = rep
    c.inference_input_type = tf.int8
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    c.inference_output_type = tf.float32
    dbg = tf.lite.experimental.QuantizationDebugger(
        converter=c, debug_dataset=rep,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=["FULLY_CONNECTED"]))
    out.write_bytes(dbg.get_nondebug_quantized_model())
    return out


def one_seed(seed: int) -> dict:
    from edge_sparse import data, models, pipeline, verify
    from edge_sparse.config import BuildConfig
    from edge_sparse.export import tflite as etflite
    from edge_sparse.latency import measure_many
    from edge_sparse.train import predict

    b = pipeline.run("rpi4", BuildConfig(seed=seed), out_dir=ROOT / "build" / "int8-agreement", cache_dir=ROOT / "build" / "cache",
                     until_stage="verify")
    e, s = b.dirs["export"], b.splits
    x, y = s.test.images(np.arange(len(s.test))), s.test.y
    model, _ = models.load(b.dirs["finetune"] / "model")
    ref = predict(model, s.test, s.mean, s.std)
    q = verify.run_tflite(e / "model.tflite", x, s.mean, s.std)
    scale = float(verify.tflite_interpreter(e / "model.tflite", 1).get_output_details()[0]["quantization"][0])
    flip = ref.argmax(1) != q.argmax(1)
    qs, rs = np.sort(q, 1), np.sort(ref, 1)
    tie = qs[:, -1] == qs[:, -2]
    margin = rs[:, -1] - rs[:, -2]
    res = {"seed": seed, "n": int(len(y)), "agreement": float((~flip).mean() * 100), "flips": int(flip.sum()),
           "flips_int8_tie": int((flip & tie).sum()), "flips_margin_below_1_step": int((flip & (margin < scale)).sum()),
           "output_scale": scale, "int8_top1": float((q.argmax(1) == y).mean() * 100)}
    tmp = Path(tempfile.mkdtemp(prefix="edge_sparse_agree_"))
    try:
        c512 = data.normalize_np(pipeline._calibration(b), s.mean, s.std, "NHWC")
        rng = np.random.default_rng(seed)
        c2k = data.normalize_np(s.train.images(rng.choice(len(s.train), 2000, replace=False)), s.mean, s.std, "NHWC")
        sm = etflite.onnx_to_saved_model(e / "model_fp32.onnx", c512, tmp)
        for name, calib, ffc, bc in (("no_bias_correction", c512, False, False), ("calib2000", c2k, False, True),
                                     ("float_fc", c512, True, False)):
            p = _convert(sm, calib, tmp / f"{name}.tflite", ffc, bc)
            out = verify.run_tflite(p, x, s.mean, s.std)
            res[name] = {"agreement": float((out.argmax(1) == ref.argmax(1)).mean() * 100),
                         "top1": float((out.argmax(1) == y).mean() * 100)}
        t = measure_many([e / "model.tflite", tmp / "float_fc.tflite"], threads=1, runs=1000, rounds=10)
        res["float_fc"]["p50_ms"], res["p50_ms"] = t[1]["p50"], t[0]["p50"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def markdown(rows: list[dict]) -> str:
    L = [f"<!-- {TAG}:begin -->", "## Where int8 disagrees with fp32 (`python -m benchmarks.int8_agreement`)\n",
         "Default rpi4 build, all 10k test images. A flip: int8 `.tflite` top-1 ≠ torch fp32 top-1.\n",
         "| seed | agreement (%) | flips | of which int8 top-2 tie | fp32 margin < 1 output step | output step | "
         "without the bias correction (%) | 2,000 calibration images (%) | float final FC (%) | "
         "p50 shipped / float FC (ms) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['seed']} | {r['agreement']:.2f} | {r['flips']} | {r['flips_int8_tie']} | {r['flips_margin_below_1_step']} | "
                 f"{r['output_scale']:.3f} | {r['no_bias_correction']['agreement']:.2f} | {r['calib2000']['agreement']:.2f} | {r['float_fc']['agreement']:.2f} | "
                 f"{r['p50_ms']:.4f} / {r['float_fc']['p50_ms']:.4f} |")
    L.append(f"\nMeasured {time.strftime('%Y-%m-%d')}; benchmarks/int8_agreement.json.")
    L.append(f"<!-- {TAG}:end -->")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    from edge_sparse import _io

    ap = argparse.ArgumentParser(prog="python -m benchmarks.int8_agreement")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args(argv)
    rows = [one_seed(int(s)) for s in a.seeds.split(",") if s.strip()]
    _io.write_json(OUT, rows)
    return publish(markdown(rows), TAG, a.write)


if __name__ == "__main__":
    raise SystemExit(main())
