"""The train stage's images/s against a plain DataLoader loop of the same model, files and preprocessing (#33).

In:  Fashion-MNIST (the default build's data) and a JPEG folder made from it (upsampled to 80 px RGB, read at 64 px,
     written once into build/train-speed-jpegs/).
Out: benchmarks/train_speed.json (with the machine) and, with --write, the "Train-stage throughput" section of
     BENCHMARKS.md.
Run: `make bench-train` (= `python -m benchmarks.train_speed --write`); CUDA is measured too when torch sees it.

Both loops run in the same process, alternating round by round (A B A B ...), so a busy machine slows both alike:
compare the ratio, not the absolute numbers. images/s counts training steps only: the time between the end of an
optimizer step and the end of the next one (data wait + forward + backward + step), summed over an epoch's steps
after its first, so neither worker start-up nor the train stage's per-epoch validation is counted. The train stage
is `edge_sparse.train.fit` exactly as the build calls it (the default recipe: one-cycle, L1 on BN scales, its input
path); the reference is the 20-line loop below: a per-image Dataset, torch's DataLoader (shuffle, workers, pinned
memory on CUDA), cross-entropy and SGD. Median of the rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks import ROOT, publish
from edge_sparse import data, models
from edge_sparse.config import BuildConfig
from edge_sparse.train import fit
from torch.optim.optimizer import register_optimizer_step_post_hook

TAG = "train-speed"
JPEGS = ROOT / "build" / "train-speed-jpegs"
N_JPEG = 1500  # images made; 1,215 train after the build's val/test split
N_FMNIST = 3000  # the Fashion-MNIST slice trained on (an epoch per loop and round)
N_JPEG_TRAIN = 768  # the JPEGs' train slice of one epoch per loop and round (6 steps of 128)


# --------------------------------------------------------------------------- the reference loop

class FolderImages(torch.utils.data.Dataset):
    """One image per item, decoded with the build's own preprocessing (data.load_image)."""

    def __init__(self, images: data.ImageSet):
        self.s = images

    def __len__(self):
        return len(self.s)

    def __getitem__(self, i):
        x = self.s.x[i] if self.s.x is not None else data.load_image(self.s.files[i], self.s.size)
        return torch.tensor(x), int(self.s.y[i])


def reference_loop(model, splits: data.Splits, *, device: str, batch_size: int, workers: int, lr: float = 0.1):
    """The plain loop the train stage is measured against; returns the optimizer-step end times of one epoch."""
    cuda = device.startswith("cuda")
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(FolderImages(splits.train), batch_size=batch_size, shuffle=True,
                                         num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0)
    stamps, stamp = _stamper(_sizes(len(splits.train), batch_size), cuda)
    for x, y in loader:
        x = data.to_tensor(x.to(device, non_blocking=cuda), splits.mean, splits.std)
        loss = F.cross_entropy(model(x), y.to(device, non_blocking=cuda))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stamp()
    model.to("cpu")
    return stamps


# --------------------------------------------------------------------------- timing

def _ips(stamps) -> float:
    """images/s of a full batch at the median step time (the steps after the first; a step = the time from the
    previous optimizer step's end to its own): robust to a shared machine's bursts within an epoch."""
    full = [t1 - t0 for (t0, _), (t1, n) in zip(stamps, stamps[1:]) if n == stamps[0][1]]
    return stamps[0][1] / statistics.median(full) if full else float("nan")


def _ips_mean(stamps) -> float:
    """images/s over the steps after the first, all their images over all their time."""
    if len(stamps) < 2:
        return float("nan")
    return sum(n for _, n in stamps[1:]) / (stamps[-1][0] - stamps[0][0])


def _stamper(sizes: list[int], cuda: bool):
    """A step-end recorder: (time, images of that step). On CUDA it synchronises after every step (both loops alike:
    a step's time is then its own)."""
    stamps = []

    def stamp():
        k = len(stamps)
        if cuda:
            torch.cuda.synchronize()
        stamps.append((time.perf_counter(), sizes[k]))

    return stamps, stamp


def _sizes(n: int, batch_size: int) -> list[int]:
    return [min(batch_size, n - i) for i in range(0, n, batch_size)]


def train_stage(model, splits: data.Splits, *, device: str, batch_size: int):
    """`fit` as the build's train stage calls it (its default recipe), one epoch; the step end times."""
    cfg = BuildConfig().train.replace(epochs=1, device=device, batch_size=batch_size)
    stamps, stamp = _stamper(_sizes(len(splits.train), batch_size), device.startswith("cuda"))
    handle = register_optimizer_step_post_hook(lambda opt, a, k: stamp())
    try:
        fit(model, splits, cfg, progress=False, distributed=False)
    finally:
        handle.remove()
    return stamps


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    m = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
         "python": platform.python_version()}
    if torch.cuda.is_available():
        m["gpu"] = torch.cuda.get_device_name(0)
    return m


def make_jpegs(root: Path = JPEGS, n: int = N_JPEG, side: int = 80) -> Path:
    """n Fashion-MNIST train images, upsampled to `side` px RGB JPEGs in root/train/<class>/ (made once)."""
    from PIL import Image

    stamp = root / f".done-{n}-{side}"
    if stamp.is_file():
        return root
    train, _, classes = data.load_fashion_mnist()
    per = n // len(classes)
    for c in range(len(classes)):
        d = root / "train" / f"{c}"
        d.mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(np.flatnonzero(train.y == c)[:per]):
            im = Image.fromarray(train.x[i, ..., 0]).resize((side, side), Image.BILINEAR).convert("RGB")
            im.save(d / f"{k:04d}.jpg", quality=90)
    stamp.write_text("")
    return root


def measure(name: str, splits: data.Splits, arch: str, *, device: str, batch_size: int, ref_workers: int,
            rounds: int, per_read: data.Splits | None = None, log=print) -> dict:
    """Median images/s of the train stage on `splits` (as the build hands them to it) and of the reference loop on
    the same images; `per_read`: the same splits undecoded (a folder), timed as a third loop in the same rounds."""
    c, h, _ = splits.input_shape
    loops = {"train stage": lambda m: train_stage(m, splits, device=device, batch_size=batch_size),
             "reference": lambda m: reference_loop(m, per_read or splits, device=device, batch_size=batch_size,
                                                   workers=ref_workers)}
    if per_read is not None:
        loops["train stage, decoding every epoch"] = lambda m: train_stage(m, per_read, device=device,
                                                                           batch_size=batch_size)
    got, means = {k: [] for k in loops}, {}
    for r in range(rounds):
        for who, run in loops.items():
            torch.manual_seed(r)
            stamps = run(models.create(arch, in_channels=c, num_classes=len(splits.classes), input_size=h))
            got[who].append(_ips(stamps))
            means.setdefault(who, []).append(_ips_mean(stamps))
            log(f"  {name} on {device}, round {r + 1}/{rounds}: {who} {got[who][-1]:.0f} images/s "
                f"(whole epoch {means[who][-1]:.0f})")
    med = {k: statistics.median(v) for k, v in got.items()}
    out = {"case": name, "device": device, "model": arch, "images": len(splits.train), "input": [c, h, h],
           "batch_size": batch_size, "rounds": rounds, "reference_workers": ref_workers,
           "train_stage_images_per_s": round(med["train stage"], 1), "reference_images_per_s": round(med["reference"], 1),
           # the median of the rounds' own ratios: each pair ran back to back, so a load that drifts between rounds
           # (a shared machine) cancels out of it
           "ratio": round(statistics.median(o / f for o, f in zip(got["train stage"], got["reference"])), 3),
           "train_stage_rounds": [round(v, 1) for v in got["train stage"]],
           "reference_rounds": [round(v, 1) for v in got["reference"]],
           "whole_epoch_images_per_s": {k: [round(v, 1) for v in vs] for k, vs in means.items()}}
    if per_read is not None:
        k = "train stage, decoding every epoch"
        out.update({"train_stage_input": "decoded once (uint8 memmap, data.decode_once, as the build does)",
                    "per_read_workers": per_read.train.workers or data.default_workers(),
                    "per_read_images_per_s": round(med[k], 1), "per_read_ratio": round(statistics.median(o / f for o, f in zip(got[k], got["reference"])), 3),
                    "per_read_rounds": [round(v, 1) for v in got[k]]})
    return out


def section(res: dict) -> str:
    m = res["machine"]
    L = [f"<!-- {TAG}:begin -->", "## Train-stage throughput (`make bench-train`)", "",
         f"The build's train stage (`edge_sparse.train.fit` with the default recipe, on the data as the build hands it "
         f"over) against a plain DataLoader loop of the same model, files and preprocessing ({Path(__file__).name}: "
         f"per-image Dataset, shuffle, workers, pinned memory on CUDA), alternating round by round in one run; "
         f"images/s counts training steps only: a full batch over the median step time of an epoch (median of "
         f"{res['results'][0]['rounds']} rounds; the ratio is the median of the rounds' own ratios). Measured "
         f"{res['date']} on {m['cpu']} ({m['cores']} cores, torch {m['torch']}{', ' + m['gpu'] if m.get('gpu') else ''}"
         f"); compare the ratios: the machine is shared and noisy.", "",
         "| case | device | model, input | train images | train stage (images/s) | reference loop (images/s) | ratio |",
         "|---|---|---|---|---|---|---|"]
    for r in res["results"]:
        stage = f"{r['train_stage_images_per_s']:.0f}"
        if "per_read_images_per_s" in r:
            stage += " (decoded once)"
        L.append(f"| {r['case']} | {r['device']} | {r['model']}, {'×'.join(map(str, r['input']))} | {r['images']:,} | "
                 f"{stage} | {r['reference_images_per_s']:.0f} ({r['reference_workers']} workers) | {r['ratio']:.2f}× |")
        if "per_read_images_per_s" in r:
            L.append(f"| {r['case']}, decoding every epoch | {r['device']} | {r['model']}, {'×'.join(map(str, r['input']))} | "
                     f"{r['images']:,} | {r['per_read_images_per_s']:.0f} ({r['per_read_workers']} workers) | "
                     f"{r['reference_images_per_s']:.0f} | {r['per_read_ratio']:.2f}× |")
    L += ["", res.get("note", ""), f"<!-- {TAG}:end -->"]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--write", action="store_true", help="write benchmarks/train_speed.json and BENCHMARKS.md")
    ap.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "train_speed.json"))
    a = ap.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    fm = data.load("fashion-mnist", seed=0, limit_train=N_FMNIST, limit_eval=20)
    folder = data.load("folder", make_jpegs(), seed=0, image_size=64, limit_train=N_JPEG_TRAIN, limit_eval=20)
    decoded = data.decode_once(folder, ROOT / "build" / "cache" / "decoded")  # what the build's data stage does
    results = []
    for dev in a.devices.split(","):
        bs = 128
        results.append(measure("fashion-mnist", fm, "resnet8", device=dev, batch_size=bs, ref_workers=0,
                               rounds=a.rounds, log=log))
        results.append(measure("jpeg folder", decoded, "resnet8", device=dev, batch_size=bs, per_read=folder,
                               ref_workers=min(2, os.cpu_count() or 1) if dev == "cpu" else min(8, os.cpu_count() or 1),
                               rounds=a.rounds, log=log))
    res = {"date": time.strftime("%Y-%m-%d"), "machine": _machine(), "results": results,
           "note": ("In-memory arrays (Fashion-MNIST): the reference DataLoader runs in the main process (workers only "
                    "slow an in-memory dataset down). JPEG folder: the build decodes the images once into a uint8 memmap "
                    "in its cache (data.decode_once, part of its data stage, not timed here), so its train stage reads "
                    "arrays; the row 'decoding every epoch' is the train stage on the undecoded folder (fit's own "
                    "DataLoader workers: --workers, default one per core, at most 8), which is what `fit` does for a "
                    "folder outside a build. The reference loop decodes every epoch with the issue's 2 workers on the "
                    "CPU. The train stage keeps its channels-last layout, the L1-on-BN-scales term and, at 64 px, the CPU "
                    "crash guard (train._guard_strided_1x1: ResNet-8's strided 1x1 shortcuts run as a 2x subsample and a "
                    "stride-1 conv); the reference loop is the default layout, plain cross-entropy. The first guard "
                    "(the conv's input and weight cloned contiguous) cost the train stage ~25 % at 64 px (0.80x in the "
                    "previous run of this benchmark; 302 -> 228 images/s in a side-by-side microbenchmark of the "
                    "same step); the subsample costs ~1 %."
                    " Runs of this benchmark on the quiet machine on 2026-12-04 gave the Fashion-MNIST ratio 0.99 (the new guard), 0.98 (with a foreach SGD, since reverted: no gain) and 1.03 (with the L1 step as two multi-tensor ops, ~0.5 ms a step less, the run above): rounds scatter by about +-3 %, so read ~1.0x as level, not as a margin.")}
    print(json.dumps(res, indent=1))
    if a.write:
        from edge_sparse import _io

        _io.write_json(Path(a.out), res)
    return publish(section(res), TAG, a.write)


if __name__ == "__main__":
    sys.exit(main())
