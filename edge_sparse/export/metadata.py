"""App-facing metadata: `metadata.json` beside the model, and the same JSON embedded in the .tflite.

The embedded copy lives in the TFLite flatbuffer's `metadata` table under the name
`edge_sparse_metadata` (a buffer holding UTF-8 JSON: labels, normalisation, int8 scales and zero
points, target and accuracy), so an app that only received the .tflite can still read how to feed it:
`read(Path("model.tflite").read_bytes())`. TFLite ignores metadata entries it does not know, so the
model computes exactly what it did before (a test checks outputs are bit-identical).
"""
from __future__ import annotations

import json
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
