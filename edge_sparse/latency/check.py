"""A latency estimate checked against real device timings: the NAS-Bench-201 reference (Pi 4, Pixel 3).

In:  a target with reference measurements (`rpi4` -> Raspberry Pi 4, `android-arm64` -> Pixel 3) and a feature
     function `features(model) -> {op_class: value}` (e.g. host-estimated ms per op class, or the analytic
     MAC / byte counts of `analytic_features`).
Out: `run_check(...)` -> a dict: per-op-class device factors fitted with non-negative least squares
     (device_ms ~ const + sum_c factor_c * feature_c), their k-fold held-out accuracy (Spearman, median |error|,
     share within +-10/15/20 %, p90 |error|), the worst misses by op mix, and the factors fitted on the whole
     sample for use as the device estimate. `format_report(result)` prints it.
Run: `edge-sparse latency check --target rpi4 --reference nb201 [--sample 1000] [--folds 5] [--json out.json]`
     or `python -c "from edge_sparse.latency import check; print(check.format_report(check.run_check('rpi4')))"`

What is checked: the reference networks (edge_sparse/latency/reference/, 15,625 NAS-Bench-201 CIFAR networks
timed with TFLite on both devices; its README has the source, licence and what it does not state) are rebuilt
with `nb201.build` (the ops that ran on the device, see nb201's docstring), a deterministic stratified sample
of >= 1,000 non-degenerate ones is drawn, each network's features are computed (cached under
build/cache/nb201-features/, keyed by the feature function's name and version), and the fit is
cross-validated. The fitting choice (plain, relative-error, or relative-L1 weighting) is the one with the
lowest held-out median |error|, reported with the others. A fit whose held-out median |error| exceeds
`max_median_error` (25 %) is refused with an error, never returned as an estimate.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from edge_sparse.errors import EdgeSparseError

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


@dataclass(frozen=True)
class _Reference:
    file: str  # under REFERENCE_DIR; .csv or .csv.gz
    header: tuple[str, ...]  # exact CSV header
    rows: int  # expected data rows
    sha256: str  # of the (decompressed) CSV text as shipped
    what: str  # one line for reports


REFERENCES = {
    "nb201": _Reference(
        file="nb201-device-latency.csv.gz", header=("index", "arch", "rpi4_ms", "pixel3_ms"), rows=15625,
        sha256="7791a5e80e016ea8f64ef993465ba5fbf357f2342b1a86c8f40a98ff8486ab16",
        what="HW-NAS-Bench (Li et al., ICLR 2021) TFLite timings of the 15,625 NAS-Bench-201 CIFAR networks, "
             "via the HELP repository (MIT)"),
}

# target -> (reference column, device the column was measured on)
TARGETS = {
    "rpi4": ("rpi4_ms", "Raspberry Pi 4 (Cortex-A72)"),
    "android-arm64": ("pixel3_ms", "Pixel 3 (Cortex-A75 big cores)"),
}

Weighting = Literal["abs", "rel", "rel-l1"]
WEIGHTINGS: tuple[str, ...] = ("abs", "rel", "rel-l1")
FeatureFn = Callable[..., Mapping[str, float]]


class RefRow(NamedTuple):
    index: int  # NAS-Bench-201 architecture index
    arch: str  # cell string
    rpi4_ms: float  # Raspberry Pi 4, TFLite, one image
    pixel3_ms: float  # Pixel 3 CPU, TFLite, one image


# ------------------------------------------------------------------------------------------- reference


_LOADED: dict[tuple, tuple[RefRow, ...]] = {}


def load_reference(name: str = "nb201", path: Optional[str | Path] = None) -> list[RefRow]:
    """The reference measurements as rows (index, arch, rpi4_ms, pixel3_ms), validated line by line.

    `path` replaces the shipped file (same format, `.csv` or `.csv.gz`). A missing, truncated or malformed
    file raises EdgeSparseError naming the file, the line and what is wrong."""
    if name not in REFERENCES:
        raise EdgeSparseError(f"unknown reference {name!r}; references: {', '.join(REFERENCES)}")
    spec = REFERENCES[name]
    p = Path(path) if path is not None else REFERENCE_DIR / spec.file
    try:
        st = p.stat()
    except OSError:
        raise EdgeSparseError(f"reference {name}: {p} is missing (it ships with edge_sparse under "
                              f"edge_sparse/latency/reference/; reinstall the package or restore the file)") from None
    key = (name, str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = tuple(_parse_reference(spec, name, p))
    return list(_LOADED[key])


def _parse_reference(spec: _Reference, name: str, p: Path) -> list[RefRow]:
    from edge_sparse.latency import nb201

    try:
        raw = p.read_bytes()
    except OSError as e:
        raise EdgeSparseError(f"reference {name}: cannot read {p}: {e.strerror or e}") from None
    if p.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except EOFError:
            raise EdgeSparseError(f"{p}: truncated (the gzip stream ends early)") from None
        except (OSError, zlib.error) as e:
            raise EdgeSparseError(f"{p}: not a valid gzip file ({e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EdgeSparseError(f"{p}: not UTF-8 text (byte {e.start})") from None
    if not text:
        raise EdgeSparseError(f"{p}: empty file, expected a header and {spec.rows} rows")
    lines = text.splitlines(keepends=True)
    if not lines[-1].endswith(("\n", "\r")):
        raise EdgeSparseError(f"{p}, line {len(lines)}: truncated (the last line ends without a newline: "
                              f"{lines[-1][:60]!r})")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = tuple(next(reader))
    if header != spec.header:
        raise EdgeSparseError(f"{p}, line 1: header {','.join(header)!r}, expected {','.join(spec.header)!r}")
    rows: list[RefRow] = []
    seen: dict[str, int] = {}
    for fields in reader:
        line = reader.line_num
        where = f"{p}, line {line}"
        if len(fields) != len(spec.header):
            raise EdgeSparseError(f"{where}: {len(fields)} field(s), expected {len(spec.header)} "
                                  f"({','.join(spec.header)})")
        idx_s, arch, *lat_s = fields
        try:
            idx = int(idx_s)
        except ValueError:
            raise EdgeSparseError(f"{where}: index {idx_s!r} is not an integer") from None
        if idx != len(rows):
            raise EdgeSparseError(f"{where}: index {idx} out of order, expected {len(rows)}")
        try:
            nb201.parse(arch)
        except EdgeSparseError as e:
            raise EdgeSparseError(f"{where}: {e}") from None
        if arch in seen:
            raise EdgeSparseError(f"{where}: cell {arch!r} repeats line {seen[arch]}")
        seen[arch] = line
        vals = []
        for col, s in zip(spec.header[2:], lat_s):
            try:
                v = float(s)
            except ValueError:
                raise EdgeSparseError(f"{where}: {col} {s!r} is not a number") from None
            if not math.isfinite(v) or v <= 0:
                raise EdgeSparseError(f"{where}: {col} {s!r} must be a positive latency in ms")
            vals.append(v)
        rows.append(RefRow(idx, arch, *vals))
    if len(rows) != spec.rows:
        raise EdgeSparseError(f"{p}: truncated or incomplete: {len(rows)} data rows, expected {spec.rows} "
                              f"(last index read: {len(rows) - 1})")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec.sha256:
        raise EdgeSparseError(f"{p}: well-formed but not the shipped measurements (sha256 {digest[:16]}..., "
                              f"expected {spec.sha256[:16]}...): a value was changed or cut short")
    return rows


# --------------------------------------------------------------------------------------------- metrics


def _ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inv]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson on average ranks); nan when either side is constant."""
    rx, ry = _ranks(np.asarray(x, dtype=float)), _ranks(np.asarray(y, dtype=float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def metrics(pred: Sequence[float], true: Sequence[float]) -> dict:
    """How well `pred` matches `true` (both ms): rank correlation and relative errors (pred / true - 1)."""
    p, t = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    if p.shape != t.shape or p.ndim != 1 or p.size < 2:
        raise EdgeSparseError(f"metrics: need two 1-D arrays of the same length >= 2, got {p.shape} and {t.shape}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(t)) and np.all(t > 0)):
        raise EdgeSparseError("metrics: predictions must be finite and true latencies finite and > 0")
    rel = p / t - 1.0
    a = np.abs(rel)
    return {
        "n": int(p.size),
        "spearman": spearman(p, t),
        "median_abs_err": float(np.median(a)),
        "within_10": float(np.mean(a <= 0.10)),
        "within_15": float(np.mean(a <= 0.15)),
        "within_20": float(np.mean(a <= 0.20)),
        "p90_abs_err": float(np.percentile(a, 90)),
        "median_err": float(np.median(rel)),  # signed: > 0 predicts too slow
    }


# ------------------------------------------------------------------------------------------------ NNLS


def nnls(A: np.ndarray, b: np.ndarray, max_iter: Optional[int] = None) -> np.ndarray:
    """min ||A x - b||_2 subject to x >= 0 (Lawson & Hanson's active-set method; scipy is not a dependency).

    Columns are scaled to unit norm first, so features in MMAC and in ms mix without harm."""
    A = np.asarray(A, dtype=float)
    b = np.asarray(b, dtype=float)
    m, n = A.shape
    norms = np.linalg.norm(A, axis=0)
    norms[norms == 0] = 1.0
    As = A / norms
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 10 * np.finfo(float).eps * max(m, n) * max(1.0, np.abs(As).sum(axis=0).max())
    max_iter = max_iter or 3 * n + 30
    w = As.T @ (b - As @ x)
    it = 0
    while (~passive).any() and w[~passive].max() > tol:
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            it += 1
            if it > max_iter:
                raise EdgeSparseError(f"nnls: no convergence in {max_iter} iterations ({m}x{n} system)")
            s = np.zeros(n)
            s[passive] = np.linalg.lstsq(As[:, passive], b, rcond=None)[0]
            if s[passive].min() > 0:
                break
            neg = passive & (s <= 0)
            alpha = np.min(x[neg] / (x[neg] - s[neg]))
            x = x + alpha * (s - x)
            passive &= x > tol
            x[~passive] = 0.0
        x = s
        w = As.T @ (b - As @ x)
    return x / norms


def fit_factors(X: np.ndarray, y: np.ndarray, weighting: Weighting = "rel-l1") -> np.ndarray:
    """Non-negative factors f with y ~ X f.

    abs:    least squares on ms (large networks dominate);
    rel:    least squares on relative error (rows divided by y);
    rel-l1: least absolute relative error, by iteratively reweighted NNLS from the `rel` solution (robust to
            the few networks whose timing does not follow the op counts)."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if weighting == "abs":
        return nnls(X, y)
    if weighting not in WEIGHTINGS:
        raise EdgeSparseError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    Xr = X / y[:, None]
    f = nnls(Xr, np.ones_like(y))
    if weighting == "rel":
        return f
    for _ in range(30):
        r = np.abs(Xr @ f - 1.0)
        sw = 1.0 / np.sqrt(np.maximum(r, 1e-3))
        g = nnls(Xr * sw[:, None], sw)
        done = np.allclose(g, f, rtol=1e-6, atol=1e-12)
        f = g
        if done:
            break
    return f


def fold_ids(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """Fold number of each of n items: a seeded permutation cut into `folds` near-equal parts."""
    if folds < 2 or folds > n // 2:
        raise EdgeSparseError(f"folds must be between 2 and {n // 2} for {n} networks, got {folds}")
    ids = np.empty(n, dtype=int)
    for k, part in enumerate(np.array_split(np.random.default_rng(seed).permutation(n), folds)):
        ids[part] = k
    return ids


def cross_validate(X: np.ndarray, y: np.ndarray, folds: int = 5, weighting: Weighting = "rel-l1",
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Held-out predictions (each row predicted by the fit on the other folds) and each row's fold."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    ids = fold_ids(len(y), folds, seed)
    pred = np.empty_like(y)
    for k in range(folds):
        test = ids == k
        pred[test] = X[test] @ fit_factors(X[~test], y[~test], weighting)
    return pred, ids


# ------------------------------------------------------------------------------------------- sampling


def stratified_sample(rows: Sequence[RefRow], column: str, n: int, seed: int = 0) -> tuple[list[RefRow], int]:
    """n non-degenerate rows spread over the device latency range, and how many degenerate rows were excluded.

    The non-degenerate rows are sorted by `column` and cut into n strata of (near) equal count; one row is drawn
    from each with a seeded generator, so the sample covers the whole range evenly in rank and is the same on
    every run. n >= the population returns all of it (sorted by index)."""
    from edge_sparse.latency import nb201

    if n < 1:
        raise EdgeSparseError(f"sample size must be >= 1, got {n}")
    pool = [r for r in rows if not nb201.cell_info(r.arch).degenerate]
    excluded = len(rows) - len(pool)
    if n >= len(pool):
        return sorted(pool, key=lambda r: r.index), excluded
    order = sorted(pool, key=lambda r: (getattr(r, column), r.index))
    rng = np.random.default_rng(seed)
    picked = [part[int(rng.integers(len(part)))] for part in np.array_split(np.arange(len(order)), n)]
    return sorted((order[i] for i in picked), key=lambda r: r.index), excluded


# ------------------------------------------------------------------------------------------ repeatability


def repeatability(rows: Sequence[RefRow], column: str, min_group: int = 3) -> dict:
    """How well the reference agrees with itself: the ceiling for any estimate built from the network's graph.

    Networks whose cells differ only in edges that do not run (`nb201.cell_info(...).executed` equal) run the
    identical graph, so an estimate that sees the graph must give them one latency. Over every group of at
    least `min_group` such networks, each member's |latency / group median - 1| is what that best single value
    misses by: its share within +-10/15/20 % bounds from above what any graph-based estimate can reach on them
    (these networks are the cheaper ones, cells with `none` or unused edges). Also per latency quartile of
    the group medians, and the correlation of the deviations between the two devices (near 0 for timing noise
    of each device's own runs; near 1 if the same networks were off on both, e.g. an op we think is dropped
    that ran on both)."""
    from edge_sparse.latency import nb201

    groups: dict[tuple, list[RefRow]] = {}
    for r in rows:
        info = nb201.cell_info(r.arch)
        if not info.degenerate:
            groups.setdefault(info.executed, []).append(r)
    dev, at, other = [], [], []
    cols = [c for c, _ in TARGETS.values()]
    for members in groups.values():
        if len(members) < min_group:
            continue
        v = np.array([getattr(r, column) for r in members])
        dev += list(v / np.median(v) - 1.0)
        at += [float(np.median(v))] * len(v)
        w = np.array([getattr(r, next(c for c in cols if c != column)) for r in members])
        other += list(w / np.median(w) - 1.0)
    if len(dev) < 2:
        return {"n": len(dev)}
    d, at_a = np.abs(np.array(dev)), np.array(at)
    edges = np.quantile(at_a, [0, 0.25, 0.5, 0.75, 1.0])
    quart = []
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        m = (at_a >= lo) & ((at_a < hi) if k < 3 else (at_a <= hi))
        if m.any():
            quart.append({"ms": [float(lo), float(hi)], "n": int(m.sum()), "within_15": float(np.mean(d[m] <= 0.15))})
    return {"n": int(d.size), "groups": sum(1 for g in groups.values() if len(g) >= min_group), "min_group": min_group,
            "median_abs_dev": float(np.median(d)), "within_10": float(np.mean(d <= 0.10)),
            "within_15": float(np.mean(d <= 0.15)), "within_20": float(np.mean(d <= 0.20)),
            "p90_abs_dev": float(np.percentile(d, 90)), "by_quartile": quart,
            "cross_device_corr": float(np.corrcoef(dev, other)[0, 1])}


# ------------------------------------------------------------------------------------------- features


def analytic_features(model) -> dict[str, float]:
    """Per op class of the int8 graph: MACs (millions), activation bytes in + out (MB at int8) and op count.

    Classes: conv3x3, conv1x1, convkxk, dwconv, pool, mean, fc, add, mul (the x*0 of `none`), relu (standalone)
    and bn (a BatchNorm not after a conv: not foldable). A BatchNorm after a conv is folded, as TFLite does.
    The baseline the measured-kernel estimate must beat; the model is traced once with torch.fx on a
    1x3x32x32 input (NAS-Bench-201's)."""
    import operator

    import torch
    import torch.nn as nn
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    from edge_sparse.latency.nb201 import INPUT_SHAPE

    gm = symbolic_trace(model)
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(INPUT_SHAPE))
    feats: dict[str, float] = {}

    def add(cls: str, macs: float, elems: float) -> None:
        feats[f"{cls}.n"] = feats.get(f"{cls}.n", 0.0) + 1.0
        feats[f"{cls}.mbytes"] = feats.get(f"{cls}.mbytes", 0.0) + elems / 1e6
        if macs:
            feats[f"{cls}.mmacs"] = feats.get(f"{cls}.mmacs", 0.0) + macs / 1e6

    def numel(node) -> int:
        meta = node.meta.get("tensor_meta")
        return int(np.prod(meta.shape)) if meta is not None and hasattr(meta, "shape") else 0

    for node in gm.graph.nodes:
        src = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        n_in = numel(src) if src is not None else 0
        n_out = numel(node)
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0]
                dw = m.groups > 1 and m.groups == m.in_channels
                cls = "dwconv" if dw else {1: "conv1x1", 3: "conv3x3"}.get(k, "convkxk")
                add(cls, n_out * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1], n_in + n_out)
            elif isinstance(m, nn.Linear):
                add("fc", m.in_features * m.out_features, n_in + n_out)
            elif isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
                add("pool", 0, n_in + n_out)
            elif isinstance(m, nn.AdaptiveAvgPool2d):
                add("mean", 0, n_in + n_out)
            elif isinstance(m, nn.ReLU):
                add("relu", 0, n_in + n_out)
            elif isinstance(m, nn.BatchNorm2d):
                folded = src is not None and src.op == "call_module" and isinstance(gm.get_submodule(src.target), nn.Conv2d)
                if not folded:
                    add("bn", 0, n_in + n_out)
        elif node.op == "call_function" and node.target in (operator.add, torch.add):
            add("add", 0, 3 * n_out)
        elif node.op == "call_function" and node.target in (operator.mul, torch.mul):
            add("mul", 0, 2 * n_out)
    return feats


analytic_features.feature_name = "analytic-macs-bytes"  # type: ignore[attr-defined]
analytic_features.feature_version = "2"  # type: ignore[attr-defined]  # 2: nb201 "executed" rule b refined


def _feature_id(features: FeatureFn) -> tuple[str, str, bool]:
    """(name, version, cacheable): a function is cached only under a stable name (not a lambda or local)."""
    name = getattr(features, "feature_name", None)
    version = str(getattr(features, "feature_version", "0"))
    if name:
        return str(name), version, True
    qual = f"{getattr(features, '__module__', '?')}.{getattr(features, '__qualname__', type(features).__name__)}"
    return qual, version, "<" not in qual


def feature_table(archs: Sequence[str], features: FeatureFn, *, cache_dir: Optional[str | Path] = "build/cache",
                  build_ops: str = "executed", log: Optional[Callable[[str], None]] = None) -> tuple[list[dict], dict]:
    """features(nb201.build(arch, ops=build_ops)) for every arch, read from / added to the cache file.

    The cache is build/cache/nb201-features/<name>-v<version>-<build_ops>.json; bump a feature function's
    `feature_version` whenever its output changes. Returns the feature dicts and {path, hits, computed, seconds}."""
    from edge_sparse import _io
    from edge_sparse.latency import nb201

    name, version, cacheable = _feature_id(features)
    path = None
    table: dict[str, dict] = {}
    if cache_dir is not None and cacheable:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{name}-v{version}-{build_ops}")
        path = Path(cache_dir) / "nb201-features" / f"{safe}.json"
        if path.exists():
            try:
                blob = json.loads(path.read_text())
                if blob.get("feature") == name and blob.get("version") == version:
                    table = blob["features"]
            except (OSError, ValueError, KeyError, TypeError):
                table = {}  # a damaged cache is rebuilt, never trusted
    t0 = time.perf_counter()
    todo = [a for a in dict.fromkeys(archs) if a not in table]
    computed = 0

    def save() -> None:
        if path is not None:
            _io.write_json(path, {"feature": name, "version": version, "build_ops": build_ops,
                                  "input_shape": list(nb201.INPUT_SHAPE), "features": table})

    for k, arch in enumerate(todo, start=1):
        model = nb201.build(arch, ops=build_ops)  # type: ignore[arg-type]
        got = features(model)
        row = {}
        for key, v in dict(got).items():
            fv = float(v)
            if not math.isfinite(fv) or fv < 0:
                raise EdgeSparseError(f"feature function {name}: {key}={v!r} for cell {arch!r}; features must be "
                                      f"finite and >= 0")
            row[str(key)] = fv
        table[arch] = row
        computed += 1
        if log and (k % 100 == 0 or k == len(todo)):
            log(f"features {k}/{len(todo)} ({time.perf_counter() - t0:.0f} s)")
        if k % 500 == 0:
            save()
    if computed:
        save()
    return [table[a] for a in archs], {"path": str(path) if path else None, "hits": len(archs) - computed,
                                       "computed": computed, "seconds": time.perf_counter() - t0}


def design_matrix(feats: Sequence[Mapping[str, float]]) -> tuple[np.ndarray, list[str]]:
    """Rows of feature dicts -> X with a leading `const` column of ones; columns that are zero everywhere
    are dropped (they would get no factor)."""
    keys = sorted({k for f in feats for k, v in f.items() if v != 0})
    X = np.ones((len(feats), len(keys) + 1))
    for i, f in enumerate(feats):
        X[i, 1:] = [f.get(k, 0.0) for k in keys]
    return X, ["const"] + keys


# ------------------------------------------------------------------------------------------- the check


def _target_column(target: str) -> tuple[str, str]:
    if target not in TARGETS:
        have = ", ".join(f"{t} ({dev})" for t, (_, dev) in TARGETS.items())
        raise EdgeSparseError(f"target {target!r} has no reference measurements; targets that have one: {have}")
    return TARGETS[target]


def run_check(target: str, features: Optional[FeatureFn] = None, reference: str = "nb201", sample: int = 1000,
              folds: int = 5, *, seed: int = 0, weighting: Optional[Weighting] = None,
              cache_dir: Optional[str | Path] = "build/cache", max_median_error: float = 0.25,
              log: Optional[Callable[[str], None]] = None) -> dict:
    """Fit per-op-class device factors on the reference timings of `target` and report their held-out accuracy.

    features: model -> {class: value}; default `analytic_features` (MACs / bytes / counts per op class).
    weighting: one of WEIGHTINGS, or None to try all and keep the lowest held-out median |error|.
    Raises EdgeSparseError for a target without reference data and for a fit whose held-out median |error|
    exceeds `max_median_error`."""
    from edge_sparse.latency import nb201

    column, device = _target_column(target)
    if reference not in REFERENCES:
        raise EdgeSparseError(f"unknown reference {reference!r}; references: {', '.join(REFERENCES)}")
    if weighting is not None and weighting not in WEIGHTINGS:
        raise EdgeSparseError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    features = features or analytic_features
    t_start = time.perf_counter()
    rows = load_reference(reference)
    picked, excluded = stratified_sample(rows, column, sample, seed)
    fold_ids(len(picked), folds, seed)  # validates folds against the sample size before the slow part
    feats, cache = feature_table([r.arch for r in picked], features, cache_dir=cache_dir, log=log)
    X, names = design_matrix(feats)
    y = np.array([getattr(r, column) for r in picked])
    t_fit = time.perf_counter()
    tried = {}
    for w in ([weighting] if weighting else WEIGHTINGS):
        pred, ids = cross_validate(X, y, folds, w, seed)  # type: ignore[arg-type]
        tried[w] = (pred, ids, metrics(pred, y))
    best = min(tried, key=lambda w: tried[w][2]["median_abs_err"])
    pred, ids, held = tried[best]
    fname, fversion, _ = _feature_id(features)
    if not held["median_abs_err"] <= max_median_error:
        raise EdgeSparseError(
            f"{target}: the estimate fitted with features {fname} v{fversion} misses the {device} by a held-out "
            f"median {held['median_abs_err']:.1%} ({folds}-fold, {len(y)} networks; Spearman "
            f"{held['spearman']:.3f}, {held['within_15']:.0%} within +-15 %), above the {max_median_error:.0%} "
            f"sanity bound: refused, not usable as a device estimate")
    factors = fit_factors(X, y, best)  # type: ignore[arg-type]
    baseline = _baseline(target, feats, y, folds, seed)
    repeat = repeatability(rows, column)
    # misses in runs of neighbouring indices (the order the reference was measured in) point at the device's
    # state during the measuring campaign, not at the graph
    miss = (np.abs(pred / y - 1.0) > 0.15)[np.argsort([r.index for r in picked])]
    runs = {"p_miss": float(miss.mean()),
            "p_miss_after_miss": float(miss[1:][miss[:-1]].mean()) if miss[:-1].any() else float("nan")}
    rel = pred / y - 1.0
    infos = [nb201.cell_info(r.arch) for r in picked]
    worst = [{"index": picked[i].index, "arch": picked[i].arch, "mix": infos[i].signature,
              "true_ms": float(y[i]), "pred_ms": float(pred[i]), "err": float(rel[i])}
             for i in np.argsort(-np.abs(rel))[:10]]
    groups: dict[str, list[int]] = {}
    for i, info in enumerate(infos):
        groups.setdefault(info.signature, []).append(i)
    has3 = np.array([info.mix["conv3x3"] > 0 for info in infos])
    subsets = {name: metrics(pred[m], y[m]) for name, m in (("with a 3x3 conv", has3), ("without a 3x3 conv", ~has3))
               if m.sum() >= 2}
    by_mix = sorted(({"mix": g, "n": len(ix), "median_abs_err": float(np.median(np.abs(rel[ix]))),
                      "median_err": float(np.median(rel[ix])), "beyond_15": int(np.sum(np.abs(rel[ix]) > 0.15))}
                     for g, ix in groups.items() if len(ix) >= 3), key=lambda d: -d["median_abs_err"])
    return {
        "target": target,
        "device": device,
        "reference": reference,
        "reference_source": REFERENCES[reference].what,
        "column": column,
        "features": {"name": fname, "version": fversion, "build_ops": "executed"},
        "sample": {"n": len(picked), "requested": sample, "seed": seed, "population": len(rows) - excluded,
                   "excluded_degenerate": excluded,
                   "latency_ms": [float(y.min()), float(np.median(y)), float(y.max())]},
        "folds": folds,
        "weighting": best,
        "held_out": held,
        "per_fold": [metrics(pred[ids == k], y[ids == k]) for k in range(folds)],
        "weightings": {w: m for w, (_, _, m) in tried.items()},
        "factors": {n: float(f) for n, f in zip(names, factors)},
        "in_sample": metrics(X @ factors, y),
        "baseline": baseline,
        "repeatability": repeat,
        "miss_runs": runs,
        "subsets": subsets,
        "worst": worst,
        "by_mix": by_mix[:10],
        "max_median_error": max_median_error,
        "cache": cache,
        "seconds": {"total": time.perf_counter() - t_start, "features": cache["seconds"],
                    "fit": time.perf_counter() - t_fit},
    }


def _baseline(target: str, feats: Sequence[Mapping[str, float]], y: np.ndarray, folds: int, seed: int) -> Optional[dict]:
    """The target profile's MAC + layer-count estimate on the same networks: as is, and with one constant
    fitted per fold (its best case, since the reference's absolute scale is unknown)."""
    from edge_sparse.targets import load_target

    try:
        lm = load_target(target).latency_model
    except EdgeSparseError:
        return None
    if lm is None:
        return None
    mmacs = np.array([sum(v for k, v in f.items() if k.endswith(".mmacs")) for f in feats])
    layers = np.array([sum(v for k, v in f.items() if k.split(".")[0] in ("conv1x1", "conv3x3", "convkxk", "dwconv", "fc")
                           and k.endswith(".n")) for f in feats])
    raw = lm.predict_ms(mmacs * 1e6, layers)
    pred, _ = cross_validate(raw[:, None], y, folds, "rel", seed)
    return {"as_is": metrics(raw, y), "one_constant": metrics(pred, y)}


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def format_report(result: dict) -> str:
    """The check as text: sample, held-out figures, fitting choices, factors, worst misses, op mixes."""
    r = result
    s, h, f = r["sample"], r["held_out"], r["features"]
    lo, med, hi = s["latency_ms"]
    out = [
        f"latency check: {r['target']} against {r['device']} ({r['reference']}: {r['reference_source']})",
        f"  {s['n']} networks, stratified over {s['population']} non-degenerate ({s['excluded_degenerate']} degenerate "
        f"excluded: output independent of the input), {lo:.2f}-{hi:.2f} ms (median {med:.2f}), seed {s['seed']}",
        f"  features {f['name']} v{f['version']}; device_ms = const + sum factor x feature, non-negative, "
        f"{r['folds']}-fold cross-validated",
        f"  held-out: Spearman {h['spearman']:.3f} | median |err| {_pct(h['median_abs_err'])} | within +-10 % "
        f"{_pct(h['within_10'])} | +-15 % {_pct(h['within_15'])} | +-20 % {_pct(h['within_20'])} | "
        f"p90 |err| {_pct(h['p90_abs_err'])} | median bias {_pct(h['median_err'])}",
        "  weighting (held-out median |err|): " + ", ".join(
            f"{w} {_pct(m['median_abs_err'])}" for w, m in r["weightings"].items()) + f" -> {r['weighting']}",
        "  per fold median |err|: " + ", ".join(_pct(m["median_abs_err"]) for m in r["per_fold"]),
        "  factors (all sampled networks): " + ", ".join(
            f"{k} {v:.4g}" for k, v in r["factors"].items() if v > 0) + "  (others 0)",
        "  worst held-out misses:",
    ]
    if r.get("baseline"):
        b = r["baseline"]["one_constant"]
        a = r["baseline"]["as_is"]
        out.insert(4, f"  the profile's MAC+layer estimate on the same networks: as is median |err| {_pct(a['median_abs_err'])} "
                      f"(bias {a['median_err']:+.0%}); with one fitted constant Spearman {b['spearman']:.3f} | median |err| "
                      f"{_pct(b['median_abs_err'])} | within +-15 % {_pct(b['within_15'])} | p90 |err| {_pct(b['p90_abs_err'])}")
    rp = r.get("repeatability") or {}
    if rp.get("n", 0) >= 2:
        out.insert(5, f"  the reference against itself ({rp['n']} networks in {rp['groups']} groups that run the identical graph): "
                      f"within +-15 % of their group's median {_pct(rp['within_15'])} (+-10 % {_pct(rp['within_10'])}, "
                      f"p90 |dev| {_pct(rp['p90_abs_dev'])}; cross-device correlation of the deviations "
                      f"{rp['cross_device_corr']:.2f}) - no estimate from the graph can do better on them")
    mr = r.get("miss_runs")
    if mr:
        out.insert(6, f"  held-out misses beyond +-15 % by measuring order: {_pct(mr['p_miss'])} of networks, "
                      f"{_pct(mr['p_miss_after_miss'])} of those next (in index order) to a miss")
    for w in r["worst"][:8]:
        out.append(f"    {w['err']:+7.1%}  {w['true_ms']:7.2f} ms measured, {w['pred_ms']:7.2f} predicted  "
                   f"#{w['index']} [{w['mix']}]")
    out.append("  op mixes with the largest held-out errors (>= 3 networks):")
    for g in r["by_mix"][:6]:
        out.append(f"    median |err| {_pct(g['median_abs_err']):>7} (bias {g['median_err']:+.1%}), "
                   f"{g['beyond_15']}/{g['n']} beyond +-15 %  [{g['mix']}]")
    c = r["cache"]
    out.append(f"  {r['seconds']['total']:.1f} s ({c['computed']} networks' features computed, {c['hits']} cached"
               + (f" in {c['path']}" if c["path"] else "") + ")")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------- CLI


def add_cli(subparsers) -> None:
    """Add `check` to the `latency` command's subparsers (edge-sparse latency check ...)."""
    p = subparsers.add_parser("check", help="a latency estimate against real device timings (nb201: Pi 4, Pixel 3)")
    p.add_argument("--target", required=True, help=f"one with reference data: {', '.join(TARGETS)}")
    p.add_argument("--reference", default="nb201", help=f"reference measurements ({', '.join(REFERENCES)})")
    p.add_argument("--sample", type=int, default=1000, help="networks checked, stratified over latency (default 1000)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and the folds")
    p.add_argument("--json", help="write the full result here")


def cmd(args) -> int:
    """Run `edge-sparse latency check` for parsed `args`; EdgeSparseError propagates to the CLI (exit 2)."""
    from edge_sparse import _io

    if args.sample < 10 or args.folds < 2:
        raise EdgeSparseError(f"--sample must be >= 10 and --folds >= 2 (got {args.sample}, {args.folds})")
    res = run_check(args.target, reference=args.reference, sample=args.sample, folds=args.folds,
                    seed=getattr(args, "seed", 0))
    print(format_report(res))
    if getattr(args, "json", None):
        _io.write_json(Path(args.json), res)
    return 0
