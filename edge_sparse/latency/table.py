"""Latency tables: what each int8 op costs on one CPU, with one runtime and thread count, measured.

In:  probe timings (`bench.py --probes` JSON) for a probe suite; a list of `Op`s to price.
Out: a `LatencyTable` (JSON, `edge_sparse.latency_table/1`): the fixed per-invoke cost, each probed
     op's cost (its probe's time minus the overhead probe's, or for an op probed in context minus its context's:
     probes.baseline), and the provenance (CPU, runtime and
     version, threads, date). `table.op_ms(op)` prices any op of a probed family.
Run: built by `edge_sparse.latency.host.host_table` (this machine, cached) or `make profile` (a device).

Coverage. A family is one op kind at one input resolution, kernel, stride and fused activation; its
members differ only in channel counts. Each family is probed on a grid of the target's channel
multiple: every multiple up to 8 of them, beyond that 8 evenly spaced multiples including both ends.
Between grid points a cost is interpolated linearly in each channel axis (bilinear for convs and
FULLY_CONNECTED, linear for one-width ops): XNNPACK's time grows close to linearly with a width
between its tile boundaries, and the grid's spacing is what a test measures against true probes.
An op outside every probed family is an error naming it (never a silent zero); the host table
measures it instead (`host_table` probes what is missing).
"""
from __future__ import annotations

import bisect
import math
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from edge_sparse import _io
from edge_sparse.errors import EdgeSparseError
from edge_sparse.latency.ops import Op

TABLE_FORMAT = "edge_sparse.latency_table/1"
ONE_WIDTH = {"dwconv", "pwpair", "pad", "add", "mean", "maxpool", "avgpool", "relu", "hardswish", "sigmoid", "gelu", "mul", "mulc",
             "concat", "split", "slice", "shuffle", "layernorm", "transpose"}
GRID_POINTS = 8
_CLAMPS = ("none", "relu", "relu6")  # fused activations XNNPACK applies in the op's own kernel


def grid(max_c: int, multiple: int, points: int = GRID_POINTS) -> list[int]:
    """Channel counts probed for a width that may be pruned down to any multiple of `multiple`; a width that is
    not a multiple (GhostNet's 36) keeps itself as the top of its grid: the allocation snaps it down to one."""
    if max_c <= multiple:
        return [max_c]  # not prunable on this grid (e.g. the image's channels)
    full = list(range(multiple, max_c + 1, multiple))
    if max_c % multiple:
        full.append(max_c)
    if len(full) <= points:
        return full
    idx = np.unique(np.round(np.linspace(0, len(full) - 1, points)).astype(int))
    return [full[i] for i in idx]


def grid_ops(ops: Sequence[Op], multiple: int, fixed_in: int, fixed_out: Optional[int] = None) -> list[Op]:
    """Every op a width choice on the `multiple` grid can produce from the dense `ops`, as a full grid per family.

    Ops of one family (same kind, resolution, kernel, stride, activation) share their grid: its input
    axis is the union of each member's input grid, likewise its output axis, and every (in, out) pair
    of the two axes is probed, so interpolation always finds the four corners it needs. The image's channels
    (`fixed_in`) and the class count (`fixed_out`, when not a multiple) stay as they are.
    """
    axes: dict[str, list] = {}
    for op in ops:
        if op.kind == "pad":  # folded into the conv that follows (LatencyTable.op_ms)
            continue
        a = axes.setdefault(op.family, [op, set(), set()])
        m = math.lcm(multiple, op.groups)  # a grouped conv / shuffle keeps its group count: widths divisible by it
        a[1].update([op.cin] if op.cin == fixed_in else grid(op.cin, m))  # the image's channels
        a[2].update([op.cout] if op.cout == fixed_out and op.cout % m else grid(op.cout, m))  # the class count
    out: dict[str, Op] = {}
    for proto, ins, outs in axes.values():
        if proto.kind in ONE_WIDTH:
            # a concat of n tensors has at least n channels: its narrowest probe has n
            pairs = [(c, c) for c in sorted({max(c, proto.inputs if proto.kind == "concat" else 1) for c in ins | outs})]
        else:
            pairs = [(ci, co) for ci in sorted(ins) for co in sorted(outs)]
        for ci, co in pairs:
            o = proto.replace(cin=ci, cout=co, name="")
            out[o.key] = o
    return list(out.values())


@dataclass
class LatencyTable:
    """Measured per-op costs (ms, p50 and p90) on one CPU + runtime + thread count."""

    provenance: dict  # cpu, machine, runtime, runtime_version, threads, date, source, (device, emulated)
    overhead: dict  # {"p50": ms, "p90": ms}: one invoke of the overhead probe
    entries: dict = field(default_factory=dict)  # op key -> {"p50": ms, "p90": ms} (the op's own cost)
    path: Optional[str] = None

    # ------------------------------------------------------------------ build / io
    @classmethod
    def from_timings(cls, suite: dict, timings: dict, provenance: dict) -> "LatencyTable":
        """Turn `bench.py --probes` timings of `suite` (its probes.json) into a table."""
        t = timings.get("timings", {})
        if "overhead" not in t:
            raise EdgeSparseError("probe timings lack the 'overhead' probe; the fixed per-invoke cost is unknown")
        ov = {"p50": float(t["overhead"]["p50"]), "p90": float(t["overhead"]["p90"])}
        entries = {}
        for p in suite["probes"]:
            if p["name"] == "overhead" or p["name"] not in t:
                continue
            r = t[p["name"]]
            if p.get("minus"):  # probed in context (probes.baseline): its cost is the probe less the context's
                if p["minus"] not in t:
                    continue
                b = t[p["minus"]]
                entries[p["key"]] = {"p50": max(0.0, float(r["p50"]) - float(b["p50"])),
                                     "p90": max(0.0, float(r["p90"]) - float(b["p90"]))}
                continue
            entries[p["key"]] = {"p50": max(0.0, float(r["p50"]) - ov["p50"]),
                                 "p90": max(0.0, float(r["p90"]) - ov["p50"])}
        return cls(dict(provenance), ov, entries)

    def merged(self, other: "LatencyTable") -> "LatencyTable":
        for k in ("runtime", "runtime_version", "threads", "cpu"):
            if self.provenance.get(k) != other.provenance.get(k):
                raise EdgeSparseError(f"cannot merge latency tables measured with different {k}: "
                                      f"{self.provenance.get(k)!r} vs {other.provenance.get(k)!r}")
        return LatencyTable(self.provenance, self.overhead, {**self.entries, **other.entries}, self.path)

    def to_dict(self) -> dict:
        return {"format": TABLE_FORMAT, "provenance": self.provenance, "overhead": self.overhead,
                "entries": dict(sorted(self.entries.items()))}

    def save(self, path: Path) -> None:
        _io.write_json(Path(path), self.to_dict())
        self.path = str(path)

    @classmethod
    def load(cls, path: Path) -> "LatencyTable":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise EdgeSparseError(f"{p}: no such latency table") from None
        except ValueError as e:
            raise EdgeSparseError(f"{p}: not valid JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != TABLE_FORMAT:
            raise EdgeSparseError(f"{p}: not a latency table (format must be {TABLE_FORMAT!r})")
        for k in ("provenance", "overhead", "entries"):
            if not isinstance(d.get(k), dict):
                raise EdgeSparseError(f"{p}: key {k!r} must be an object")
        for k in ("runtime", "runtime_version", "threads", "date", "source"):
            if k not in d["provenance"]:
                raise EdgeSparseError(f"{p}: provenance lacks {k!r}")
        for key, v in [("overhead", d["overhead"]), *d["entries"].items()]:
            if not isinstance(v, dict) or not all(isinstance(v.get(q), (int, float)) and v[q] >= 0 and np.isfinite(v[q])
                                                  for q in ("p50", "p90")):
                raise EdgeSparseError(f"{p}: entry {key!r} must hold non-negative finite 'p50' and 'p90' (ms)")
        return cls(d["provenance"], d["overhead"], d["entries"], str(p))

    def check_runtime(self, runtime_version: str, threads: int, where: str) -> None:
        """Refuse a table measured with another runtime version or thread count than `where` runs."""
        got = (str(self.provenance.get("runtime_version")), int(self.provenance.get("threads", -1)))
        if got != (str(runtime_version), int(threads)):
            raise EdgeSparseError(
                f"{self.path or 'latency table'}: measured with runtime {got[0]} and {got[1]} threads, but {where} "
                f"uses runtime {runtime_version} and {threads} threads; re-profile (`make profile`)")

    # ------------------------------------------------------------------ pricing
    def _families(self) -> dict:
        fams = getattr(self, "_fam_cache", None)
        if fams is None or fams[0] != len(self.entries):
            by: dict[str, dict] = {}
            for key, v in self.entries.items():
                kind, hw, ch, ks, act = key.split(":")
                cin, cout = (int(x) for x in ch.split(">"))
                by.setdefault(f"{kind}:{hw}:{ks}:{act}", {})[(cin, cout)] = v
            fams = (len(self.entries), by)
            self._fam_cache = fams
        return fams[1]

    def covers(self, op: Op) -> bool:
        try:
            self.op_ms(op)
            return True
        except EdgeSparseError:
            return False

    def op_ms(self, op: Op, q: str = "p50") -> float:
        """The cost of `op` (ms): measured, or interpolated between probed widths of its family.

        A PAD before a strided conv costs nothing of its own: XNNPACK folds an explicit PAD into the
        convolution that consumes it (measured here: PAD + 3x3/s2 conv 5.39 us, the conv alone on the
        padded input 5.42 us, the PAD alone 9.3 us), so the conv's probe, on the padded input, holds it.
        """
        if op.kind == "pad":
            return 0.0
        v = self.entries.get(op.replace(name="").key)
        if v is not None:
            return float(v[q])
        pts = self._families().get(op.family)
        if not pts and op.act in _CLAMPS and op.kind in ("conv", "dwconv", "add", "fc"):
            # a ReLU / ReLU6 fused where the table's probes have another clamp or none (a residual block dropped
            # whole lets the next ReLU fuse into the op before it): XNNPACK clamps in the same kernel, at no cost
            pts = next((p for p in (self._families().get(op.replace(act=a).family) for a in _CLAMPS) if p), None)
        if not pts:
            raise EdgeSparseError(f"the latency table {self.path or ''} has no probes for {op.key} "
                                  f"({op.name or op.kind}); profile this architecture first")
        if op.kind in ONE_WIDTH:
            xs = sorted(c for c, _ in pts)
            return _interp1(xs, [pts[(c, c)][q] for c in xs], op.cin, op)
        cins = sorted({c for c, _ in pts})
        couts = sorted({c for _, c in pts})
        lo_i, hi_i = _bracket(cins, op.cin, op)
        lo_o, hi_o = _bracket(couts, op.cout, op)
        corners = [(a, b) for a in (lo_i, hi_i) for b in (lo_o, hi_o)]
        if all(c in pts for c in corners):
            fi = 0.0 if hi_i == lo_i else (op.cin - lo_i) / (hi_i - lo_i)
            fo = 0.0 if hi_o == lo_o else (op.cout - lo_o) / (hi_o - lo_o)
            v00, v01, v10, v11 = (pts[c][q] for c in corners)
            return float((1 - fi) * ((1 - fo) * v00 + fo * v01) + fi * ((1 - fo) * v10 + fo * v11))
        # probes of several architectures share a family but not their widths (one model's grid over input widths
        # A, another's over B): interpolate along the output width within each probed input width that brackets
        # it, then between the nearest such input widths below and above
        def row(cin: int) -> Optional[float]:
            xs = sorted(c for ci, c in pts if ci == cin)
            if not xs or not xs[0] <= op.cout <= xs[-1]:
                return None
            return _interp1(xs, [pts[(cin, c)][q] for c in xs], op.cout, op)

        below = next(((c, v) for c in reversed(cins) if c <= op.cin for v in [row(c)] if v is not None), None)
        above = next(((c, v) for c in cins if c >= op.cin for v in [row(c)] if v is not None), None)
        if below is None or above is None:
            raise EdgeSparseError(f"the latency table has no grid around {op.key}; profile this architecture first")
        if below[0] == above[0]:
            return float(below[1])
        f = (op.cin - below[0]) / (above[0] - below[0])
        return float((1 - f) * below[1] + f * above[1])

    def predict(self, ops: Sequence[Op]) -> dict:
        """p50/p90 of one invoke of a model made of `ops`, and each op's p50 (ms)."""
        per = [self.op_ms(o) for o in ops]
        p50 = float(self.overhead["p50"] + sum(per))
        return {"p50": p50, "p90": p50 * self.jitter(p50), "per_op": per}

    def jitter(self, p50_ms: float, anchor: Optional[tuple[float, float]] = None) -> float:
        """p90 / p50 of one invoke that takes `p50_ms`, read off this table's probes of similar length.

        A model's p90 is not the sum of its ops' p90s (their slow runs rarely coincide). Its tail is
        mostly preemption and cache misses, whose share grows with the invoke's length (on the 2-core
        EPYC host: 1.04 for 10-100 us probes, 1.09 at 0.2-0.5 ms, 1.11 at 0.5-1 ms): the median ratio
        of the probes (>= 2 us) in each octave of invoke time, interpolated in log time, held flat
        beyond the longest and shortest octaves. `anchor` (p50 ms, p90 / p50 of a whole model timed on this machine:
        a host build's dense model) is one more point of the curve, where it is: the probes end at ~1 ms, and beyond
        them the ratio falls on this Xeon (1.03 for a 3 ms MobileNetV2 against 1.13 for 0.5-1 ms probes), so holding
        the longest octave's ratio over-priced long models' p90 by up to 15 %.
        """
        xs, ys = self._jitter_curve(anchor if anchor is not None and anchor[0] > 0 else None)
        if len(xs) == 1:
            return ys[0]
        return float(np.interp(np.log2(max(p50_ms, 1e-9)), xs, ys))

    def _jitter_curve(self, anchor: Optional[tuple[float, float]] = None) -> tuple[list[float], list[float]]:
        """`jitter`'s points (log2 ms, p90 / p50), read once per state of the table and anchor: a search asks for it per
        trial."""
        ov = self.overhead["p50"]
        state = (id(self.entries), len(self.entries), ov, anchor)
        cached = getattr(self, "_jitter_cache", None)
        if cached is not None and cached[0] == state:
            return cached[1]
        from edge_sparse.latency.probes import priced_in_context

        pts = sorted((v["p50"] + ov, (v["p90"] + ov) / (v["p50"] + ov)) for k, v in self.entries.items()
                     if v["p50"] >= 0.002 and not priced_in_context(k))  # a probe's own tail, not a difference
        octaves: dict[int, list[float]] = {}
        for t, r in pts:
            octaves.setdefault(int(np.floor(np.log2(t))), []).append(r)
        xs, ys = [], []
        for o in sorted(octaves):
            if len(octaves[o]) >= 5:  # an octave of fewer probes says more about noise than about length
                xs.append(o + 0.5)
                ys.append(float(np.median(octaves[o])))
        if not xs:  # one flat ratio: the median of every probe (1.0 for a table without probes)
            xs, ys = [0.0], [float(np.median([r for _, r in pts])) if pts else 1.0]
        if anchor is not None:  # a whole model's own ratio, in place of the octave it falls in
            ax = float(np.log2(anchor[0]))
            curve = sorted([(x, y) for x, y in zip(xs, ys) if abs(x - ax) >= 0.5] + [(ax, float(anchor[1]))])
            xs, ys = [x for x, _ in curve], [y for _, y in curve]
        self._jitter_cache = (state, (xs, ys))
        return xs, ys


def _bracket(xs: list[int], x: int, op: Op) -> tuple[int, int]:
    if x < xs[0] or x > xs[-1]:
        raise EdgeSparseError(f"the latency table's probes of {op.family} span channels {xs[0]}..{xs[-1]}; "
                              f"{op.key} is outside them")
    i = bisect.bisect_left(xs, x)
    if xs[i] == x:
        return x, x
    return xs[i - 1], xs[i]


def _interp1(xs: list[int], ys: list[float], x: int, op: Op) -> float:
    lo, hi = _bracket(xs, x, op)
    if lo == hi:
        return float(ys[xs.index(lo)])
    f = (x - lo) / (hi - lo)
    return float((1 - f) * ys[xs.index(lo)] + f * ys[xs.index(hi)])


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def uncovered(table: Optional[LatencyTable], ops: Iterable[Op]) -> list[Op]:
    return [o for o in ops if table is None or not table.covers(o)]
