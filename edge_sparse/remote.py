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


def _run(cmd: list[str]) -> int:
    print("+ " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd)


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
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", a.device)
    remote_dir = f"/tmp/edge_sparse_{bundle.name}" if not a.device.startswith("adb") else f"/data/local/tmp/edge_sparse_{bundle.name}"
    bench = f"cd {remote_dir} && {a.python} bench.py --json bench.json {' '.join(shlex.quote(r) for r in rest)}"
    if a.device.startswith("adb"):
        serial = a.device.split(":", 1)[1:] or []
        adb = ["adb", *(["-s", serial[0]] if serial else [])]
        if _run([*adb, "push", str(bundle), remote_dir]) != 0:
            print(f"error: adb push to {a.device} failed; is the device connected (`adb devices`)?", file=sys.stderr)
            return 2
        rc = _run([*adb, "shell", bench])
        _run([*adb, "pull", f"{remote_dir}/bench.json", str(bundle / f"bench-{tag}.json")])
        return rc
    if _run(["ssh", a.device, f"rm -rf {remote_dir} && mkdir -p {remote_dir}"]) != 0:
        print(f"error: cannot reach {a.device} over ssh", file=sys.stderr)
        return 2
    if _run(["scp", "-q", "-r", *[str(f) for f in sorted(bundle.iterdir()) if f.is_file()], f"{a.device}:{remote_dir}/"]) != 0:
        print(f"error: copying the bundle to {a.device} failed", file=sys.stderr)
        return 2
    rc = _run(["ssh", a.device, bench])
    _run(["scp", "-q", f"{a.device}:{remote_dir}/bench.json", str(bundle / f"bench-{tag}.json")])
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
