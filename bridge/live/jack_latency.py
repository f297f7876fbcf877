"""JACK port latency ranges, which JACK-Client (0.5) does not wrap: a DAW compensates an insert's
processing latency only if the insert reports it on its ports.

libjack's latency API (``jack_set_latency_callback``, ``jack_port_get/set_latency_range``,
``jack_recompute_total_latencies``; JACK 1 and 2, PipeWire's libjack) is declared here with cffi
(JACK-Client's own dependency) against the same libjack JACK-Client loaded, and reaches
JACK-Client's client and port objects through their addresses. JACK's convention for a client
that delays its input by ``L`` frames (jack/types.h, "latency callback"): in the capture pass,
each output port's range is its input port's capture range plus ``L``; in the playback pass,
each input port's range is its output port's playback range plus ``L``.
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import cffi

_CDEF = """
typedef uint32_t jack_nframes_t;
typedef struct _jack_port jack_port_t;
typedef struct _jack_client jack_client_t;
typedef enum { JackCaptureLatency, JackPlaybackLatency } jack_latency_callback_mode_t;
typedef struct { jack_nframes_t min; jack_nframes_t max; } jack_latency_range_t;
typedef void (*JackLatencyCallback)(jack_latency_callback_mode_t mode, void *arg);
int jack_set_latency_callback(jack_client_t *client, JackLatencyCallback latency_callback, void *arg);
void jack_port_get_latency_range(jack_port_t *port, jack_latency_callback_mode_t mode, jack_latency_range_t *range);
void jack_port_set_latency_range(jack_port_t *port, jack_latency_callback_mode_t mode, jack_latency_range_t *range);
int jack_recompute_total_latencies(jack_client_t *client);
"""

_ffi = cffi.FFI()
_ffi.cdef(_CDEF)
_lib = None

CAPTURE, PLAYBACK = 0, 1


def _libjack():
    global _lib
    if _lib is None:
        import ctypes.util

        import jack  # loads libjack; we open the same library

        # the very name JACK-Client opened (a soname: under pw-jack, LD_LIBRARY_PATH makes it PipeWire's)
        name = getattr(jack, "_libname", None) or ctypes.util.find_library("jack") or "libjack.so.0"
        _lib = _ffi.dlopen(name)
        del jack
    return _lib


def _ptr(obj, ctype: str):
    """The C pointer behind a JACK-Client ``Client`` or ``Port``, as this module's cffi type."""
    import jack

    return _ffi.cast(ctype, int(jack._ffi.cast("uintptr_t", obj._ptr)))


def latency_range(port, mode: int) -> Tuple[int, int]:
    """``(min, max)`` frames of ``port`` (any client's, a JACK-Client ``Port``) in ``mode``
    (:data:`CAPTURE`: since the signal entered the graph; :data:`PLAYBACK`: until it leaves it)."""
    r = _ffi.new("jack_latency_range_t *")
    _libjack().jack_port_get_latency_range(_ptr(port, "jack_port_t *"), mode, r)
    return int(r.min), int(r.max)


class LatencyReporter:
    """Reports ``latency()`` frames from each of ``inputs[i]`` to ``outputs[i]`` to JACK.

    Register before :meth:`jack.Client.activate`; call :meth:`changed` when the latency changes
    (JACK then calls back and every client downstream sees the new ranges).
    """

    def __init__(self, client, inputs: Sequence, outputs: Sequence, latency: Callable[[], int]):
        self.client, self.inputs, self.outputs, self.latency = client, list(inputs), list(outputs), latency
        self.calls: List[int] = []   # modes JACK asked for (tests, diagnostics)
        self._cb = _ffi.callback("void(jack_latency_callback_mode_t, void *)", self._on_latency)
        if _libjack().jack_set_latency_callback(_ptr(client, "jack_client_t *"), self._cb, _ffi.NULL) != 0:
            raise RuntimeError("JACK refused the latency callback")

    def _on_latency(self, mode, arg) -> None:
        lib = _libjack()
        extra = int(self.latency())
        r = _ffi.new("jack_latency_range_t *")
        pairs = zip(self.inputs, self.outputs) if mode == CAPTURE else zip(self.outputs, self.inputs)
        for src, dst in pairs:
            lib.jack_port_get_latency_range(_ptr(src, "jack_port_t *"), mode, r)
            r.min, r.max = r.min + extra, r.max + extra
            lib.jack_port_set_latency_range(_ptr(dst, "jack_port_t *"), mode, r)
        self.calls.append(int(mode))

    def changed(self) -> None:
        _libjack().jack_recompute_total_latencies(_ptr(self.client, "jack_client_t *"))
