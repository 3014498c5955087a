"""The latency commands of `edge-sparse`: `profile` (alias `calibrate`) and `latency check`.

    edge-sparse profile --target host [--refresh]                      # this machine, cached
    edge-sparse profile --target rpi4 --device pi@raspberrypi.local    # = make profile TARGET=rpi4 DEVICE=...
    edge-sparse latency check --target host                            # predicted vs measured, random variants
    edge-sparse latency check --target rpi4 --reference nb201          # the estimate vs real Pi 4 timings
"""
from __future__ import annotations

import argparse

import torch

from edge_sparse.errors import EdgeSparseError


def _shape(s: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not C,H,W (e.g. 1,28,28)") from None
    if min(c, h, w) < 1:
        raise argparse.ArgumentTypeError(f"{s!r}: every dimension must be >= 1")
    return c, h, w


def add_parsers(sub) -> None:
    raw = argparse.RawDescriptionHelpFormatter  # keeps each epilog's example on its own line
    for name in ("profile", "calibrate"):
        p = sub.add_parser(name, help="time the probe suite on the target (a device over ssh/adb, or this host) and "
                                      "write its measured latency table into targets/", formatter_class=raw,
                           epilog=f"example:\n  edge-sparse {name} --target rpi4 --device pi@raspberrypi.local")
        p.add_argument("target", nargs="?", help="target name (or use --target)")
        p.add_argument("--target", dest="target_opt")
        p.add_argument("--device", help="user@host (ssh) or adb[:serial]; omit for the host target")
        p.add_argument("--model", default="resnet8", help="the architecture the build will search (its op shapes)")
        p.add_argument("--input-shape", type=_shape, default=(1, 28, 28), help="C,H,W of one image (default 1,28,28)")
        p.add_argument("--num-classes", type=int, default=10)
        p.add_argument("--python", default="python3", help="the device's Python")
        p.add_argument("--timings", help="bench.py --probes JSON from a run done by hand (with --suite)")
        p.add_argument("--suite", help="the probe suite directory those timings are of")
        p.add_argument("--refresh", action="store_true",
                       help="host: probe every op shape again (a cached table is otherwise re-probed only when this "
                            "machine's speed has drifted by more than 10 %% since)")
    nb201 = "example:\n  edge-sparse latency check --target rpi4 --reference nb201    # the Pi 4 estimate vs real Pi 4 timings"
    lat = sub.add_parser("latency", help="latency tools: `latency check`", formatter_class=raw, epilog=nb201)
    ls = lat.add_subparsers(dest="latency_command", required=True)
    c = ls.add_parser("check", help="the target's latency model against measurements", formatter_class=raw, epilog=nb201)
    c.add_argument("--target", required=True)
    c.add_argument("--reference", help="nb201: real Raspberry Pi 4 / Pixel 3 timings of NAS-Bench-201 networks")
    c.add_argument("--per-arch", type=int, default=10, help="host: random pruned variants per architecture")
    c.add_argument("--sample", type=int, default=1000, help="nb201: networks checked (stratified)")
    c.add_argument("--folds", type=int, default=5, help="nb201: cross-validation folds")
    c.add_argument("--json", help="write the full result here")
    c.add_argument("--write-fit", action="store_true",
                   help="nb201: store the fit as the target's device estimate (edge_sparse/latency/reference/fit-<target>.json)")


def dispatch(a) -> int:
    if a.command in ("profile", "calibrate"):
        return _profile(a)
    if a.command == "latency" and a.latency_command == "check":
        return _check(a)
    raise EdgeSparseError(f"unknown latency command {a.command!r}")


def _profile(a) -> int:
    from edge_sparse import models
    from edge_sparse.latency.device import profile

    target = a.target_opt or a.target
    if not target:
        raise EdgeSparseError("which target? give --target NAME (e.g. rpi4)")
    if a.num_classes < 2:
        raise EdgeSparseError(f"--num-classes must be >= 2, got {a.num_classes}")
    c, h, _ = a.input_shape
    model = models.create(a.model, in_channels=c, num_classes=a.num_classes, input_size=h).eval()
    r = profile(target, model, torch.zeros(1, *a.input_shape), device=a.device, python=a.python,
                timings_file=a.timings, suite_dir=a.suite, refresh=a.refresh)
    print(f"{r['target']}: latency table {r['table']} ({r['entries']} op shapes, {r['source']})")
    return 0


def _check(a) -> int:
    if a.per_arch < 1 or a.sample < 10 or a.folds < 2:
        raise EdgeSparseError("--per-arch must be >= 1, --sample >= 10 and --folds >= 2")
    if a.reference:
        from edge_sparse.latency import check

        res = check.run_check(a.target, reference=a.reference, sample=a.sample, folds=a.folds)
        print(check.format_report(res))
        if a.write_fit:
            from edge_sparse.latency import estimate

            print(f"fit written to {estimate.write_fit(res)}")
        if a.json:
            from pathlib import Path

            from edge_sparse import _io

            _io.write_json(Path(a.json), res)
        return 0
    from edge_sparse.latency import hostcheck
    from edge_sparse.targets import load_target

    t = load_target(a.target)
    if t.latency_table != "host":
        raise EdgeSparseError(f"target {t.name}: only a target measured on this host can be checked against this "
                              f"host's timings; for a device use --reference nb201 (rpi4, android-arm64)")
    hostcheck.main(a.target, a.per_arch, a.json)
    return 0
