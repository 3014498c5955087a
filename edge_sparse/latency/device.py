"""`make profile`: time a probe suite on the device with the bundle's harness; write its latency table.

    edge-sparse profile --target rpi4 --device pi@raspberrypi.local     # over ssh
    edge-sparse profile --target android-arm64 --device adb[:SERIAL]    # over adb
    edge-sparse profile --target host                                   # this machine (cached)
    edge-sparse profile --target rpi4 --timings t.json --suite DIR      # a run you did by hand

In:  a target profile, the architecture the build will search (`--model`, input shape), a device.
Out: `targets/<name>.latency.json` (every op shape the search may choose, timed on the device with the
     target's threads, provenance: device CPU, runtime and version, date) and `latency_table = ...` in
     `targets/<name>.toml`; both validated before they are written, each written atomically.
Run: ssh options for unusual setups (port, key) go in `EDGE_SPARSE_SSH_OPTS`. Emulated runs (qemu)
     are refused: their timings say nothing about the device.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from edge_sparse import _io
from edge_sparse.errors import EdgeSparseError
from edge_sparse.latency.ops import extract_ops
from edge_sparse.latency.table import LatencyTable, grid_ops
from edge_sparse.targets import Target, load_target

HARNESS = Path(__file__).resolve().parent.parent / "harness" / "bench.py"


class Remote:
    """A device reached over ssh (`user@host`) or adb (`adb[:serial]`); every call bounded in time."""

    def __init__(self, spec: str, timeout: float = 900):
        if not spec or spec.startswith("-") or re.search(r"\s", spec):
            raise EdgeSparseError(f"DEVICE={spec!r}: expected user@host (ssh) or adb[:serial]")
        self.spec, self.timeout = spec, timeout
        self.adb = spec == "adb" or spec.startswith("adb:")
        self.base = "/data/local/tmp/edge_sparse_probes" if self.adb else "/tmp/edge_sparse_probes"

    def _cmd(self, *args: str) -> list[str]:
        if self.adb:
            serial = self.spec.split(":", 1)[1:]
            return ["adb", *(["-s", serial[0]] if serial else []), *args]
        return ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                *shlex.split(os.environ.get("EDGE_SPARSE_SSH_OPTS", "")), self.spec, *args]

    def _call(self, cmd: list[str], what: str, timeout: Optional[float] = None) -> subprocess.CompletedProcess:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or self.timeout)
        except FileNotFoundError:
            raise EdgeSparseError(f"DEVICE={self.spec}: {cmd[0]} is not installed here") from None
        except subprocess.TimeoutExpired:
            raise EdgeSparseError(f"DEVICE={self.spec}: {what} timed out after {timeout or self.timeout:.0f} s") from None
        if r.returncode != 0:
            last = (r.stderr or r.stdout).strip().splitlines()
            raise EdgeSparseError(f"DEVICE={self.spec}: {what} failed (exit {r.returncode}): "
                                  f"{last[-1] if last else 'no output'}")
        return r

    def shell(self, command: str, what: str, timeout: Optional[float] = None) -> str:
        args = ["shell", command] if self.adb else [command]
        return self._call(self._cmd(*args), what, timeout).stdout

    def shell_rc(self, command: str, what: str, timeout: Optional[float] = None) -> int:
        """Run `command` there, its output streamed here; return its exit code (the harness's verdict)."""
        args = ["shell", command] if self.adb else [command]
        try:
            return subprocess.run(self._cmd(*args), timeout=timeout or self.timeout).returncode
        except subprocess.TimeoutExpired:
            raise EdgeSparseError(f"DEVICE={self.spec}: {what} timed out after {timeout or self.timeout:.0f} s") from None

    def push(self, local: Path, what: str) -> str:
        """Copy the directory `local` to the device; return its path there."""
        remote = f"{self.base}/{local.name}"
        self.shell(f"rm -rf {shlex.quote(remote)} && mkdir -p {shlex.quote(self.base)}", "preparing a directory", 60)
        if self.adb:
            self._call(self._cmd("push", str(local), remote), f"copying {what}")
        else:
            # ssh + tar: one connection, no scp option quirks
            tar = subprocess.run(["tar", "-C", str(local.parent), "-cf", "-", local.name], capture_output=True, check=True).stdout
            try:
                r = subprocess.run(self._cmd(f"tar -C {shlex.quote(self.base)} -xf -"), input=tar, capture_output=True,
                                   timeout=self.timeout)
            except subprocess.TimeoutExpired:
                raise EdgeSparseError(f"DEVICE={self.spec}: copying {what} timed out") from None
            if r.returncode != 0:
                raise EdgeSparseError(f"DEVICE={self.spec}: copying {what} failed: "
                                      f"{r.stderr.decode(errors='replace').strip().splitlines()[-1:] or ['no output']}")
        return remote

    def read(self, remote_file: str, what: str) -> str:
        return self.shell(f"cat {shlex.quote(remote_file)}", f"reading {what}", 60)


def probe_ops(model: torch.nn.Module, example: torch.Tensor, target: Target):
    """Every op shape a width search on `model` may produce at the target's channel multiple."""
    ops = extract_ops(model, example)
    return grid_ops(ops, target.channel_multiple, fixed_in=example.shape[1], fixed_out=ops[-1].cout)


def run_suite_on_device(suite_dir: Path, remote: Remote, threads: int, python: str = "python3",
                        runs: int = 100, rounds: int = 5) -> dict:
    """Ship the suite and the harness, time it there with `bench.py --probes`, bring the JSON back."""
    with tempfile.TemporaryDirectory(prefix="edge_sparse_ship_") as tmp:
        pkg = Path(tmp) / "suite"
        shutil.copytree(suite_dir, pkg)
        shutil.copy2(HARNESS, pkg / "bench.py")
        where = remote.push(pkg, "the probe suite")
    out = f"{where}/timings.json"
    cmd = (f"cd {shlex.quote(where)} && {python} bench.py --probes . --threads {int(threads)} --runs {int(runs)} "
           f"--rounds {int(rounds)} --json {shlex.quote(out)}")
    remote.shell(cmd, "running bench.py --probes")
    try:
        return json.loads(remote.read(out, "the probe timings"))
    except ValueError as e:
        raise EdgeSparseError(f"DEVICE={remote.spec}: the probe timings are not valid JSON ({e})") from None


def _check_timings(timings, target: Target) -> None:
    """Refuse probe timings taken under emulation, by something else than `bench.py --probes`, or with other threads."""
    if not isinstance(timings, dict):
        raise EdgeSparseError("not a bench.py --probes result (expected a JSON object)")
    if timings.get("emulated"):
        raise EdgeSparseError("these probe timings were measured under emulation (qemu); they say nothing about the "
                              "device's speed — run bench.py --probes on the device itself")
    if timings.get("format") != "edge_sparse.probe_timings/1":
        raise EdgeSparseError("not a bench.py --probes result (format must be 'edge_sparse.probe_timings/1')")
    try:
        threads = int(timings.get("threads", -1))
    except (TypeError, ValueError):
        threads = -1
    if threads != target.threads:
        raise EdgeSparseError(f"the probe run used {timings.get('threads')} threads, but target {target.name} runs "
                              f"{target.threads}; re-run with --threads {target.threads}")


def table_from_run(suite: dict, timings: dict, target: Target, device: str) -> LatencyTable:
    from edge_sparse.latency.probes import VERSION

    _check_timings(timings, target)
    missing = [p["name"] for p in suite["probes"] if p["name"] not in timings.get("timings", {})]
    if missing:
        raise EdgeSparseError(f"the probe timings lack {len(missing)} probes of the suite (first: {missing[0]}); "
                              f"{'failed: ' + str(timings['failed']) if timings.get('failed') else 'a different suite?'}")
    dev = timings.get("device", {})
    prov = {"source": "measured", "device": device, "cpu": dev.get("cpu_model") or dev.get("cpu") or "unknown",
            "machine": dev.get("machine"), "runtime": timings.get("runtime"),
            "runtime_version": f"{timings.get('runtime')} {timings.get('runtime_version')}",
            "threads": int(timings["threads"]), "date": timings.get("date"),
            "how": "bench.py --probes on the device: one int8 op per .tflite, interleaved rounds; "
                   "op cost = probe p50 - overhead probe p50 (or - its context's probe p50: probes.baseline)",
            "probes_version": VERSION}
    return LatencyTable.from_timings(suite, timings, prov)


def install_table(target: Target, table: LatencyTable) -> Path:
    """Write `targets/<name>.latency.json` and point the profile at it; validated first, atomic."""
    tdir = Path(target.path).parent
    name = f"{target.name}.latency.json"
    toml = Path(target.path)
    text = toml.read_text()
    line = f'latency_table = "{name}"'
    if re.search(r"(?m)^latency_table\s*=.*$", text):
        new = re.sub(r"(?m)^latency_table\s*=.*$", line, text, count=1)
    else:  # top-level key: before the first [table]
        m = re.search(r"(?m)^\[", text)
        new = (text[: m.start()] + line + "\n\n" + text[m.start():]) if m else text.rstrip() + "\n" + line + "\n"
    with tempfile.TemporaryDirectory(prefix="edge_sparse_target_") as tmp:  # validate the pair before writing either
        (Path(tmp) / name).write_text(json.dumps(table.to_dict()))
        (Path(tmp) / toml.name).write_text(new)
        LatencyTable.load(Path(tmp) / name)
        load_target(Path(tmp) / toml.name)
    table.save(tdir / name)
    _io.write_text(toml, new)
    return tdir / name


def profile(target_name: str, model: torch.nn.Module, example: torch.Tensor, device: Optional[str] = None,
            python: str = "python3", log=print, timings_file: Optional[Path] = None,
            suite_dir: Optional[Path] = None, refresh: bool = False) -> dict:
    from edge_sparse.latency import probes

    t = load_target(target_name)
    ops = probe_ops(model, example, t)
    if t.latency_table == "host" and not device and not timings_file:
        from edge_sparse.latency.host import host_table

        table = host_table(ops, t.threads, log=log, refresh=refresh)
        return {"target": t.name, "table": table.path, "entries": len(table.entries), "source": "measured (host)"}
    if timings_file:
        if not suite_dir:
            raise EdgeSparseError("--timings needs --suite DIR: the probe suite those timings are of")
        timings = _load_json(Path(timings_file), "probe timings")  # the timings first: they are what is refused most
        _check_timings(timings, t)
        suite = _load_json(Path(suite_dir) / "probes.json", "probe suite")
        device = device or "device (timings given by hand)"
    else:
        if not device:
            raise EdgeSparseError(f"target {t.name} is a device: give DEVICE=user@host or DEVICE=adb[:serial]")
        remote = Remote(device)
        remote.shell("true", "connecting", 30)
        with tempfile.TemporaryDirectory(prefix="edge_sparse_suite_") as tmp:
            log(f"profile: building {len(ops) + 1} int8 probes for {t.name} ...")
            d = probes.write_suite(ops, Path(tmp) / f"probes-{t.name}")
            suite = json.loads((d / "probes.json").read_text())
            log(f"profile: timing them on {device} with bench.py --probes ({t.threads} threads) ...")
            timings = run_suite_on_device(d, remote, t.threads, python=python)
    table = table_from_run(suite, timings, t, device)
    path = install_table(t, table)
    log(f"profile: wrote {path} ({len(table.entries)} op shapes) and set latency_table in {t.path}")
    return {"target": t.name, "table": str(path), "entries": len(table.entries), "source": f"measured on {device}"}


def _load_json(p: Path, what: str) -> dict:
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise EdgeSparseError(f"{p}: no such {what}") from None
    except ValueError as e:
        raise EdgeSparseError(f"{p}: the {what} is not valid JSON ({e})") from None


# int8 .tflite bytes of models timed in this process, by their ONNX export and calibration images
_TIMED_EXPORTS: dict[str, bytes] = {}


def time_models_on_device(models_by_name: dict, input_shape, calib_nhwc, device: Optional[str], threads: int,
                          python: str = "python3", log=print, runs: int = 200, stat: str = "p90") -> dict:
    """p90 (ms; or `stat`, "p50", or "both": (p50, p90)) of each model, exported to full-int8 `.tflite` as the build ships it (less the bias
    correction, which changes bias values only: `tflite.int8_for_timing`), timed on `device` (None: this host, whose
    device is the machine that builds).

    The finalists travel as a probe suite (one `.tflite` each) and run under `bench.py --probes`: the
    same harness, runtime and threads as the bundle, interleaved so the device's drift hits all alike.
    """
    import hashlib

    from edge_sparse.export import onnx as eonnx, tflite as etflite
    from edge_sparse.latency import probes

    where = f"DEVICE={device}" if device else "this host"
    remote = Remote(device) if device else None
    if remote is not None:
        remote.shell("true", "connecting", 30)
    with tempfile.TemporaryDirectory(prefix="edge_sparse_finalists_") as tmp:
        d = Path(tmp) / "finalists"
        d.mkdir()
        entries = []
        calib_key = hashlib.sha256(np.ascontiguousarray(calib_nhwc).tobytes()).hexdigest()
        for i, (name, model) in enumerate(models_by_name.items()):
            f = f"finalist{i}"
            eonnx.export_fp32(model, input_shape, Path(tmp) / f"{f}.onnx")
            key = hashlib.sha256((Path(tmp) / f"{f}.onnx").read_bytes() + calib_key.encode()).hexdigest()
            if key not in _TIMED_EXPORTS:  # the dense model comes back every round, a finalist when timed again
                while len(_TIMED_EXPORTS) >= 8:
                    _TIMED_EXPORTS.pop(next(iter(_TIMED_EXPORTS)))
                _TIMED_EXPORTS[key] = etflite.int8_for_timing(Path(tmp) / f"{f}.onnx", calib_nhwc)
            data = _TIMED_EXPORTS[key] = _TIMED_EXPORTS.pop(key)  # most recently used last, evicted last
            _io.write_bytes(d / f"{f}.tflite", data)
            entries.append({"name": name, "file": f"{f}.tflite", "sha256": hashlib.sha256(data).hexdigest()})
        _io.write_json(d / "probes.json", {"format": "edge_sparse.probes/1", "probes": entries})
        if remote is not None:
            timings = run_suite_on_device(d, remote, threads, python=python, runs=runs)
        else:  # short shuffled rounds: this VM's speed switches within seconds
            timings = probes.time_suite(d, threads, runs=runs, rounds=max(1, runs // 10))
    if timings.get("emulated"):
        raise EdgeSparseError(f"{where}: the finalists were timed under emulation; that says nothing about the device")
    t = timings.get("timings", {})
    missing = [n for n in models_by_name if n not in t]
    if missing:
        raise EdgeSparseError(f"{where}: no timing came back for finalist {missing[0]} "
                              f"({timings.get('failed', {}).get(missing[0], 'unknown reason')})")
    if stat == "both":
        return {n: (float(t[n]["p50"]), float(t[n]["p90"])) for n in models_by_name}
    return {n: float(t[n][stat]) for n in models_by_name}
