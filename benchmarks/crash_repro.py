"""Map the oneDNN crash in a channels-last 1x1 strided conv's weight gradient (issue: training dies in backward).

Run: `.venv/bin/python benchmarks/crash_repro.py` — each shape runs in a forked child (a crash ends the child, not
this script) and prints ok / SIGSEGV / SIGABRT. `--guarded` runs the same shapes the way the build trains them
(edge_sparse.train's guard: every strided 1x1 conv as a subsample and a stride-1 conv, all channels-last).

Measured with torch 2.13.0+cpu on a 2-core AMD EPYC with AVX-512 VNNI (2026-12-04): the weight gradient crashes
for kernel 1x1, stride 2, fewer than 16 input channels (1 crashed in one sweep of two), at most 16 output
channels, an even input side >= 48 px (batch 1: 64 px);
stride 1/3/4, 3x3/2, 2x2/2, odd sides, contiguous memory, or mkldnn disabled do not crash.
"""
from __future__ import annotations

import argparse
import os
import signal

import torch
import torch.nn as nn


def _step(cin: int, cout: int, side: int, batch: int, k: int, s: int, guarded: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, s, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(batch, cin, side, side).to(memory_format=torch.channels_last)
    if guarded:
        from edge_sparse.train import _guard_strided_1x1
        _guard_strided_1x1(conv)  # noqa: the forward is swapped in place
    for _ in range(3):
        conv(x).sum().backward()


def check(*shape) -> str:
    """'ok', or the signal / exit status the child died with."""
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # glibc's "double free" lines
        try:
            _step(*shape)
            os._exit(0)
        except Exception:  # noqa: BLE001
            os._exit(7)
    _, st = os.waitpid(pid, 0)
    if os.WIFSIGNALED(st):
        return signal.Signals(os.WTERMSIG(st)).name
    return "ok" if os.WEXITSTATUS(st) == 0 else f"exit {os.WEXITSTATUS(st)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guarded", action="store_true", help="apply the build's guard")
    a = ap.parse_args()
    print(f"torch {torch.__version__}; guarded={a.guarded}")
    print("kernel/stride at 8->16, 64 px, batch 16:",
          {f"{k}x{k}/{s}": check(8, 16, 64, 16, k, s, a.guarded) for k, s in [(1, 1), (1, 2), (1, 3), (1, 4), (2, 2), (3, 2)]})
    print("side at 8->16, batch 16:", {side: check(8, 16, side, 16, 1, 2, a.guarded) for side in [32, 40, 47, 48, 49, 63, 64, 65, 96, 128]})
    for cin in [1, 4, 8, 12, 15, 16, 24]:
        print(f"cin {cin:2d}, cout ->", {cout: check(cin, cout, 64, 16, 1, 2, a.guarded) for cout in [1, 4, 8, 16, 17, 24]})


if __name__ == "__main__":
    main()
