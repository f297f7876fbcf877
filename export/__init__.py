"""Streaming exports of the mastering chain (ONNX, pedalboard) and their renderers.

* :mod:`export.streaming`: the common surface every backend offers (``make_chain``,
  ``process``, ``set_params``, ``flush``, ``reset``, ``latency``) and the ONNX and Torch backends;
* :mod:`export.onnx_chain`: the exact streaming ONNX graph (:mod:`export.onnx_builder` writes it);
* :mod:`export.pedalboard_chain`: the chain on pedalboard's native plugins, and its settings file;
* :mod:`export.calibrate`: CMA-ES calibration of the pedalboard chain to the Torch render;
* :mod:`export.render`, :mod:`export.resample`: disk-to-disk streaming render;
* :mod:`export.checks`: the measurements of docs/export.md (`refmaster export-check`, `bench render`).

Design, figures and the commands that produced them: docs/export.md.
"""
