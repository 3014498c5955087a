"""Exporters: torch -> ONNX fp32 -> ONNX int8 (QDQ); ONNX -> TFLite fp32 / full-integer int8; lint; metadata."""
