"""`make bench`: run a bundle's bench.py here, on a Pi over ssh, or on an Android device over adb.

    python -m edge_sparse.remote --bundle dist/rpi4                      # this host
    python -m edge_sparse.remote --bundle dist/rpi4 --device pi@raspberrypi.local
    python -m edge_sparse.remote --bundle dist/android-arm64 --device adb[:SERIAL]

The device needs Python >= 3.9, numpy and one runtime (`pip install ai-edge-litert`). On Android that
Python must be reachable from `adb shell`: a Termux install is not (its files belong to the Termux
app), so push a static CPython to /data/local/tmp or pass `--python` with a path adb's shell user can
run. The harness JSON comes back as `<bundle>/bench-<device>.json`, ready for `edge-sparse calibrate`.
Flags after `--` go to bench.py.
"""
from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

from edge_sparse import _io


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rest = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(prog="make bench")
    p.add_argument("--bundle", required=True)
    p.add_argument("--device", help="user@host (ssh) or adb[:serial]; omit for this host")
    p.add_argument("--python", default="python3", help="the device's Python")
    a = p.parse_args(argv)
    bundle = Path(a.bundle)
    if not (bundle / "bench.py").is_file():
        print(f"error: {bundle} is not a bundle (no bench.py)", file=sys.stderr)
        return 2
    if not a.device:
        return subprocess.call([sys.executable, "bench.py", "--json", "bench-host.json", *rest], cwd=bundle)
    from edge_sparse.errors import EdgeSparseError
    from edge_sparse.latency.device import Remote

    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", a.device)
    try:
        dev = Remote(a.device)
        dev.shell("true", "connecting", 30)
        where = dev.push(bundle.resolve(), "the bundle")
        out = f"{where}/bench.json"
        cmd = f"cd {shlex.quote(where)} && {a.python} bench.py --json {shlex.quote(out)} {' '.join(shlex.quote(r) for r in rest)}"
        rc = dev.shell_rc(cmd, "running bench.py")
        if rc not in (0, 1):
            print(f"error: bench.py on {a.device} exited {rc}", file=sys.stderr)
            return rc
        _io.write_text(bundle / f"bench-{tag}.json", dev.read(out, "bench.json"))
        print(f"wrote {bundle / f'bench-{tag}.json'}", file=sys.stderr)
        return rc
    except EdgeSparseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
