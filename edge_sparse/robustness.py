"""Adversarial robustness: FGSM and PGD-k (L-inf, random start, ours) and APGD-CE (AutoAttack's step-size-free
PGD, from the maintained `torchattacks` package) on torch fp32 models, and the robust accuracy of deployed int8
artifacts under transfer.

In:  a float model, raw uint8 NHWC images and labels, epsilons in pixel units (/255).
Out: clean and robust top-1 accuracy per epsilon; adversarial uint8 images to evaluate elsewhere
     (crafted on the float model, replayed on the int8 .tflite / .onnx: the transfer setting).
Run: part of `make build` (shipped model) and `edge-sparse study` (sparsity sweep).

Perturbations live on the uint8 image domain: delta is bounded by eps/255 on [0, 1] pixels, and the
adversarial image is rounded back to uint8 (for integer eps the bound still holds exactly), so every
model sees the same images a camera could have produced.
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_sparse.errors import EdgeSparseError

Attack = Literal["fgsm", "pgd", "apgd-ce"]
ATTACKS = ("fgsm", "pgd", "apgd-ce")
MAX_EPS = 255.0


def check_eps(eps: float) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps <= MAX_EPS:
        raise EdgeSparseError(f"epsilon must be in [0, {MAX_EPS:g}] pixel units (/255), got {eps!r}")


def _norm_params(mean, std, device):
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return m, s


def pgd(model: nn.Module, x_norm: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int, mean, std,
        alpha: Optional[float] = None, random_start: bool = True, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """PGD-k on normalised inputs; eps and alpha in /255 pixel units. steps=1 without random start = FGSM."""
    check_eps(eps)
    if eps == 0 or steps < 1:
        return x_norm.detach()
    m, s = _norm_params(mean, std, x_norm.device)
    x01 = (x_norm.detach() * s + m).clamp(0, 1)
    e = eps / 255.0
    a = (alpha if alpha is not None else (2.5 * eps / steps if steps > 1 else eps)) / 255.0
    was = model.training
    model.eval()
    if random_start:
        noise = (torch.rand(x01.shape, generator=generator) * 2 - 1).to(x01.device) * e
        adv = (x01 + noise).clamp(0, 1)
    else:
        adv = x01.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model((adv - m) / s), y)
        (g,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + a * g.sign()
        adv = torch.min(torch.max(adv, x01 - e), x01 + e).clamp(0, 1)
    model.train(was)
    return ((adv - m) / s).detach()


def attack_uint8(model: nn.Module, x_uint8: np.ndarray, y: np.ndarray, *, eps: float, attack: Attack = "pgd",
                 steps: int = 10, mean, std, batch_size: int = 250, seed: int = 0) -> np.ndarray:
    """Adversarial uint8 NHWC images crafted on `model`."""
    from edge_sparse.data import to_tensor

    check_eps(eps)
    if attack not in ATTACKS:
        raise EdgeSparseError(f"unknown attack {attack!r}; valid: {', '.join(ATTACKS)}")
    if attack == "apgd-ce":
        return apgd_ce_uint8(model, x_uint8, y, eps=eps, steps=steps, mean=mean, std=std, batch_size=batch_size, seed=seed)
    g = torch.Generator().manual_seed(seed)
    m, s = _norm_params(mean, std, "cpu")
    out = []
    for i in range(0, len(x_uint8), batch_size):
        xb = to_tensor(x_uint8[i : i + batch_size], mean, std)
        yb = torch.from_numpy(np.asarray(y[i : i + batch_size], dtype=np.int64))
        if attack == "fgsm":
            adv = pgd(model, xb, yb, eps=eps, steps=1, mean=mean, std=std, random_start=False)
        else:
            adv = pgd(model, xb, yb, eps=eps, steps=steps, mean=mean, std=std, generator=g)
        x01 = (adv * s + m).clamp(0, 1)
        out.append(torch.round(x01 * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return _within(np.concatenate(out), x_uint8, eps) if out else x_uint8.copy()


class _Normalize(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std


def apgd_ce_uint8(model: nn.Module, x_uint8: np.ndarray, y: np.ndarray, *, eps: float, steps: int = 10, mean, std,
                  batch_size: int = 250, seed: int = 0) -> np.ndarray:
    """APGD-CE (Croce & Hein 2020, the first attack of AutoAttack; L-inf, one restart) crafted on `model` by
    `torchattacks.APGD`, on [0, 1] pixels with the model's normalisation declared to it; adversarial uint8 NHWC out."""
    check_eps(eps)
    try:
        import torchattacks
    except ImportError as e:  # installed by `make setup` (--no-deps: it would pull torchvision over the pinned torch)
        raise EdgeSparseError(f"APGD-CE needs torchattacks ({e}); run `make setup`, or "
                              "`pip install --no-deps torchattacks==3.5.1 scipy==1.14.1`") from None
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    m, s = _norm_params(mean, std, dev)
    # the attack sees [0, 1] pixels and a model that normalises them itself (torchattacks' own
    # set_normalization_used expects *normalised* inputs and returns normalised ones)
    net = nn.Sequential(_Normalize(m, s), model).eval()
    atk = torchattacks.APGD(net, norm="Linf", eps=eps / 255.0, steps=steps, n_restarts=1, seed=seed, loss="ce")
    torch.manual_seed(seed)
    out = []
    for i in range(0, len(x_uint8), batch_size):
        x01 = torch.from_numpy(np.ascontiguousarray(x_uint8[i : i + batch_size])).permute(0, 3, 1, 2).float().to(dev) / 255.0
        yb = torch.from_numpy(np.asarray(y[i : i + batch_size], dtype=np.int64)).to(dev)
        if eps > 0:
            # one APGD run on every image: where it fooled the model, its adversarial point (AutoAttack's
            # semantics); elsewhere its highest-loss point, so a transfer replays an attacked image for every
            # image, as PGD's last iterate does (torchattacks' forward returns the clean image there)
            best, still_right, _, best_adv = atk.attack_single_run(x01, yb)
            fooled = (still_right == 0).view(-1, 1, 1, 1)
            adv = torch.where(fooled, best_adv, best)
        else:
            adv = x01
        out.append(torch.round(adv.detach().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    model.train(was)
    return _within(np.concatenate(out), x_uint8, eps) if out else x_uint8.copy()


def _within(adv: np.ndarray, x: np.ndarray, eps: float) -> np.ndarray:
    """Rounding to uint8 may step past a non-integer eps by half a level: clip to floor(eps) levels of `x`."""
    k = int(np.floor(eps + 1e-9))
    return np.clip(adv.astype(np.int16), x.astype(np.int16) - k, x.astype(np.int16) + k).clip(0, 255).astype(np.uint8)


@torch.no_grad()
def _acc(model: nn.Module, x_uint8: np.ndarray, y: np.ndarray, mean, std) -> float:
    from edge_sparse.data import to_tensor

    model.eval()
    preds = [model(to_tensor(x_uint8[i : i + 500], mean, std)).argmax(1).numpy() for i in range(0, len(x_uint8), 500)]
    return float((np.concatenate(preds) == y).mean() * 100)


def robust_accuracy(model: nn.Module, x_uint8: np.ndarray, y: np.ndarray, eps_list: Sequence[float], *, mean, std,
                    steps: int = 10, transfer_to: Optional[dict] = None, seed: int = 0) -> dict:
    """Clean and robust accuracy (percent) of `model` (white-box FGSM and PGD) and, for each
    `transfer_to` entry ({name: fn(x_uint8) -> logits}), on the PGD images crafted on `model`.
    """
    if not len(eps_list):
        raise EdgeSparseError("robustness needs at least one epsilon")
    for e in eps_list:
        check_eps(e)
    res = {"clean": {"torch": _acc(model, x_uint8, y, mean, std)}, "eps": {}}
    for name, fn in (transfer_to or {}).items():
        res["clean"][name] = float((fn(x_uint8).argmax(1) == y).mean() * 100)
    for e in eps_list:
        x_fgsm = attack_uint8(model, x_uint8, y, eps=e, attack="fgsm", mean=mean, std=std, seed=seed)
        x_pgd = attack_uint8(model, x_uint8, y, eps=e, attack="pgd", steps=steps, mean=mean, std=std, seed=seed)
        row = {"fgsm": _acc(model, x_fgsm, y, mean, std), "pgd": _acc(model, x_pgd, y, mean, std)}
        for name, fn in (transfer_to or {}).items():
            row[f"{name}_pgd_transfer"] = float((fn(x_pgd).argmax(1) == y).mean() * 100)
        res["eps"][f"{e:g}"] = row
    return res
