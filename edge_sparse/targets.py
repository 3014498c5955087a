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
    latency_budget_ms: float  # p90 single-image latency the shipped model must meet, ms
    model_size_budget_kb: float  # size of the shipped model file, KiB
    accuracy_floor_pct: float  # minimum top-1 accuracy of the shipped int8 model, percent
    channel_multiple: int  # kept channels are rounded to this multiple (kernel-friendly widths)
    latency_model: LatencyModel  # coefficients mapping a model to predicted p90 latency
    robust_accuracy_floor_pct: float = 0.0  # optional: minimum PGD robust accuracy at robust_eps
    robust_eps: float = 0.0  # optional: epsilon (in /255 pixel units) of that floor; 0 = not checked
    path: Optional[str] = field(default=None, compare=False)  # file it came from (not a TOML key)

    def predict_ms(self, macs: int, layers: int) -> float:
        return self.latency_model.predict_ms(macs, layers)


_OPTIONAL = {"robust_accuracy_floor_pct", "robust_eps"}
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
                continue
            raise EdgeSparseError(f"{file}: missing key {prefix}{k!r}")
        hint = hints[k]
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
    if t.threads > t.cores:
        raise EdgeSparseError(f"{file}: key 'threads' is {t.threads} but the device has {t.cores} cores")
    return dataclasses.replace(t, path=file)


def list_targets() -> list[str]:
    d = targets_dir()
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []
