"""Streaming exports of the mastering chain (ONNX, pedalboard) and their renderers.

* :mod:`export.streaming`: the interface every backend offers (:class:`~export.streaming.StreamingChain`:
  ``process``, ``set_params``, ``flush``, ``reset``, ``latency``, state snapshots where a backend
  can) and the backend names; :mod:`export.factory`: ``make_chain``, the one way to get a backend;
* backends: :mod:`export.onnx_stream` (the exact ONNX chain on onnxruntime), :mod:`export.torch_stream`
  (the Torch render in segments), :mod:`export.pedalboard_chain` (pedalboard's native plugins,
  and its settings file);
* :mod:`export.onnx_chain`: the exact streaming ONNX graph, with its parameter-derived part in
  :mod:`export.onnx_coefficients` (:mod:`export.onnx_builder` writes it);
* :mod:`export.calibrate`: CMA-ES calibration of the pedalboard chain to the Torch render;
* :mod:`export.render`: disk-to-disk streaming render (``python -m export.render``; it reads with
  :mod:`engine.io.reader`, resamples with :mod:`engine.io.resample`, meters with :mod:`engine.analysis.meters`);
* :mod:`export.checks`: the measurements of docs/export.md (`refmaster export-check`, `bench render`).

export/ imports nothing of this project but engine/. Design, figures and the commands that
produced them: docs/export.md.
"""
