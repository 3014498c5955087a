"""Your own network and weights: a factory in your file (or package), weights without pickled code.

In:  `--model path/to/net.py:make_model` or `--model package.module:make_model` (a callable returning
     an `nn.Module`), or an in-memory module (`es.build(model, ...)`); `--weights FILE` (safetensors,
     or a torch checkpoint read with `weights_only=True`).
Out: the module, its weights loaded and checked against the data (input channels and size, classes).
Run: through `models.create` / `models.load` wherever a registered name is accepted.

Every problem is one line naming the file and what is wrong: a factory file that does not exist or
raises (its message), a factory that returns no `nn.Module`, weights for another architecture (the
first mismatching key and both shapes), a checkpoint that is not weights-only (refused, never run).
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import pickle
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from edge_sparse.errors import EdgeSparseError

_MEMORY: dict[str, nn.Module] = {}  # "memory:<hash>" -> a module handed to es.build in this process


def is_ref(name: str) -> bool:
    return isinstance(name, str) and (":" in name)


def register(model: nn.Module) -> str:
    """Keep an in-memory module under a reference the pipeline can rebuild it from (this process only)."""
    if not isinstance(model, nn.Module):
        raise EdgeSparseError(f"es.build needs a torch.nn.Module, got {type(model).__name__}")
    h = hashlib.sha256()
    h.update(type(model).__qualname__.encode())
    h.update(repr(model).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    ref = f"memory:{h.hexdigest()[:16]}"
    _MEMORY[ref] = copy.deepcopy(model).cpu().eval()
    return ref


def load_factory(ref: str) -> Callable[[], nn.Module]:
    if ref.startswith("memory:"):
        if ref not in _MEMORY:
            raise EdgeSparseError(f"model {ref} was handed to es.build in another process; pass the module again")
        return lambda: copy.deepcopy(_MEMORY[ref])
    where, _, attr = ref.rpartition(":")
    if not where or not attr.isidentifier():
        raise EdgeSparseError(f"--model {ref!r}: expected path/to/file.py:factory or package.module:factory")
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise EdgeSparseError(f"--model {ref!r}: no such file {path}")
        name = f"edge_sparse_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - the user's code may raise anything
            sys.modules.pop(name, None)
            raise EdgeSparseError(f"--model {ref!r}: importing {path} raised {type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}") from None
        where_txt = str(path)
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:  # noqa: BLE001
            raise EdgeSparseError(f"--model {ref!r}: cannot import {where} ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
        where_txt = where
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise EdgeSparseError(f"--model {ref!r}: {where_txt} has no callable {attr!r}")
    return fn


def instantiate(ref: str) -> nn.Module:
    fn = load_factory(ref)
    try:
        m = fn()
    except Exception as e:  # noqa: BLE001
        raise EdgeSparseError(f"--model {ref!r}: the factory raised {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(m, nn.Module):
        raise EdgeSparseError(f"--model {ref!r}: the factory returned {type(m).__name__}, not a torch.nn.Module")
    return m


def fingerprint(ref: str) -> str:
    """What the cache keys a user model by: its file's bytes (a package module: its source file)."""
    if ref.startswith("memory:"):
        return ref
    where = ref.rpartition(":")[0]
    try:
        path = Path(where).expanduser() if where.endswith(".py") else Path(importlib.util.find_spec(where).origin)
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except Exception:  # noqa: BLE001 - the build itself reports the real problem
        return "unreadable"


def check_io(model: nn.Module, input_shape, num_classes: int, where: str) -> None:
    """The model's first conv takes the data's channels and its output has one logit per class."""
    c = input_shape[0]
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if isinstance(first, nn.Conv2d) and first.in_channels != c:
        raise EdgeSparseError(f"{where}: the first conv takes {first.in_channels} input channels, but the data has {c}; "
                              f"give the model in_channels={c} (or convert the images)")
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, *input_shape))
    except Exception as e:  # noqa: BLE001
        raise EdgeSparseError(f"{where}: does not run on one {tuple(input_shape)} image ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); set --input-size to what it expects") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != num_classes:
        raise EdgeSparseError(f"{where}: outputs {tuple(getattr(out, 'shape', ()))} for one image, but the data has "
                              f"{num_classes} classes: the last layer must have {num_classes} outputs")


def load_weights_noting(model: nn.Module, path: str | Path) -> list[str]:
    """Load a state dict from safetensors or a weights-only torch checkpoint into `model`; refuse anything else.

    A checkpoint with another classifier head (an ImageNet 1000-class torchvision or timm checkpoint for a 10-class
    model, the common case) loads every other tensor and leaves the model's own, freshly initialised head; the note
    returned names it. Any other mismatch is an error naming the tensor."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise EdgeSparseError(f"--weights {p}: no such file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(p))
        except Exception as e:  # noqa: BLE001
            raise EdgeSparseError(f"--weights {p}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    else:
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise EdgeSparseError(f"--weights {p}: not a weights-only checkpoint (it pickles code or objects: "
                                  f"{str(e).splitlines()[-1][:120]}); refused, not run. Save model.state_dict() or "
                                  f"use safetensors") from None
        except Exception as e:  # noqa: BLE001
            raise EdgeSparseError(f"--weights {p}: not a torch checkpoint ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise EdgeSparseError(f"--weights {p}: holds no state dict of tensors (save model.state_dict())")
        state = {k.removeprefix("module."): v for k, v in state.items()}  # DDP-saved checkpoints
    own = model.state_dict()
    head = _head_keys(model)
    new_head = [k for k in head if k in own and (k not in state or tuple(state[k].shape) != tuple(own[k].shape))]
    for k, v in own.items():
        if k in new_head:
            continue
        if k not in state:
            raise EdgeSparseError(f"--weights {p}: has no tensor {k!r} that the model needs (another architecture?)")
        if tuple(state[k].shape) != tuple(v.shape):
            raise EdgeSparseError(f"--weights {p}: {k!r} has shape {tuple(state[k].shape)}, the model's is "
                                  f"{tuple(v.shape)} (weights of another architecture or width)")
    extra = [k for k in state if k not in own and not (new_head and _is_head_key(k, head))]
    if extra:
        raise EdgeSparseError(f"--weights {p}: has {len(extra)} tensors the model lacks (first: {extra[0]!r}); "
                              f"another architecture?")
    from edge_sparse.models import load_state

    load_state(model, {k: v for k, v in state.items() if k in own and k not in new_head}, strict=not new_head)
    notes = []
    if new_head:
        was = {k: tuple(state[k].shape) for k in new_head if k in state}
        notes.append(f"--weights {p.name}: the classifier head ({', '.join(new_head)}) is re-initialised: the "
                     f"checkpoint's is {', '.join(f'{k} {list(s)}' for k, s in was.items()) or 'absent'}, this model's "
                     f"{', '.join(f'{k} {list(own[k].shape)}' for k in new_head)} (another class count); every other "
                     f"tensor is loaded")
    return notes


def _head_keys(model: nn.Module) -> list[str]:
    """The state-dict keys of the classifier head: the last Linear (else the last Conv2d) in module order."""
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)] or \
        [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not mods:
        return []
    name, m = mods[-1]
    return [f"{name}.{k}" for k, _ in m.named_parameters(recurse=False)]


def _is_head_key(key: str, head: list[str]) -> bool:
    """A checkpoint tensor of another head: a common classifier name's weight/bias (ImageNet checkpoints name it
    fc, classifier, head or head.fc, and torchvision's classifier.N) or our own head's name."""
    stem = key.rsplit(".", 1)[0]
    ours = {h.rsplit(".", 1)[0] for h in head}
    return key.endswith((".weight", ".bias")) and (stem in ours or stem.split(".")[0] in {"fc", "classifier", "head",
                                                                                           "last_linear"})


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """`load_weights_noting` without its notes (the head, if re-initialised, keeps the model's own init)."""
    load_weights_noting(model, path)
    return model


def weights_fingerprint(path: str | Path) -> str:
    try:
        return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()[:16]
    except OSError:
        return "missing"
