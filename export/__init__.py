"""Streaming exports of the mastering chain (ONNX, pedalboard) and their renderers."""
