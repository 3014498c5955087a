"""Exporters: ONNX fp32 / int8 QDQ (`onnx`), TFLite fp32 / full-int8 (`tflite`), lint, metadata.

`es.export(model, example_input, calib=..., out=...)` (DESIGN.md's API for a model you pruned yourself)
shares its name with this sub-package: importing `edge_sparse.export.onnx` binds `edge_sparse.export`
to this module, so the module itself is callable and forwards to `edge_sparse.api.export`.
"""
import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from edge_sparse.api import export

        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
