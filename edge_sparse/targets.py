"""Target profiles: `targets/<name>.toml`, loaded into a typed, validated `Target`.

In:  a profile name (or a path to a .toml file).
Out: a frozen `Target`; any unknown key, missing key, wrong type or impossible value raises
     `EdgeSparseError` naming the file and the key.
Run: `edge-sparse targets` lists every profile with its budgets.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, Optional

from edge_sparse.errors import EdgeSparseError

Runtime = Literal["tflite", "onnx"]
InputDtype = Literal["int8"]


def targets_dir() -> Path:
    """`$EDGE_SPARSE_TARGETS`, else `targets/` of the checkout (or of the working directory)."""
    env = os.environ.get("EDGE_SPARSE_TARGETS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent / "targets"
    return here if here.is_dir() else Path.cwd() / "targets"


@dataclass(frozen=True)
class LatencyModel:
    """p90_ms = overhead_ms + ms_per_mmac * MACs/1e6 + ms_per_layer * compute layers (int8, `threads`)."""

    overhead_ms: float  # fixed cost per inference (invoke, input copy), ms
    ms_per_mmac: float  # cost per million multiply-accumulates of the int8 graph, ms
    ms_per_layer: float  # cost per conv/linear op (kernel launch, memory traffic), ms
    source: str  # where these numbers come from (published figure or device report)

    def predict_ms(self, macs: int, layers: int) -> float:
        return self.overhead_ms + self.ms_per_mmac * macs / 1e6 + self.ms_per_layer * layers


@dataclass(frozen=True)
class Target:
    """One deployment target, as `targets/<name>.toml` declares it."""

    name: str  # must equal the file's stem
    device: str  # human name of the board or phone
    cpu: str  # CPU model and clock, e.g. "4x Cortex-A72 @ 1.5 GHz"
    cores: int  # CPU cores on the device
    runtime: Runtime  # which shipped artifact the budget is judged on
    threads: int  # inference threads the harness uses by default
    input_dtype: InputDtype  # dtype of the shipped model's input and output
    latency_budget_ms: Optional[float]  # p90 single-image latency the shipped model must meet, ms (or None:
    # latency_budget is relative)
    model_size_budget_kb: float  # size of the shipped model file, KiB
    accuracy_floor_pct: float  # minimum top-1 accuracy of the shipped int8 model, percent
    channel_multiple: int  # kept channels are rounded to this multiple (kernel-friendly widths)
    latency_model: Optional[LatencyModel] = None  # the published-figure estimate (targets without a measured table)
    latency_budget: Optional[str] = None  # relative budget, "<k>x": k times faster than the dense model on this target
    latency_table: Optional[str] = None  # "host" (measured on the building machine, cached) or a table file in targets/
    latency_fit: Optional[str] = None  # the real-device fit whose per-op shape the estimate uses (edge_sparse/latency/
    # reference/fit-<name>.json), scaled to [latency_model]'s published figure; without it, the plain formula
    robust_accuracy_floor_pct: float = 0.0  # optional: minimum PGD robust accuracy at robust_eps
    robust_eps: float = 0.0  # optional: epsilon (in /255 pixel units) of that floor; 0 = not checked
    path: Optional[str] = field(default=None, compare=False)  # file it came from (not a TOML key)

    def predict_ms(self, macs: int, layers: int) -> float:
        if self.latency_model is None:
            raise EdgeSparseError(f"{self.path}: target {self.name!r} has no [latency_model] estimate")
        return self.latency_model.predict_ms(macs, layers)

    @property
    def speedup(self) -> Optional[float]:
        """k of a relative budget "kx" (None for an absolute budget in ms)."""
        return float(self.latency_budget[:-1]) if self.latency_budget else None

    def budget_ms(self, dense_p90_ms: Optional[float] = None) -> float:
        """The p90 budget in ms: absolute, or the dense model's predicted p90 divided by the speedup."""
        if self.latency_budget_ms is not None:
            return self.latency_budget_ms
        if dense_p90_ms is None:
            raise EdgeSparseError(f"{self.path}: budget {self.latency_budget!r} is relative; it needs the dense model's latency")
        return dense_p90_ms / self.speedup

    def describe_budget(self) -> str:
        return f"{self.latency_budget_ms:g} ms" if self.latency_budget_ms is not None else \
            f"{self.latency_budget} faster than dense"


_OPTIONAL = {"robust_accuracy_floor_pct", "robust_eps", "latency_model", "latency_budget", "latency_table",
             "latency_budget_ms", "latency_fit"}
_POSITIVE = {
    "cores", "threads", "latency_budget_ms", "model_size_budget_kb", "channel_multiple",
    "ms_per_mmac",
}
_NON_NEGATIVE = {"overhead_ms", "ms_per_layer", "robust_accuracy_floor_pct", "robust_eps"}


def _check_value(file: str, key: str, hint, value):
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise EdgeSparseError(f"{file}: key {key!r} is {value!r}; valid: {', '.join(map(repr, choices))}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EdgeSparseError(f"{file}: key {key!r} must be a number, got {type(value).__name__} {value!r}")
        value = float(value)
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EdgeSparseError(f"{file}: key {key!r} must be an integer, got {type(value).__name__} {value!r}")
    elif hint is str:
        if not isinstance(value, str) or not value.strip():
            raise EdgeSparseError(f"{file}: key {key!r} must be a non-empty string, got {value!r}")
    bare = key.split(".")[-1]
    if bare in _POSITIVE and value <= 0:
        raise EdgeSparseError(f"{file}: key {key!r} must be > 0, got {value!r}")
    if bare in _NON_NEGATIVE and value < 0:
        raise EdgeSparseError(f"{file}: key {key!r} must be >= 0, got {value!r}")
    if bare.endswith("_pct") and not 0 <= value <= 100:
        raise EdgeSparseError(f"{file}: key {key!r} must be a percentage in [0, 100], got {value!r}")
    return value


def _build(cls, table: dict, file: str, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    keys = {f.name for f in fields(cls) if f.name != "path"}
    unknown = sorted(set(table) - keys)
    if unknown:
        raise EdgeSparseError(
            f"{file}: unknown key {prefix}{unknown[0]!r}; valid keys: {', '.join(sorted(keys))}"
        )
    kwargs = {}
    for k in sorted(keys):
        if k not in table:
            if k in _OPTIONAL:
                if next(f for f in fields(cls) if f.name == k).default is dataclasses.MISSING:
                    kwargs[k] = None
                continue
            raise EdgeSparseError(f"{file}: missing key {prefix}{k!r}")
        hint = hints[k]
        if typing.get_origin(hint) is typing.Union:  # Optional[X]
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if dataclasses.is_dataclass(hint):
            if not isinstance(table[k], dict):
                raise EdgeSparseError(f"{file}: key {prefix}{k!r} must be a table [{k}]")
            kwargs[k] = _build(hint, table[k], file, prefix=f"{k}.")
        else:
            kwargs[k] = _check_value(file, prefix + k, hint, table[k])
    return cls(**kwargs)


def load_target(name_or_path: str | os.PathLike) -> Target:
    """Load and validate one profile by name (`rpi4`) or path (`targets/rpi4.toml`)."""
    p = Path(name_or_path)
    if p.suffix != ".toml":
        p = targets_dir() / f"{name_or_path}.toml"
        if not p.is_file():
            raise EdgeSparseError(
                f"unknown target {str(name_or_path)!r}; valid: {', '.join(list_targets()) or '(none found)'}"
                f" (profiles live in {targets_dir()})"
            )
    file = str(p)
    try:
        table = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise EdgeSparseError(f"{file}: no such target profile") from None
    except tomllib.TOMLDecodeError as e:
        raise EdgeSparseError(f"{file}: not valid TOML: {e}") from None
    t = _build(Target, table, file)
    if t.name != p.stem:
        raise EdgeSparseError(f"{file}: key 'name' is {t.name!r} but the file is {p.stem}.toml; they must match")
    if (t.latency_budget_ms is None) == (t.latency_budget is None):
        raise EdgeSparseError(f"{file}: give exactly one of 'latency_budget_ms' (absolute, ms) and 'latency_budget' "
                              f"(relative, e.g. \"2.5x\")")
    if t.latency_budget is not None:
        import re

        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?x", t.latency_budget) or float(t.latency_budget[:-1]) <= 1:
            raise EdgeSparseError(f"{file}: key 'latency_budget' is {t.latency_budget!r}; write a speedup over the dense "
                                  f"model greater than 1, like \"2.5x\"")
    if t.latency_table is None and t.latency_model is None:
        raise EdgeSparseError(f"{file}: no latency source: give 'latency_table' (\"host\" or a measured table file) "
                              f"or a [latency_model] estimate")
    if t.latency_table not in (None, "host"):
        if not (p.parent / t.latency_table).is_file():
            raise EdgeSparseError(f"{file}: key 'latency_table' names {t.latency_table!r}, which is not a file in {p.parent}")
    if t.threads > t.cores:
        raise EdgeSparseError(f"{file}: key 'threads' is {t.threads} but the device has {t.cores} cores")
    return dataclasses.replace(t, path=file)


def list_targets() -> list[str]:
    d = targets_dir()
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []
