"""The remote paths for real: `make profile` and `make bench` over ssh against a real sshd on 127.0.0.1.

The test starts Debian's OpenSSH server itself (unprivileged port, throwaway host and client keys,
loopback only) and stops it afterwards; the "device" is this machine reached over ssh, running the
shipped harness with this venv's Python. adb cannot be tested here (no Android device or emulator).
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edge_sparse import models
from edge_sparse.errors import BudgetError, EdgeSparseError

ROOT = Path(__file__).resolve().parent.parent
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not Path(SSHD).is_file() or not shutil.which("ssh-keygen"):
        pytest.skip("openssh-server is not installed (apt-get install openssh-server; .ci/run installs it)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nPermitRootLogin yes\n"
        f"Subsystem sftp internal-sftp\n")
    Path("/run/sshd").mkdir(exist_ok=True) if os.geteuid() == 0 else None  # privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    opts = f"-p {port} -i {d / 'client'} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    env_before = os.environ.get("EDGE_SPARSE_SSH_OPTS")
    os.environ["EDGE_SPARSE_SSH_OPTS"] = opts
    device = f"{getpass.getuser()}@127.0.0.1"
    try:
        for _ in range(300):  # bounded: 60 s for sshd to accept logins (a loaded CI machine is slow to fork it)
            r = subprocess.run(["ssh", "-o", "BatchMode=yes", *opts.split(), device, "true"], capture_output=True)
            if r.returncode == 0:
                break
            if proc.poll() is not None:
                pytest.skip(f"sshd did not start: {proc.stdout.read().decode(errors='replace')[-300:]}")
            time.sleep(0.2)
        else:
            pytest.skip("sshd did not accept a login within 60 s")
        yield {"device": device, "opts": opts, "port": port}
    finally:
        if env_before is None:
            os.environ.pop("EDGE_SPARSE_SSH_OPTS", None)
        else:
            os.environ["EDGE_SPARSE_SSH_OPTS"] = env_before
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_make_profile_over_ssh_writes_a_measured_table(sshd, targets_copy):
    from edge_sparse.latency.device import profile
    from edge_sparse.latency.predict import resolve
    from edge_sparse.targets import load_target

    torch.manual_seed(0)
    m = models.create("tiny_resnet", in_channels=1, num_classes=10, input_size=28).eval()
    ex = torch.zeros(1, 1, 28, 28)
    before = (targets_copy / "rpi4.toml").read_text()
    r = profile("rpi4", m, ex, device=sshd["device"], python=sys.executable, log=lambda *_: None)
    after = (targets_copy / "rpi4.toml").read_text()
    assert 'latency_table = "rpi4.latency.json"' in after and after.replace('latency_table = "rpi4.latency.json"\n\n', "") == before
    table = json.loads((targets_copy / "rpi4.latency.json").read_text())
    assert table["provenance"]["device"] == sshd["device"] and table["provenance"]["threads"] == 4
    assert table["provenance"]["source"] == "measured" and table["provenance"]["runtime_version"]
    from edge_sparse.latency.probes import VERSION

    assert table["provenance"]["probes_version"] == VERSION  # a table of older probes is refused where they differ
    assert r["entries"] == len(table["entries"]) > 10
    pr = resolve(load_target("rpi4"), m, ex)  # the build now prices rpi4 with the device's table
    assert pr.source == "measured" and pr.margin == 0 and pr.dense_p90_ms > 0


@pytest.mark.slow
def test_make_bench_over_ssh_runs_the_bundle_harness(sshd, tmp_path):
    """`make bench DEVICE=...`: the bundle's bench.py runs on the device and its JSON comes back."""
    from edge_sparse import remote

    bundle = _tiny_bundle(tmp_path)
    rc = remote.main(["--bundle", str(bundle), "--device", sshd["device"], "--python", sys.executable, "--",
                      "--runs", "20", "--warmup-runs", "2"])
    assert rc == 0  # within the tiny bundle's 1000 ms budget: a verdict, not a failure
    out = json.loads((bundle / f"bench-{sshd['device'].replace('@', '_')}.json").read_text())
    assert out["latency_ms"]["p90"] > 0 and out["accuracy_top1"] is not None and out["n_eval"] == 200


@pytest.mark.slow
def test_build_with_device_in_the_loop_times_finalists_there(sshd, targets_copy, tmp_path, monkeypatch):
    """`make build DEVICE=...`: the search's finalists are exported, timed on the device, and the choice
    is one that measured within budget there."""
    from edge_sparse import pipeline
    from edge_sparse.config import BuildConfig, TrainConfig

    p = targets_copy / "rpi4.toml"
    p.write_text(p.read_text().replace("latency_budget_ms = 1.00", "latency_budget_ms = 0.45"))
    monkeypatch.setenv("EDGE_SPARSE_DEVICE_PYTHON", sys.executable)
    cfg = BuildConfig.quick(model="tiny_resnet", limit_train=1500, limit_eval=200, eval_size=200,
                            train=TrainConfig(epochs=1), target_device=sshd["device"])
    try:
        b = pipeline.run("rpi4", cfg, out_dir=tmp_path / "dist", cache_dir=tmp_path / "cache", until_stage="search")
    except BudgetError as e:  # this host is the "device": too slow for 0.45 ms even after the second round
        assert "ms on the device, over the full" in str(e), str(e)
        return
    cands = b.results["search"]["candidates"]
    timed = [c for c in cands if c["measured_p90_ms"] is not None]
    assert timed and all(c["method"].startswith("allocate/") for c in timed)
    assert all(c["measured_p90_ms"] > 0 for c in timed)
    chosen = b.results["search"]["chosen"]
    assert chosen["measured_p90_ms"] is not None and chosen["measured_p90_ms"] <= 0.45  # measured, not predicted


def test_unreachable_device_is_one_clear_error(targets_copy):
    from edge_sparse.cli import main

    env = os.environ.get("EDGE_SPARSE_SSH_OPTS")
    os.environ["EDGE_SPARSE_SSH_OPTS"] = "-p 1 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
    try:
        with pytest.raises(EdgeSparseError, match=r"DEVICE=nobody@127.0.0.1: connecting failed"):
            from edge_sparse.latency.device import Remote

            Remote("nobody@127.0.0.1").shell("true", "connecting", 20)
        assert main(["profile", "--target", "rpi4", "--device", "nobody@127.0.0.1", "--model", "tiny_resnet"]) == 2
    finally:
        if env is None:
            os.environ.pop("EDGE_SPARSE_SSH_OPTS", None)
        else:
            os.environ["EDGE_SPARSE_SSH_OPTS"] = env
    assert main(["profile", "--target", "rpi4", "--model", "tiny_resnet"]) == 2  # a device target needs DEVICE=


def _tiny_bundle(tmp_path: Path) -> Path:
    """A QUICK-style bundle is minutes to build; the harness only needs a model and its bundle files."""
    cached = ROOT / "build" / "test-cache" / "remote-bundle"
    if not (cached / "bench.py").is_file():
        from edge_sparse import pipeline
        from edge_sparse.config import BuildConfig, TrainConfig

        cfg = BuildConfig.quick(model="tiny_resnet", limit_train=1500, limit_eval=200, eval_size=200, robust_n=50,
                                train=TrainConfig(epochs=1), finetune=TrainConfig(epochs=1, lr=0.02, sparsity_reg="none"),
                                reference="warmup")
        tgt = ROOT / "build" / "test-cache" / "remote-targets"
        tgt.mkdir(parents=True, exist_ok=True)
        text = (ROOT / "targets" / "rpi4.toml").read_text().replace("latency_budget_ms = 1.00", "latency_budget_ms = 1000")
        (tgt / "rpi4.toml").write_text(text)
        os.environ["EDGE_SPARSE_TARGETS"] = str(tgt)
        try:
            b = pipeline.run("rpi4", cfg, out_dir=cached.parent / "remote-dist", cache_dir=cached.parent / "remote-cache")
        finally:
            del os.environ["EDGE_SPARSE_TARGETS"]
        if cached.exists():
            shutil.rmtree(cached)
        shutil.copytree(b.results["bundle"]["path"], cached)
    dest = tmp_path / "bundle"
    shutil.copytree(cached, dest)
    return dest
