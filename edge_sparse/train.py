"""Training with a sparsity-inducing objective, distillation fine-tuning, checkpoints and DDP.

In:  a model, `Splits` (uint8 images), a `TrainConfig`; optionally a teacher for distillation.
Out: the trained model (in place), a per-epoch history, and `<ckpt_dir>/last.pt` after every epoch.
Run: `edge-sparse train --model resnet8 --epochs 4 --out runs/dense`
     `torchrun --nproc_per_node 2 -m edge_sparse.cli train ...` (DDP; gloo on CPU, nccl on CUDA)

Sparsity objective: `bn_l1` adds lambda * sign(gamma) to every BatchNorm scale's gradient (network
slimming, Liu et al. 2017), so channels that do not help the task get gamma -> 0 and are the first the
`bn_scale` criterion removes; BatchNorms whose output a depthwise conv's BatchNorm re-normalises are left out
(`pruning.renormalized_batchnorms`: there gamma sets only a channel's int8 range, not its worth); `group_lasso`
adds lambda * sum_c ||W_c||_2 over conv output channels.

Resume is exact: each epoch's shuffling and augmentation come from (seed, epoch), and the checkpoint
holds model, optimizer, schedule position and history, so a run killed mid-epoch and resumed with
`--resume` ends with the same weights as one that was never interrupted.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_sparse import _io
from edge_sparse.config import TrainConfig
from edge_sparse.data import ImageSet, Reader, Splits, to_tensor
from edge_sparse.errors import EdgeSparseError

CKPT_NAME = "last.pt"
CHECK_EVERY = 16  # steps between divergence checks (each one a host sync); also checked at every epoch's end


# --------------------------------------------------------------------------- distributed

def _dist_env() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _maybe_init_dist(device: str) -> bool:
    import torch.distributed as dist

    _, world = _dist_env()
    if world <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return True


def is_main_process() -> bool:
    return _dist_env()[0] == 0


# --------------------------------------------------------------------------- helpers

def arch_signature(model: nn.Module) -> str:
    """Names and shapes of every tensor: two models with the same signature can swap weights."""
    return json.dumps([[k, list(v.shape)] for k, v in model.state_dict().items()])


def _augment(x: torch.Tensor, mode: str, g: torch.Generator) -> torch.Tensor:
    if mode == "none":
        return x
    n, _, h, w = x.shape
    pad = 4
    xp = F.pad(x, (pad, pad, pad, pad))
    dev = x.device  # the random draws stay on the CPU generator `g` (the same numbers on any device)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(dev)
    rows = (dy.view(n, 1) + torch.arange(h, device=dev).view(1, h))  # n,h
    cols = (dx.view(n, 1) + torch.arange(w, device=dev).view(1, w))  # n,w
    out = xp[torch.arange(n, device=dev).view(n, 1, 1, 1), torch.arange(x.shape[1], device=dev).view(1, -1, 1, 1),
             rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    if mode == "crop_flip":
        flip = (torch.rand(n, generator=g) < 0.5).to(dev)
        out[flip] = out[flip].flip(3)
    return out


def bn_cost_weights(model: nn.Module, input_shape) -> dict[nn.Module, float]:
    """Per BatchNorm: the relative cost of one of its channels, H*W*C of the feature map it normalises
    (a channel at 28x28 in a 16-wide stage saves 4x the MACs of one at 7x7 in a 64-wide stage),
    normalised so the channel-weighted mean is 1."""
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: shapes.__setitem__(mod, o.shape))
             for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    cost = {m: float(s[1] * (s[2] * s[3] if len(s) == 4 else 1)) for m, s in shapes.items()}
    channels = {m: s[1] for m, s in shapes.items()}
    mean = sum(cost[m] * channels[m] for m in cost) / max(1, sum(channels.values()))
    return {m: c / mean for m, c in cost.items()}


def _renormalized(model: nn.Module, input_shape) -> list:
    """`pruning.renormalized_batchnorms` on a zero input of `input_shape` (eval mode, restored after)."""
    from edge_sparse.pruning import renormalized_batchnorms

    was = model.training
    try:
        model.eval()
        return renormalized_batchnorms(model, torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        model.train(was)


def _sparsity_grad(model: nn.Module, cfg: TrainConfig, weights: Optional[dict] = None):
    """The bn_l1 subgradient step as a function to call after every backward (None when there is none): the
    BatchNorm scales are gathered once, and each call is two multi-tensor ops, not a Python loop over the modules
    (which cost ResNet-8 ~0.5 ms a step, ~1 % of it at 28 px). Adding sign(gamma) * lambda * w equals
    `grad.add_(sign, alpha=lambda * w)` bit for bit: a product with -1, 0 or 1 is exact."""
    if cfg.sparsity_reg != "bn_l1" or cfg.sparsity_lambda <= 0:
        return None
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
           and (weights.get(m, 1.0) if weights else 1.0) > 0]  # weight 0: left out (`_renormalized`)
    alphas = [cfg.sparsity_lambda * (weights.get(m, 1.0) if weights else 1.0) for m in bns]

    def step() -> None:
        have = [(m.weight, a) for m, a in zip(bns, alphas) if m.weight.grad is not None]
        if not have:
            return
        signs = torch._foreach_sign([w.detach() for w, _ in have])
        torch._foreach_mul_(signs, [a for _, a in have])
        torch._foreach_add_([w.grad for w, _ in have], signs)

    return step


def _group_lasso(model: nn.Module) -> torch.Tensor:
    terms = [m.weight.flatten(1).norm(dim=1).sum() for m in model.modules() if isinstance(m, nn.Conv2d)]
    return torch.stack(terms).sum()


def _param_groups(model: nn.Module, wd: float):
    decay, no_decay = [], []
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            (decay if isinstance(m, (nn.Conv2d, nn.Linear)) and name == "weight" else no_decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def kd_loss(student_logits, teacher_logits, labels, alpha: float, temperature: float, smoothing: float = 0.0):
    """(1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T) (Hinton et al. 2015)."""
    ce = F.cross_entropy(student_logits, labels, label_smoothing=smoothing)
    if alpha == 0:
        return ce
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                  reduction="batchmean", log_target=True)
    return (1 - alpha) * ce + alpha * t * t * kl


ONECYCLE_WARMUP = 0.25  # share of the steps spent ramping up (torch's OneCycleLR uses 0.3)
ONECYCLE_DIV = 25.0  # the ramp starts at lr / 25, as OneCycleLR's div_factor


def lr_schedule(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate at optimizer step `step` of `total_steps` (a pure function: resume is exact).

    cosine: from the peak down to 0. onecycle (Smith & Topin 2019, torch's OneCycleLR without the momentum
    cycle): linear from lr/25 up to the peak over the first quarter, then cosine down to ~0; the warm-up lets a
    freshly initialised (or freshly pruned) network take the peak rate without the early loss spikes of a cold
    start at 0.1.
    """
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "onecycle":
        warm = max(1, int(ONECYCLE_WARMUP * total_steps))
        if step < warm:
            return cfg.lr * (1 / ONECYCLE_DIV + (1 - 1 / ONECYCLE_DIV) * step / warm)
        t = (step - warm) / max(1, total_steps - warm)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))


_CRASH_MIN_SIDE = 40  # the crash was seen from 48 px (even sides); odd sides and <= 47 px never crashed


def _guard_strided_1x1(model: nn.Module) -> list[nn.Module]:
    """Run every strided 1x1 conv as a subsample and a stride-1 1x1 conv; `_unguard` undoes it.

    torch 2.13.0+cpu (oneDNN) corrupts the heap in the *weight gradient* of a channels-last Conv2d with a 1x1 kernel
    and stride 2 when it has fewer than 16 input and at most 16 output channels and an even input side of 48 px or
    more: "double free or corruption", or SIGSEGV, in `loss.backward()` (benchmarks/crash_repro.py maps it; stride
    1/3/4, 3x3/2, odd sides and contiguous memory do not crash). Pruned widths are multiples of 8 and folders default
    to 64 px, so a pruned ResNet's downsampling shortcut reaches that shape. A 1x1 kernel reads only every s-th pixel
    of its (padded) input, so `conv(x, stride=s) == conv(pad(x)[:, :, ::s, ::s], stride=1)`: the same function and
    gradients, through the stride-1 kernels that never crashed, still channels-last. That costs a quarter-size copy,
    so every strided 1x1 conv from 40 px up takes it (the map was drawn on one CPU kind; another may draw the line
    elsewhere). The first guard (input and weight cloned contiguous) cost ResNet-8 a quarter of its training speed
    at 64 px. The default 28 px build is not touched at all.
    """
    guarded = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1:
            m.forward = _subsampled_forward(m)
            guarded.append(m)
    return guarded


def _subsampled_forward(m: nn.Conv2d):
    plain = m.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if max(x.shape[-2:]) < _CRASH_MIN_SIDE:
            return plain(x)
        if any(m._reversed_padding_repeated_twice):  # a padded 1x1 conv: pad first (zeros, or its padding mode)
            mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
            x = F.pad(x, m._reversed_padding_repeated_twice, mode=mode)
        sh, sw = m.stride
        return F.conv2d(x[:, :, ::sh, ::sw], m.weight, m.bias, 1, 0, 1, m.groups)

    return forward


def _unguard(guarded: list[nn.Module]) -> None:
    for m in guarded:
        del m.forward  # the instance attribute: the class's forward again


# --------------------------------------------------------------------------- evaluation

def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, images: ImageSet, mean, std, *, batch_size: int = 500,
            device: Optional[str] = None) -> np.ndarray:
    """Logits (float32, N x classes) of the model on every image of `images`, streamed in batches (folder images
    decoded by the set's workers). `device`: where to run (the model goes there and back); None: where it is."""
    was, home = model.training, _device_of(model)
    dev = torch.device(device) if device else home
    cuda = dev.type == "cuda"
    model.to(dev).eval()
    out = []
    try:
        with Reader(images, pin_memory=cuda) as read:
            batches = [np.arange(i, min(i + batch_size, len(images))) for i in range(0, len(images), batch_size)]
            for xb in read(batches):
                out.append(model(to_tensor(xb.to(dev, non_blocking=cuda), mean, std)).float().cpu().numpy())
    finally:
        model.to(home).train(was)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def accuracy(model: nn.Module, images: ImageSet, mean, std, **kw) -> float:
    """Top-1 accuracy in percent."""
    logits = predict(model, images, mean, std, **kw)
    return float((logits.argmax(1) == images.y).mean() * 100)


# --------------------------------------------------------------------------- the loop

def fit(
    model: nn.Module,
    splits: Splits,
    cfg: TrainConfig,
    *,
    ckpt_dir: Optional[Path] = None,
    resume: bool = False,
    teacher: Optional[nn.Module] = None,
    progress: bool = True,
    stop_after_steps: Optional[int] = None,
    distributed: Optional[bool] = None,
) -> list[dict]:
    """Train `model` in place; return per-epoch history (loss, train/val accuracy, BN sparsity, time).

    `stop_after_steps` ends the run abruptly after that many optimizer steps (tests use it to
    simulate a kill mid-epoch). `distributed=None` uses DDP when torchrun started this process
    (WORLD_SIZE > 1); False keeps this run on this process alone.
    """
    from tqdm import tqdm

    if cfg.kd_alpha > 0 and teacher is None:
        raise EdgeSparseError("kd_alpha > 0 needs a teacher model for distillation")
    device = cfg.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EdgeSparseError("--device cuda was asked for, but torch sees no CUDA device")
    if cfg.precision == "bf16" and not device.startswith("cuda"):
        raise EdgeSparseError(f"--precision bf16 runs on CUDA only (bfloat16 autocast); this run's device is {device}: "
                              f"drop --precision (fp32) or add --device cuda")
    distributed = _maybe_init_dist(device) if distributed is not False else False
    rank, world = _dist_env() if distributed else (0, 1)
    if distributed and device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    # channels-last: oneDNN's CPU convolutions run ~1.4x faster on it for these small nets (measured, ResNet-8, 2 cores);
    # the model goes back to the default layout at the end, so nothing downstream sees the difference
    model.to(device, memory_format=torch.channels_last)
    guards = _guard_strided_1x1(model) if not device.startswith("cuda") else []
    if teacher is not None:
        teacher.to(device, memory_format=torch.channels_last).eval()
    cuda = device.startswith("cuda")
    read_train = Reader(splits.train, pin_memory=cuda, persistent=True)  # folder images: decoded by worker processes, in this order

    opt = torch.optim.SGD(_param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    n = len(splits.train)
    steps_per_epoch = max(1, math.ceil(n / (cfg.batch_size * world)))
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    lr_at = lambda s: lr_schedule(cfg, s, total_steps)  # noqa: E731

    start_epoch, history = 0, []
    ckpt = Path(ckpt_dir) / CKPT_NAME if ckpt_dir else None
    if resume and ckpt and ckpt.is_file():
        state = load_checkpoint(ckpt, model)
        opt.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        history = json.loads(state["history"])
        if rank == 0:
            print(f"  resuming from the checkpoint after epoch {start_epoch}/{cfg.epochs} ({ckpt})", file=sys.stderr,
                  flush=True)

    net = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)

    mean, std = splits.mean, splits.std
    attack = None
    if cfg.adv_train == "pgd":
        from edge_sparse.robustness import pgd
        attack = pgd
    weights = None
    if cfg.sparsity_reg == "bn_l1" and cfg.sparsity_weighting == "cost":
        weights = bn_cost_weights(model, splits.input_shape)
    if cfg.sparsity_reg == "bn_l1" and cfg.sparsity_lambda > 0:
        exempt = _renormalized(model, splits.input_shape)
        if exempt:
            weights = {**(weights or {}), **{m: 0.0 for m in exempt}}
            if rank == 0:
                names = {m: n for n, m in model.named_modules()}
                print(f"  bn_l1 leaves out {len(exempt)} BatchNorm(s) that a depthwise conv's BatchNorm re-normalises: "
                      + ", ".join(names[m] for m in exempt[:4]) + (" ..." if len(exempt) > 4 else ""),
                      file=sys.stderr, flush=True)
    sparsity_step = _sparsity_grad(model, cfg, weights)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.precision == "bf16")

    def diverged(losses: list, step: int, epoch: int) -> None:
        """Raise if any of the last len(losses) steps (ending at optimizer step `step`) had a non-finite loss."""
        if not losses:
            return
        bad = torch.nonzero(~torch.isfinite(torch.stack(losses))).flatten().tolist()  # the one host sync
        if bad:
            at = step - len(losses) + bad[0]
            raise EdgeSparseError(
                f"training diverged: loss is {float(losses[bad[0]])} at epoch {epoch + 1}, step {at + 1} (lr "
                f"{lr_at(at):.3g}, recipe: {cfg.epochs} epochs, lr {cfg.lr:g}, sparsity {cfg.sparsity_reg} "
                f"lambda {cfg.sparsity_lambda}{', KD' if teacher is not None and cfg.kd_alpha > 0 else ''}); lower "
                f"the learning rate (--finetune-lr) or --sparsity-lambda")

    t_cache = None
    if teacher is not None and cfg.kd_alpha > 0 and cfg.augment == "none" and attack is None and start_epoch < cfg.epochs:
        # without augmentation the teacher sees the same image every epoch: its logits once, not once per batch
        # (the KD fine-tune's epochs then cost what the small model's own steps cost)
        t_cache = torch.from_numpy(predict(teacher, splits.train, mean, std, device=device))
    try:
        steps_done = start_epoch * steps_per_epoch
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.time()
            g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            perm = torch.randperm(n, generator=g).numpy()
            perm = perm[rank::world]
            net.train()
            # running sums stay on the device (float64: the same sums a host float would hold), read once an epoch;
            # the divergence check reads the last few losses every CHECK_EVERY steps instead of syncing every step
            tot_loss = torch.zeros((), dtype=torch.float64, device=device)
            tot_correct = torch.zeros((), dtype=torch.int64, device=device)
            seen, recent = 0, []
            batches = [np.sort(perm[i : i + cfg.batch_size]) for i in range(0, len(perm), cfg.batch_size)]
            bar = tqdm(zip(batches, read_train(batches)), total=len(batches), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       leave=False, disable=not (progress and rank == 0 and sys.stderr.isatty()), file=sys.stderr,
                       dynamic_ncols=True)
            for idx, xb in bar:
                # on CUDA the uint8 batch crosses (pinned, non-blocking) and is normalised there: 4x fewer bytes
                x = _augment(to_tensor(xb.to(device, non_blocking=True) if cuda else xb, mean, std), cfg.augment, g).to(
                    device, memory_format=torch.channels_last)
                y = torch.from_numpy(splits.train.y[idx]).to(device, non_blocking=cuda)
                for group in opt.param_groups:
                    group["lr"] = lr_at(steps_done)
                if attack is not None:
                    x = attack(model, x, y, eps=cfg.adv_eps, steps=3, mean=mean, std=std, generator=g)
                    net.train()
                with autocast:
                    logits = net(x)
                    if teacher is not None and cfg.kd_alpha > 0:
                        if t_cache is not None:
                            t_logits = t_cache[torch.from_numpy(idx)].to(device)
                        else:
                            with torch.no_grad():
                                t_logits = teacher(x)
                        loss = kd_loss(logits, t_logits, y, cfg.kd_alpha, cfg.kd_temperature, cfg.label_smoothing)
                    else:
                        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                    if cfg.sparsity_reg == "group_lasso" and cfg.sparsity_lambda > 0:
                        loss = loss + cfg.sparsity_lambda * _group_lasso(model)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if sparsity_step is not None:
                    sparsity_step()
                opt.step()
                steps_done += 1
                loss = loss.detach().float()
                recent.append(loss)
                tot_loss += loss.double() * len(idx)
                tot_correct += (logits.argmax(1) == y).sum()
                seen += len(idx)
                if len(recent) >= CHECK_EVERY:
                    diverged(recent, steps_done, epoch)
                    recent = []
                    if not bar.disable:
                        bar.set_postfix(loss=f"{float(tot_loss) / seen:.3f}", acc=f"{100 * int(tot_correct) / seen:.1f}")
                if stop_after_steps is not None and steps_done >= stop_after_steps:
                    raise KeyboardInterrupt(f"stopped after {steps_done} steps (simulated kill)")
            diverged(recent, steps_done, epoch)
            tot_loss, tot_correct = float(tot_loss), int(tot_correct)
            val_acc = accuracy(model, splits.val, mean, std, device=device) if rank == 0 else float("nan")
            rec = {"epoch": epoch + 1, "loss": tot_loss / max(1, seen), "train_acc": 100 * tot_correct / max(1, seen),
                   "val_acc": val_acc, "bn_small_frac": bn_small_fraction(model), "seconds": time.time() - t0}
            history.append(rec)
            if progress and rank == 0:
                print(f"  epoch {epoch + 1}/{cfg.epochs}: loss {rec['loss']:.3f}  train {rec['train_acc']:.1f}%  "
                      f"val {val_acc:.2f}%  |gamma|<1e-2: {100 * rec['bn_small_frac']:.0f}%  ({rec['seconds']:.0f}s)",
                      file=sys.stderr)
            if ckpt and rank == 0:
                save_checkpoint(ckpt, model, opt, epoch + 1, history)
        if distributed:
            # every rank leaves together, after rank 0's validation and checkpoint: a rank that ran ahead into
            # destroy_process_group while its peer still held the gloo pair aborted ("terminate called without an
            # active exception", SIGABRT, 1 run in 6 here)
            import torch.distributed as dist

            dist.barrier()
    finally:  # also on a divergence error or a simulated kill: the caller's modules are left as they came
        read_train.close()
        _unguard(guards)
        model.to("cpu", memory_format=torch.contiguous_format)
        if teacher is not None:
            teacher.to("cpu", memory_format=torch.contiguous_format)
    return history


def bn_small_fraction(model: nn.Module, thresh: float = 1e-2) -> float:
    g = [m.weight.detach().abs().flatten() for m in model.modules()
         if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    if not g:
        return 0.0
    g = torch.cat(g)
    return float((g < thresh).float().mean())


def save_checkpoint(path: Path, model: nn.Module, opt, epoch: int, history: list[dict]) -> None:
    state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "optimizer": opt.state_dict(), "epoch": epoch, "history": json.dumps(history),
             "arch": arch_signature(model)}
    with _io.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, model: nn.Module) -> dict:
    """Load weights into `model` (weights_only: no code is unpickled); refuse another architecture."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EdgeSparseError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise EdgeSparseError(f"{path}: not an edge_sparse checkpoint (no 'model' entry)")
    mine = arch_signature(model)
    if state.get("arch") != mine:
        theirs = json.loads(state["arch"]) if state.get("arch") else []
        ours = json.loads(mine)
        diff = next((f"{a[0]} {a[1]} vs {b[0]} {b[1]}" for a, b in zip(theirs, ours) if a != b),
                    f"{len(theirs)} tensors vs {len(ours)}")
        raise EdgeSparseError(f"{path}: checkpoint is of another architecture (first difference: {diff})")
    from edge_sparse.models import load_state

    load_state(model, state["model"])
    return state


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: ImageSet, mean, std, *, batches: int = 20, batch_size: int = 128,
                   seed: int = 0, device: Optional[str] = None) -> nn.Module:
    """Re-estimate BatchNorm running statistics on train images (after pruning changed the inputs
    each BN sees). Weights are untouched; the model is returned in eval mode, where it was (`device`: where the
    batches run; None: where the model is)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    rng = np.random.default_rng(seed)
    picks = [np.sort(rng.choice(len(images), size=min(batch_size, len(images)), replace=False)) for _ in range(batches)]
    home = _device_of(model)
    dev = torch.device(device) if device else home
    model.to(dev)
    try:
        with Reader(images, pin_memory=dev.type == "cuda") as read:
            for xb in read(picks):
                model(to_tensor(xb.to(dev, non_blocking=dev.type == "cuda"), mean, std))
    finally:
        model.to(home)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return model.eval()
