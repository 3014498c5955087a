"""A mobile classifier's blocks through the whole build: SE with hard-sigmoid, hard-swish, depthwise, residual adds."""
from __future__ import annotations

import collections
import json
import re

import pytest
import torch


@pytest.mark.slow
def test_mobilenetv3_blocks_ship_a_bundle_at_twice_the_dense_speed(targets_copy, tmp_path):
    """QUICK build (robustness skipped: --robust-n 0) of the tiny MobileNetV3-style net at 2x faster than its dense
    model on the rpi4 estimate: it ships,
    the shipped .tflite holds the ops the latency model priced (the op list of the *pruned* net equals the
    .tflite's), every SE stays coupled, and each op the estimate prices by assumption is named in metadata.json."""
    from edge_sparse import models, pipeline
    from edge_sparse.config import BuildConfig, TrainConfig
    from edge_sparse.latency.ops import extract_ops, tflite_ops

    p = targets_copy / "rpi4.toml"
    p.write_text(re.sub(r"(?m)^latency_budget_ms = .*$", 'latency_budget = "2x"', p.read_text()))
    cfg = BuildConfig.quick(model="tiny_mbv3", limit_train=1500, limit_eval=200, eval_size=200, robust_n=0,
                            train=TrainConfig(epochs=1), finetune=TrainConfig(epochs=1, sparsity_reg="none"))
    b = pipeline.run("rpi4", cfg, out_dir=tmp_path / "dist", cache_dir=tmp_path / "cache")
    bundle = tmp_path / "dist" / "rpi4"
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["model"]["macs"] < meta["dense"]["macs"]
    assert meta["robustness"]["n"] is None and "## Robustness" not in (bundle / "report.md").read_text()  # skipped
    lat = meta["latency_ms"]
    assert lat["predicted_p90"] <= lat["budget"] <= lat["dense_predicted_p90"] / 1.99
    assumed = lat["provenance"]["priced_by_assumption"]
    assert {"hardswish", "mulc", "relu"} <= set(assumed) and all(assumed.values())
    shipped, _ = models.load(b.dirs["finetune"] / "model")
    strip = lambda o: o.replace(act="none", name="")  # noqa: E731 (fused activations are not in the op details)
    ours = collections.Counter(strip(o).key for o in extract_ops(shipped, torch.zeros(1, 1, 28, 28)))
    assert ours == collections.Counter(strip(o).key for o in tflite_ops(bundle / "model.tflite"))
    for blk in (m for m in shipped.modules() if type(m).__name__ == "MBConv"):
        se = next((m for m in blk.modules() if type(m).__name__ == "SqueezeExcite"), None)
        if se is not None:
            dw = next(m for m in blk.block if isinstance(m, torch.nn.Conv2d) and m.groups > 1)
            assert se.fc1.in_channels == se.fc2.out_channels == dw.out_channels
