"""Device latency estimates for targets without a measured table, fitted on real device timings.

In:  a target (`rpi4`, `rpi5`, `android-arm64`) and the per-op-class fit that `edge-sparse latency check
     --target T --reference nb201 --write-fit` stored under edge_sparse/latency/reference/fit-<device>.json.
Out: `FittedEstimate`: the cost of each int8 op (`op_ms`) and the fixed cost per inference, and the
     margin the search keeps free: the fit's cross-validated 90th-percentile |error| on the reference.

The model: device_ms = const + sum over op classes c of (a_c * MMACs_c + b_c * MB_c + n_c * count_c), with
non-negative factors fitted on 1,000 real NAS-Bench-201 timings of that CPU (HW-NAS-Bench via HELP, see
reference/README.md) — so 1x1 convs, 3x3 convs, pooling and ADD each cost what they cost on that CPU,
as a function of their shapes, not of MACs alone.

The absolute scale: the reference does not state precision or threads, so only its *relative* costs are
used. The scale is set so the fitted model predicts the target's published anchor figure for
MobileNetV2-1.0-224 — the figure its [latency_model] cites (rpi4: 0.098 ms/MMAC int8 XNNPACK 4 threads;
android-arm64: quantized MobileNetV2 ~13 ms on a Cortex-A76 phone; rpi5: the rpi4 figure / 2.5, the Pi
Foundation's 2-3x). The margin covers the relative error measured on held-out reference networks, not an
error in that published figure; `make profile TARGET=... DEVICE=...` replaces both with measurements.

Op classes the reference lacks (depthwise convs, kernels other than 1x1/3x3, max pooling) are priced
with the nearest class it has (a 3x3 conv's per-MAC and per-byte cost; average pooling), stated in
`assumptions`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from edge_sparse.errors import EdgeSparseError
from edge_sparse.latency.ops import Op

FIT_DIR = Path(__file__).resolve().parent / "reference"
FIT_FORMAT = "edge_sparse.device_fit/1"
# classes the reference lacks -> the class priced instead. Elementwise and data-movement ops (activations that run
# as ops of their own, MUL, CONCATENATION, SPLIT, a channel shuffle's GATHER) are priced as ADD is, per byte moved: like
# ADD they are memory-bound int8 loops over their tensors (benchmarks/assumed_ops.py measures the rule's error on
# the host table, where every op is measured); a grouped conv as a 3x3 conv per MAC and byte.
FALLBACK = {"dwconv": "conv3x3", "convkxk": "conv3x3", "gconv": "conv3x3",
            "fcmap": "conv1x1",  # a Linear on every pixel (ConvNeXt): the GEMM of a 1x1 conv over the same pixels
            **{k: "add" for k in ("relu", "hardswish", "sigmoid", "gelu", "mul", "mulc", "concat", "split", "slice", "shuffle",
                                  "layernorm", "transpose")}}
BY_ASSUMPTION = tuple(FALLBACK)
# Per byte, those ops do not cost what ADD costs: several run outside XNNPACK (TFLite's builtin int8 kernels) or do
# more work per element. Their measured cost relative to ADD's per-byte cost on an x86 host (benchmarks/assumed_ops.py,
# all probes in one run) multiplies ADD's per-byte factor: the ratio, not the host's time, is carried to the device.
RATIOS_PATH = Path(__file__).resolve().parent / "reference" / "assumed-ops.json"


def assumed_ratios() -> dict[str, float]:
    """Op kind -> its cost per byte relative to ADD's, as measured on the host (1.0 for kinds not measured)."""
    try:
        d = json.loads(RATIOS_PATH.read_text())
    except (OSError, ValueError):
        return {}
    return {r["kind"]: float(r["median_measured_over_rule"]) for r in d.get("kinds", [])}
MAX_MARGIN = 0.35  # a fit whose held-out p90 |error| exceeds this is not usable as an estimate


def op_features(op: Op) -> dict[str, float]:
    """Features of one int8 op, in the classes and units of `check.analytic_features` (MMACs, MB, count)."""
    cls = op.cls()
    if cls == "pad":
        return {}  # XNNPACK folds PAD into the following conv
    elems_in = op.h * op.w * op.cin
    elems_out = op.out_h * op.out_w * op.cout
    if cls == "add":
        elems = 3 * elems_out
    else:
        elems = elems_in + elems_out
    f = {f"{cls}.n": 1.0, f"{cls}.mbytes": elems / 1e6}
    if op.macs:
        f[f"{cls}.mmacs"] = op.macs / 1e6
    return f


def op_mbytes(op: Op) -> float:
    """The MB an op moves, as its per-byte feature counts them (`op_features`)."""
    return next(v for k, v in op_features(op).items() if k.endswith(".mbytes"))


def mobilenet_v2_224() -> list[Op]:
    """MobileNetV2-1.0 at 224x224x3 (Sandler et al. 2018, table 2) as int8 ops: the anchor network."""
    ops = [Op("conv", 224, 224, 3, 32, 3, 2, "relu6")]
    h, c = 112, 32
    for t, cout, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                          (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            hid = c * t
            if t != 1:
                ops.append(Op("conv", h, h, c, hid, 1, 1, "relu6"))
            ops.append(Op("dwconv", h, h, hid, hid, 3, stride, "relu6"))
            h2 = -(-h // stride)
            ops.append(Op("conv", h2, h2, hid, cout, 1, 1))
            if stride == 1 and c == cout:
                ops.append(Op("add", h2, h2, cout, cout))
            h, c = h2, cout
    ops += [Op("conv", h, h, c, 1280, 1, 1, "relu6"), Op("mean", h, h, 1280, 1280), Op("fc", 1, 1, 1280, 1000)]
    return ops


@dataclass
class FittedEstimate:
    target: str
    factors: dict  # feature -> factor (reference-scale ms per unit), "const" included
    scale: float  # reference-scale ms -> this target's ms (from the anchor)
    margin: float  # held-out p90 |relative error| on the reference
    provenance: dict
    assumptions: list = field(default_factory=list)

    ratios: dict = field(default_factory=dict)  # op kind -> cost per byte relative to ADD's (assumed_ratios)

    def _raw(self, op: Op) -> float:
        if FALLBACK.get(op.cls()) == "add":  # ADD's cost per byte, times the op's measured ratio to it
            byte = self.factors.get("add.mbytes", 0.0)
            if not byte and self.factors.get("pool.mbytes"):
                # the fit left ADD no cost of its own (the Pi 4's: NB201's ADDs are collinear with its convs, and the
                # fit folded them in; a fitted ReLU or MUL factor is 0 on both devices for the same reason): anchor
                # on the fitted pooling per byte instead, an int8 loop over a tensor as well, scaled by pooling's
                # own cost relative to ADD's measured on the host
                byte = self.factors["pool.mbytes"] / self.ratios.get("avgpool", 1.0)
            return byte * op_mbytes(op) * self.ratios.get(op.kind, 1.0)
        return self._raw_features(op)

    def _raw_features(self, op: Op) -> float:
        total = 0.0
        for k, v in op_features(op).items():
            cls, unit = k.split(".")
            fk = k if k in self.factors else f"{FALLBACK.get(cls)}.{unit}"  # an unknown class and unit cost 0
            total += self.factors.get(fk, 0.0) * v
        return total

    def op_ms(self, op: Op) -> float:
        return self.scale * self._raw(op)

    @property
    def overhead_ms(self) -> float:
        return self.scale * self.factors.get("const", 0.0)

    def predict_ops(self, ops: Sequence[Op]) -> float:
        return self.overhead_ms + sum(self.op_ms(o) for o in ops)


def fit_path(name: str) -> Path:
    return FIT_DIR / f"fit-{name}.json"


def write_fit(result: dict, path: Optional[Path] = None) -> Path:
    """Store a `check.run_check` result as the fit a target's estimate uses (validated, atomic)."""
    from edge_sparse import _io

    held = result["held_out"]
    if not held["p90_abs_err"] <= MAX_MARGIN:
        raise EdgeSparseError(f"{result['target']}: held-out p90 |error| {held['p90_abs_err']:.1%} exceeds "
                              f"{MAX_MARGIN:.0%}; refusing to store this fit as a device estimate")
    p = Path(path) if path else fit_path(result["target"])
    _io.write_json(p, {"format": FIT_FORMAT, "target": result["target"], "device": result["device"],
                       "reference": result["reference"], "reference_source": result["reference_source"],
                       "features": result["features"], "weighting": result["weighting"], "folds": result["folds"],
                       "sample": result["sample"], "held_out": held, "factors": result["factors"]})
    return p


def load(target) -> Optional[FittedEstimate]:
    """The fitted estimate of `target` (a Target), or None when it has no reference fit."""
    ref = target.latency_fit
    if ref is None:
        return None
    if target.latency_model is None:
        raise EdgeSparseError(f"{target.path}: key 'latency_fit' needs a [latency_model]: the fit's shape is scaled to "
                              f"its published figure")
    p = fit_path(ref)
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        have = sorted(f.stem[len("fit-"):] for f in FIT_DIR.glob("fit-*.json"))
        raise EdgeSparseError(f"{target.path}: key 'latency_fit' is {ref!r}, but there is no {p}; "
                              f"valid: {', '.join(have) or '(none)'}") from None
    except ValueError as e:
        raise EdgeSparseError(f"{p}: not valid JSON ({e}); restore it or re-run "
                              f"`edge-sparse latency check --target {ref} --reference nb201 --write-fit`") from None
    if d.get("format") != FIT_FORMAT or not isinstance(d.get("factors"), dict):
        raise EdgeSparseError(f"{p}: not a device fit (format must be {FIT_FORMAT!r})")
    margin = float(d["held_out"]["p90_abs_err"])
    if not 0 <= margin <= MAX_MARGIN:
        raise EdgeSparseError(f"{p}: held-out p90 |error| {margin:.1%} is outside [0, {MAX_MARGIN:.0%}]")
    est = FittedEstimate(target.name, {k: float(v) for k, v in d["factors"].items()}, 1.0, margin, {},
                         ratios=assumed_ratios())
    anchor_ops = mobilenet_v2_224()
    macs = sum(o.macs for o in anchor_ops)
    anchor_ms = target.latency_model.ms_per_mmac * macs / 1e6
    est.scale = anchor_ms / est.predict_ops(anchor_ops)
    h = d["held_out"]
    est.provenance = {
        "source": "estimate", "method": "per-op-class factors fitted on real device timings, scaled to a published figure",
        "shape_from": f"{d['device']}: {d['reference_source']}",
        "fit": str(p.relative_to(FIT_DIR.parent.parent.parent)) if p.is_relative_to(FIT_DIR.parent.parent.parent) else str(p),
        "held_out": {k: round(float(h[k]), 4) for k in ("spearman", "median_abs_err", "within_15", "p90_abs_err")},
        "folds": d["folds"], "networks": d["sample"]["n"],
        "anchor": f"MobileNetV2-1.0-224 ({macs / 1e6:.0f} M MACs) = {anchor_ms:.1f} ms, the figure of [latency_model] "
                  f"in targets/{target.name}.toml",
        "scale": round(est.scale, 6),
    }
    if target.name != ref:
        est.assumptions.append(f"the shape of {ref}'s fit ({d['device']}) is used for {target.name} ({target.cpu}); "
                               f"only the anchor figure is {target.name}'s own")
    if target.name == "android-arm64":
        est.assumptions.append("the Pixel 3's Cortex-A75 shape is used for the Cortex-A76 class this profile describes: "
                               "both are Armv8.2-A cores with the int8 dot-product instructions XNNPACK uses; Arm "
                               "quotes the A76 ~35% faster than the A75, which the anchor figure (an A76 phone) carries")
    est.assumptions.append("depthwise, grouped and kxk convs are priced with the 3x3 conv's per-MAC and per-byte "
                           "factors, max pooling as average pooling, and elementwise / data-movement ops (hard-swish, "
                           "sigmoid, GELU, standalone ReLU, MUL, the SE gate, CONCATENATION, slices, a channel "
                           "shuffle's GATHER) with ADD's per-byte factor times each kind's cost relative to ADD "
                           "measured on an x86 host (edge_sparse/latency/reference/assumed-ops.json): the reference "
                           "has none of them")
    return est
