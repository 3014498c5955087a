"""The `edge-sparse` console command: runs the CLI in a child process and names what killed it.

A crash in native code (torch/oneDNN, TensorFlow, a TFLite or ONNX runtime) ends a process by a signal, which a
Python `try` cannot catch: the shell would print a bare "Segmentation fault". Here the parent waits for the child;
when a signal ends it, the parent prints one line naming the signal and the stage the child had reached (the
pipeline writes it to EDGE_SPARSE_STAGE_FILE), and exits 3. Finished stages are cached, so re-running resumes.
Under torchrun (WORLD_SIZE set) the CLI runs in place: torchrun supervises its workers itself.
Imports nothing heavy: the parent stays a few MB.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

STAGE_FILE_ENV = "EDGE_SPARSE_STAGE_FILE"


_stage = ""  # the stage this process is in (for cli.main's line on an unexpected exception)


def current_stage() -> str:
    return _stage


def note_stage(stage: str) -> None:
    """Record the stage this process is entering, for cli.main and for the supervising parent."""
    global _stage
    _stage = stage
    path = os.environ.get(STAGE_FILE_ENV)
    if path:
        try:
            Path(path).write_text(stage)
        except OSError:
            pass


def death_line(rc: int, stage: str, command: str) -> str:
    """One line for a child that a signal ended (rc < 0, as subprocess reports it)."""
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        name = f"signal {-rc}"
    where = f"in the {stage!r} stage" if stage else f"in `edge-sparse {command}`"
    return (f"error: the process died by {name} {where}: a crash inside native code (torch/oneDNN, TensorFlow or a "
            f"model runtime), not a Python error; finished stages are cached, so re-running resumes after them")


def entry() -> int:
    argv = sys.argv[1:]
    if os.environ.get("WORLD_SIZE") or os.environ.get(STAGE_FILE_ENV) or not argv or argv[0].startswith("-"):
        from edge_sparse.cli import main
        return main(argv)
    fd, stage_file = tempfile.mkstemp(prefix="edge_sparse_stage_")
    os.close(fd)
    env = {**os.environ, STAGE_FILE_ENV: stage_file}
    child = subprocess.Popen([sys.executable, "-m", "edge_sparse.cli", *argv], env=env)
    forward = lambda sig, _frame: child.send_signal(sig)  # noqa: E731
    old_term = signal.signal(signal.SIGTERM, forward)
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child from the terminal itself
    try:
        rc = child.wait()
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
        stage = Path(stage_file).read_text().strip() if Path(stage_file).is_file() else ""
        Path(stage_file).unlink(missing_ok=True)
    if rc >= 0:
        return rc
    if -rc in (signal.SIGINT, signal.SIGTERM):
        print(f"error: interrupted ({signal.Signals(-rc).name}); finished stages are cached, re-run to resume",
              file=sys.stderr)
        return 130
    print(death_line(rc, stage, argv[0]), file=sys.stderr)
    return 3


if __name__ == "__main__":
    raise SystemExit(entry())
