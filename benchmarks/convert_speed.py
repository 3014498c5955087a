"""The ONNX -> int8 .tflite conversion as builds ran it before (onnx2tf writes its SavedModel and its own fp32 and
fp16 .tflite files) and now (onnx2tf builds the Keras model, we write the SavedModel), side by side in one run.

In:  registered models, untrained (conversion time does not depend on the weights): resnet8 on 28 px grey (the
     default build's net) and mobilenetv2 / mobilenetv3 on 96 px RGB (the zoo's input), calibrated on calib_data/'s
     Fashion-MNIST images (resized, grey -> RGB where needed): the first 64, as a build calibrates each finalist it
     times (the export calibrates on 512; TensorFlow's calibration, the same in both ways, then weighs more).
Out: benchmarks/convert_speed.json and, with --write, the "Conversion speed" section of BENCHMARKS.md: per model, the
     median seconds of each way over alternating rounds (ONNX -> SavedModel -> int8 .tflite: what each timed
     finalist costs), their ratio, and whether the int8 .tflite files are
     byte for byte the same but for tensor names (Keras numbers its layers per process: `unnamed`).
Run: `python -m benchmarks.convert_speed --write` (about 6 minutes on 2 cores); `--rounds N` (default 2).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import ROOT, publish

TAG = "convert-speed"
RESULTS = ROOT / "benchmarks" / "convert_speed.json"
MODELS = (("resnet8", 1, 28), ("mobilenetv2", 3, 96), ("mobilenetv3", 3, 96))
WAYS = ("before", "now")


def _images(channels: int, side: int) -> np.ndarray:
    """calib_data's Fashion-MNIST images, `side` px, `channels` channels, normalised NHWC float32."""
    from PIL import Image

    x = np.load(ROOT / "calib_data" / "fashion-mnist.npz")["x"][..., 0]
    if side != x.shape[1]:
        x = np.stack([np.asarray(Image.fromarray(a).resize((side, side), Image.BILINEAR)) for a in x])
    x = np.repeat(x[..., None], channels, axis=-1).astype(np.float32) / 255
    return ((x - x.mean()) / x.std()).astype(np.float32)


def unnamed(model: bytes) -> bytes:
    """`model` with its tensors' names blanked: Keras numbers the layers it builds per process (model_3/tf.nn.relu_1),
    so two conversions in one process differ in names only, whichever way they run."""
    from tensorflow.lite.tools import flatbuffer_utils as fu

    m = fu.convert_bytearray_to_object(bytearray(model))
    for g in m.subgraphs:
        for t in g.tensors:
            t.name = b""
    return bytes(fu.convert_object_to_bytearray(m))


def _convert(onnx_path: Path, nhwc: np.ndarray, way: str) -> tuple[float, bytes]:
    from edge_sparse.export import tflite as etflite

    with tempfile.TemporaryDirectory(prefix="edge_sparse_convert_speed_") as tmp:
        t = time.perf_counter()
        sm, _ = etflite._onnx_to_saved_model(onnx_path, nhwc, Path(tmp), onnx2tf_saves=way == "before")
        data, _ = etflite._check_loads(etflite._convert_bytes(sm, nhwc), sm)
        return time.perf_counter() - t, data


def run(rounds: int) -> dict:
    import torch

    from edge_sparse import models
    from edge_sparse.export import onnx as eonnx

    rows = []
    for name, channels, side in MODELS:
        torch.manual_seed(0)
        model = models.create(name, in_channels=channels, num_classes=10, input_size=side).eval()
        nhwc = _images(channels, side)[:64]
        with tempfile.TemporaryDirectory(prefix="edge_sparse_convert_speed_") as tmp:
            onnx_path = Path(tmp) / "m.onnx"
            eonnx.export_fp32(model, (channels, side, side), onnx_path)
            seconds: dict = {w: [] for w in WAYS}
            digests: dict = {w: [] for w in WAYS}
            for r in range(rounds):  # alternating, the first way swapped each round
                for way in (WAYS if r % 2 == 0 else WAYS[::-1]):
                    s, data = _convert(onnx_path, nhwc, way)
                    seconds[way].append(round(s, 2))
                    digests[way].append(hashlib.sha256(unnamed(data)).hexdigest())
                    print(f"  {name} round {r + 1} {way}: {s:.1f} s", flush=True)
        med = {w: statistics.median(v) for w, v in seconds.items()}
        rows.append({"model": name, "input": f"{channels}x{side}x{side}",
                     "seconds": seconds, "median_s": med,
                     "speedup": round(med["before"] / med["now"], 2),
                     # round 1's pair, a process's first two conversions: a later conversion in one process can
                     # differ from its first whichever way it runs (resnet8's third did, 2026-12-06)
                     "same_bytes": digests["before"][0] == digests["now"][0],
                     "all_rounds_same": len(set(digests["before"]) | set(digests["now"])) == 1})
    return {"rows": rows, "rounds": rounds,
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "date": time.strftime("%Y-%m-%d %H:%M")}


def section(r: dict) -> str:
    lines = [f"<!-- {TAG}:begin -->", "## Conversion speed (`python -m benchmarks.convert_speed`)", "",
             f"Measured {r['date']} on this host ({r['machine']['cores']} cores, shared), {r['rounds']} alternating "
             f"rounds per model in one run. One ONNX -> SavedModel -> int8 .tflite conversion calibrated on 64 images (what "
             f"each finalist a build times costs; the export's conversions calibrate on 512): before, onnx2tf wrote the SavedModel and "
             f"its own fp32 and fp16 .tflite files, which nothing read (each through `TFLiteConverter.from_keras_model`, "
             f"which serializes every layer's config, constants included); now onnx2tf only builds the Keras model and "
             f"the build writes the SavedModel as onnx2tf's signature path does.", "",
             "| model | input | before (s, median) | now (s, median) | faster | int8 .tflite the same bytes (names aside) |",
             "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['model']} (registered) | {row['input']} | {row['median_s']['before']:.1f} | "
                     f"{row['median_s']['now']:.1f} | {row['speedup']:.1f}× | "
                     f"{'yes' if row['same_bytes'] else '**no**'} |")
    varied = [row["model"] for row in r["rows"] if not row.get("all_rounds_same", True)]
    lines += ["", "The same bytes: round 1's two conversions, the first two of the process. " + (
        f"Later rounds of {', '.join(varied)} gave other bytes in both ways alike: from a process's third conversion on, "
        f"the converter can schedule independent branches in another order (resnet8's shortcut and main-path convs; "
        f"the same ops, weights and scales, and the same int8 outputs on 64 images: checked 2026-12-06). Keras numbered "
        f"the layers per process; each conversion now starts a fresh Keras session, which makes them all alike. "
        if varied else "Since 2026-12-06 each conversion starts a fresh Keras session, so every round gives the "
        "bytes a fresh process gives, names included (before, Keras numbered the layers per process, and from a "
        "process's third conversion the converter could order a residual block's branches otherwise). "),
              "The shipped files do not change (in separate processes, byte for byte, names included: checked on "
              "mobilenet_v3_small, resnet18 and shufflenet_v2_x0_5 at 96 px); only the time to make them. In a build this "
              "conversion runs once per timed finalist (host budgets), twice per export (the bundle's model and the "
              "dense reference's, cached per model), each plus the fp32 .tflite.", "", f"<!-- {TAG}:end -->"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.convert_speed", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="splice the section into BENCHMARKS.md")
    ap.add_argument("--table-only", action="store_true", help="run nothing: the section from the json")
    a = ap.parse_args(argv)
    if a.table_only:
        return publish(section(json.loads(RESULTS.read_text())), TAG, a.write)
    r = run(a.rounds)
    RESULTS.write_text(json.dumps(r, indent=1) + "\n")
    return publish(section(r), TAG, a.write)


if __name__ == "__main__":
    raise SystemExit(main())
