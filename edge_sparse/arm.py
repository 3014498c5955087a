"""`make verify-arm`: run a bundle's bench.py on a real aarch64 userland under qemu-user emulation and
check that it computes what this host computes: int8 outputs within 1 LSB (ONNX Runtime's float logits
within 8 output steps, 16 on an x86 host without VNNI), the same top-1 for every image except near-ties
(images whose two best logits are so close that the allowed error can swap them; counted and printed), and the count of values that
differ (often 0, but not a promise).

Why not bit-identity: XNNPACK picks its int8 kernels per ISA (NEON dot-product on ARM; AVX2, AVX-512 or
AVX-512 VNNI on x86), and their requantisation may round an output differently by one step. On an
AVX-512 VNNI host the emulated ARM outputs of ai-edge-litert matched bit for bit; on an AVX2-only host
tflite-runtime differed in 70 of 1000 values by 1 LSB (one top-1 flip, on a near-tie) and ONNX Runtime
by up to 7 output steps in 3 of 1000 values (10 steps in 9 of 1000 on another, 2026-12-03: without VNNI
ORT's u8s8 kernels saturate, so on such a host its tolerance is 16 steps).

    python -m edge_sparse.arm --bundle dist/rpi4 --target rpi4

Recipe (no chroot, no binfmt): Debian's qemu-user-static and mmdebstrap; an `extract`-variant arm64
bookworm sysroot with python3.11; aarch64 wheels of numpy<2, ai-edge-litert, tflite-runtime and
onnxruntime installed into SYSROOT/site with pip's cross-platform flags; an ARM /proc/cpuinfo at
SYSROOT/proc/cpuinfo (onnxruntime and newer LiteRT crash parsing the x86 one; qemu -L serves it).
QEMU_CPU names the target's core (cortex-a72 for a Pi 4, cortex-a76 for a Pi 5): qemu's default `max`
CPU takes LiteRT down an SME path whose int8 results differ. Emulated timings mean nothing and the
harness says so (`--emulated`); correctness is the point. The sysroot is cached in build/arm64-sysroot.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CORES = {"rpi4": "cortex-a72", "rpi5": "cortex-a76", "android-arm64": "cortex-a76"}
WHEELS = ["numpy<2", "ai-edge-litert==2.1.0", "tflite-runtime==2.14.0", "onnxruntime==1.23.0"]
PLATFORMS = ["manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64",
             "manylinux_2_34_aarch64"]
CPU_ENTRY = """processor\t: {n}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: {part}
CPU revision\t: 3

"""


def cpuinfo(core: str) -> str:
    """An ARM /proc/cpuinfo with one entry per host CPU (runtimes cross-check it against sysfs)."""
    part = {"cortex-a72": "0xd08", "cortex-a76": "0xd0b"}.get(core, "0xd08")
    body = "".join(CPU_ENTRY.format(n=i, part=part) for i in range(os.cpu_count() or 1))
    return body + f"Model\t\t: emulated aarch64 ({core}) under qemu-user\n"


class Fail(Exception):
    pass


def _sh(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise Fail(f"`{' '.join(map(str, cmd[:4]))} …` failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}")
    return r


def _mirror() -> str:
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            for line in f.read_text().splitlines():
                line = line.strip()
                if line.startswith("URIs:") and line.rstrip("/").endswith("/debian"):
                    return line.split(":", 1)[1].strip()
                if line.startswith("deb ") and line.split()[1].rstrip("/").endswith("/debian"):
                    return line.split()[1]
        except OSError:
            continue
    return "http://deb.debian.org/debian"


def ensure_tools() -> None:
    missing = [t for t in ("qemu-aarch64-static", "mmdebstrap") if shutil.which(t) is None]
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        pk = ["qemu-user-static" if "qemu" in m else "mmdebstrap" for m in missing]
        r = subprocess.run(["apt-get", "install", "-y", "-q", *pk], capture_output=True, text=True)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            _sh(["apt-get", "install", "-y", "-q", *pk])
        return
    raise Fail(f"missing {', '.join(missing)}: run `sudo apt-get install qemu-user-static mmdebstrap`")


def ensure_sysroot(root: Path, core: str) -> Path:
    py = root / "usr" / "bin" / "python3.11"
    if not py.exists():
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        root.parent.mkdir(parents=True, exist_ok=True)  # mmdebstrap needs the parent to exist
        print(f"verify-arm: making an arm64 sysroot in {root} (once) ...", file=sys.stderr, flush=True)
        _sh(["mmdebstrap", "--variant=extract", "--arch=arm64", "--include=python3.11,libstdc++6,libgomp1",
             "bookworm", str(tmp), _mirror()], timeout=900)
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
    site = root / "site"
    if not (site / ".complete").exists():
        print("verify-arm: fetching aarch64 wheels ...", file=sys.stderr, flush=True)
        shutil.rmtree(site, ignore_errors=True)
        plat = [a for p in PLATFORMS for a in ("--platform", p)]
        _sh([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(site),
             "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", *plat,
             *WHEELS], timeout=900)
        (site / ".complete").write_text("ok\n")
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc" / "cpuinfo").write_text(cpuinfo(core))
    return root


def run_arm(root: Path, core: str, bundle: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "QEMU_CPU": core, "PYTHONPATH": str(root / "site"), "QEMU_LD_PREFIX": str(root),
           "BENCH_CHILD_LAUNCHER": f"qemu-aarch64-static -L {shlex.quote(str(root))}"}  # bench.py's load-check child runs emulated too
    return subprocess.run(["qemu-aarch64-static", "-L", str(root), str(root / "usr/bin/python3.11"), "bench.py",
                           "--emulated", *args], cwd=bundle, env=env, capture_output=True, text=True, timeout=1800)


def _onnx_steps() -> int:
    """How many output steps ONNX Runtime's float logits may differ by between this host and the ARM run: 8, or 16
    on an x86 host without VNNI, where ORT's u8s8 GEMM (AVX2 pmaddubsw) saturates its int16 pair sums, so the host
    side is the inexact one (measured on AVX2-only hosts: 7 steps, and 10 steps on 2026-12-03)."""
    from edge_sparse.latency.host import cpu_facts

    f = cpu_facts()
    x86 = f["machine"] in ("x86_64", "AMD64")
    return 16 if x86 and not {"avx512_vnni", "avx_vnni"} & set(f["isa"]) else 8


def _onnx_output_step(path: Path) -> float:
    """Scale of the DequantizeLinear that produces the QDQ model's output (one int8 step of the logits)."""
    import onnx
    from onnx import numpy_helper

    mp = onnx.load(str(path))
    out = mp.graph.output[0].name
    inits = {i.name: i for i in mp.graph.initializer}
    for n in mp.graph.node:
        if n.output[0] == out and n.op_type == "DequantizeLinear" and n.input[1] in inits:
            return float(numpy_helper.to_array(inits[n.input[1]]).max())
    return 1e-3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="make verify-arm")
    p.add_argument("--bundle", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--sysroot", default="build/arm64-sysroot")
    p.add_argument("--eval-limit", type=int, default=300, help="images compared (emulation is slow)")
    p.add_argument("--runtimes", default="ai_edge_litert,tflite_runtime,onnxruntime")
    a = p.parse_args(argv)
    bundle = Path(a.bundle).resolve()
    core = CORES.get(a.target, "cortex-a72")
    try:
        if not (bundle / "bench.py").is_file():
            raise Fail(f"{bundle} is not a bundle (no bench.py)")
        ensure_tools()
        root = ensure_sysroot(Path(a.sysroot).resolve(), core)
        ok = True
        with tempfile.TemporaryDirectory() as tmp:
            for rt in a.runtimes.split(","):
                model = "model.onnx" if rt == "onnxruntime" else "model.tflite"
                common = ["--runtime", rt, "--model", model, "--runs", "3", "--warmup-runs", "1",
                          "--eval-limit", str(a.eval_limit)]
                h = subprocess.run([sys.executable, "bench.py", *common, "--dump-outputs", f"{tmp}/host_{rt}.npy"],
                                   cwd=bundle, capture_output=True, text=True, timeout=600)
                if h.returncode not in (0, 1):
                    raise Fail(f"host run of bench.py ({rt}) failed: {h.stderr.strip()[-300:]}")
                r = run_arm(root, core, bundle, [*common, "--dump-outputs", f"{tmp}/arm_{rt}.npy"])
                if r.returncode != 0:
                    print(f"[{rt}] FAILED under emulation: {(r.stderr or r.stdout).strip()[-400:]}")
                    ok = False
                    continue
                host, arm = np.load(f"{tmp}/host_{rt}.npy"), np.load(f"{tmp}/arm_{rt}.npy")
                same = host.dtype == arm.dtype and np.array_equal(host, arm)
                diff = float(np.abs(host.astype(np.float64) - arm.astype(np.float64)).max())
                with np.load(bundle / "eval.npz") as z:
                    y = z["y"][: a.eval_limit]
                acc_h, acc_a = float((host.argmax(1) == y).mean() * 100), float((arm.argmax(1) == y).mean() * 100)
                n_diff = int((host != arm).sum())
                h64, a64 = host.astype(np.float64), arm.astype(np.float64)
                flips = host.argmax(1) != arm.argmax(1)
                top2 = np.sort(h64, axis=1)[:, -2:]
                margin = top2[:, 1] - top2[:, 0]  # the host's lead of its top-1 over its runner-up
                if rt in ("ai_edge_litert", "tflite_runtime"):  # per-ISA int8 kernels may round 1 LSB apart
                    tol, unit = 1.0, "int8 within 1 LSB"
                else:  # onnxruntime: dequantised float logits; x86 int8 GEMMs (u8s8 without VNNI) round differently
                    step, k = _onnx_output_step(bundle / "model.onnx"), _onnx_steps()
                    tol, unit = k * step * 1.001, f"within {k} output steps ({k * step:.4g})"
                # a top-1 may flip only on a near-tie: both logits moving by the allowed error can swap them
                near_tie = margin <= 2 * tol
                bad_flips = int((flips & ~near_tie).sum())
                good = diff <= tol and bad_flips == 0
                rule = f"{unit}; top-1 identical except near-ties (host margin <= {2 * tol:.3g})"
                same_top1 = not flips.any()
                ok &= good
                detail = "bit-identical" if same else f"{n_diff} of {host.size} values differ, max |diff| {diff:.3g}"
                top1 = "identical" if same_top1 else f"differs on {int(flips.sum())} ({int((flips & near_tie).sum())} near-ties)"
                print(f"[{rt}] aarch64 ({core}, emulated) vs host: {detail} ({host.dtype}, {len(host)} images), "
                      f"top-1 {top1}, accuracy {acc_a:.2f}% vs {acc_h:.2f}% "
                      f"-> {'OK' if good else 'MISMATCH'} (rule: {rule})")
        print("verify-arm: " + ("OK" if ok else "FAILED") + " (timings under emulation are meaningless and not reported)")
        return 0 if ok else 1
    except Fail as e:
        print(f"error: verify-arm: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
