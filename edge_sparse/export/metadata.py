"""App-facing metadata: `metadata.json` beside the model, and the same JSON embedded in the .tflite.

The embedded copy lives in the TFLite flatbuffer's `metadata` table under the name
`edge_sparse_metadata` (a buffer holding UTF-8 JSON: labels, normalisation, int8 scales and zero
points, target and accuracy), so an app that only received the .tflite can still read how to feed it:
`read(Path("model.tflite").read_bytes())`. TFLite ignores metadata entries it does not know, so the
model computes exactly what it did before (a test checks outputs are bit-identical).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

METADATA_NAME = "edge_sparse_metadata"


def embed(tflite: bytes, meta: dict) -> bytes:
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as s

    model = s.ModelT.InitFromObj(s.Model.GetRootAsModel(tflite, 0))
    payload = json.dumps(meta, sort_keys=True).encode()
    buf = s.BufferT()
    buf.data = list(payload)
    model.buffers.append(buf)
    entry = s.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (METADATA_NAME, METADATA_NAME.encode())]
    model.metadata.append(entry)
    b = flatbuffers.Builder(len(tflite) + len(payload) + 1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def read(tflite: bytes) -> Optional[dict]:
    from tensorflow.lite.python import schema_py_generated as s

    m = s.Model.GetRootAsModel(tflite, 0)
    for i in range(m.MetadataLength()):
        md = m.Metadata(i)
        if md.Name() in (METADATA_NAME, METADATA_NAME.encode()):
            return json.loads(bytes(m.Buffers(md.Buffer()).DataAsNumpy().tobytes()).decode())
    return None


# --------------------------------------------------------------------------- TFLite Support metadata

_WRITER = r"""
import json, sys
from tensorflow_lite_support.metadata.python import metadata
from tensorflow_lite_support.metadata.python.metadata_writers import image_classifier, writer_utils
src, labels, out, mean, std = sys.argv[1:6]
w = image_classifier.MetadataWriter.create_for_inference(
    writer_utils.load_file(src), json.loads(mean), json.loads(std), [labels])
writer_utils.save_file(w.populate(), out)
"""

_READER = r"""
import json, sys
from tensorflow_lite_support.metadata.python import metadata
d = metadata.MetadataDisplayer.with_model_file(sys.argv[1])
files = d.get_packed_associated_file_list()
print(json.dumps({"metadata": json.loads(d.get_metadata_json()), "files": files,
                  "labels": d.get_associated_file_buffer("labels.txt").decode() if "labels.txt" in files else None}))
"""


def support_library_dir() -> Path:
    """Where `make` installs tflite-support 0.4.4 (--no-deps, beside the venv's site-packages)."""
    import os
    import sys

    return Path(os.environ.get("EDGE_SPARSE_TFLITE_SUPPORT") or Path(sys.prefix) / "tflite-support")


def _run_support(code: str, args: list[str]) -> str:
    """tflite-support needs protobuf < 4 while onnx2tf pins 4.25.5: it runs in a subprocess on the pure-
    Python protobuf, from its own directory, and never imports its `tflite_support` package (whose task
    bindings clash with TensorFlow's)."""
    import os
    import subprocess
    import sys

    from edge_sparse.errors import EdgeSparseError

    site = support_library_dir()
    if not (site / "tensorflow_lite_support").is_dir():
        raise EdgeSparseError(
            f"TFLite Support metadata writer not found in {site}; run `make setup` or "
            f"`pip install --no-deps --target {site} tflite-support==0.4.4`"
        )
    env = {**os.environ, "PYTHONPATH": str(site), "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise EdgeSparseError(f"TFLite Support metadata step failed: {tail}")
    return r.stdout


def write_support_metadata(src: Path, out: Path, labels_file: Path, mean_px: list, std_px: list) -> None:
    """Populate `src` with TFLite Support image-classifier metadata (normalisation in pixel units, labels
    packed as an associated file) into `out`, readable by Android's support library / Task Library."""
    import json

    _run_support(_WRITER, [str(src), str(labels_file), str(out), json.dumps(list(mean_px)), json.dumps(list(std_px))])


def read_support_metadata(path: Path) -> dict:
    import json

    return json.loads(_run_support(_READER, [str(path)]).strip().splitlines()[-1])
