"""The one way to get a streaming chain: :func:`make_chain` picks a backend module.

It sits outside the backends (:mod:`export.onnx_stream`, :mod:`export.torch_stream`,
:mod:`export.pedalboard_chain`), which import only the interface :mod:`export.streaming`, so
nothing imports in a circle; each backend is imported when it is asked for.
"""

from __future__ import annotations

from typing import Optional

from engine import params as P
from engine.errors import RefmasterError
from export.streaming import BACKENDS, StreamingChain


def make_chain(backend: str, params: Optional[P.ChainParams] = None, *, onnx_model=None,
               pedalboard_settings=None, threads: int = 1, sample_rate: int = P.SAMPLE_RATE) -> StreamingChain:
    """A streaming chain for ``backend`` ("torch", "onnx" or "pedalboard") at ``sample_rate``.

    ``onnx_model``: an exported `.onnx` file (or its bytes) for the ONNX backend.
    ``pedalboard_settings``: calibrated settings (:class:`export.pedalboard_chain.PedalboardSettings`
    or the path of a `--pedalboard` JSON file) for the pedalboard backend; without them the
    uncalibrated mapping of Θ is used.
    """
    if backend == "onnx":
        from export.onnx_stream import OnnxStreamingChain

        return OnnxStreamingChain(params, model=onnx_model, threads=threads, sample_rate=sample_rate)
    if backend == "torch":
        import torch

        from export.torch_stream import TorchSegmentChain

        torch.set_num_threads(max(1, threads))
        return TorchSegmentChain(params, sample_rate=sample_rate)
    if backend == "pedalboard":
        from export.pedalboard_chain import PedalboardSettings, PedalboardStreamingChain

        settings = pedalboard_settings
        if settings is not None and not isinstance(settings, PedalboardSettings):
            settings = PedalboardSettings.load(settings)
        return PedalboardStreamingChain(params, settings=settings, sample_rate=sample_rate)
    raise RefmasterError(f"unknown backend {backend!r} (one of {', '.join(BACKENDS)})")
