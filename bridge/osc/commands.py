"""The OSC server's commands: preset load and save, ITO and nudges (through an injected hook) and
the transport. A mixin of :class:`bridge.osc.server.OscServer`, which creates the attributes it uses;
the hook types (:class:`ItoRequest`, :class:`ItoResult`, :data:`ItoHandler`, :class:`Transport`)
live here and are re-exported by the server module.

OSC cannot replace or shadow a factory preset: ``/refmaster/preset/save`` under a factory
preset's name (or, with no name, while a factory preset is the current one) is refused. Replies
name no file paths and list no other presets.
"""

from __future__ import annotations

import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Protocol, Tuple

import numpy as np

from bridge.osc import space as A
from bridge.osc.dispatcher import OscReplyError
from engine import params as P
from engine.errors import RefmasterError


@dataclass
class ItoRequest:
    """What the server hands to the ITO hook (``/refmaster/ito/run`` or ``/refmaster/nudge``)."""

    kind: str                         # "run" or "nudge"
    steps: Optional[int]              # requested steps (None: the hook's default)
    words: Optional[str]              # nudge words, e.g. "brighter, wider" (kind == "nudge")
    chain: P.ChainParams              # the engine's current Θ + switches
    preset: Optional[object]          # presets.Preset being played (z_ref, ITO settings, fingerprint) or None
    song: Optional[np.ndarray]        # (2, T) float32 44.1 kHz: the track being played, if any
    reference: Optional[np.ndarray]   # (2, T) float32 44.1 kHz: the reference (serve --ref), if given
    progress: Callable[[int, float], None]  # call progress(step, loss): pushed as /refmaster/ito/progress


@dataclass
class ItoResult:
    """What the ITO hook returns; the server applies ``chain`` and keeps the rest for the preset."""

    chain: P.ChainParams
    z_ref: Optional[List[float]] = None
    loss_history: List[float] = field(default_factory=list)
    settings: Dict[str, object] = field(default_factory=dict)


#: ``handler(request) -> ItoResult``; may take seconds (runs in a worker thread); raise
#: ``RefmasterError`` for a problem the user should see (sent as /refmaster/error).
ItoHandler = Callable[[ItoRequest], ItoResult]

#: The error for /refmaster/ito/run and /refmaster/nudge on a server started without a handler.
ITO_UNAVAILABLE = ("inference-time optimisation is not available: this server was started without an ITO "
                   "handler (no model to optimise with; `refmaster serve` provides one)")


class Transport(Protocol):
    """What the live engine offers the server for /refmaster/transport/*."""

    def play(self) -> None: ...
    def stop(self) -> None: ...
    def seek(self, seconds: float) -> float: ...
    def position(self) -> Tuple[bool, float]: ...


def factory_names(store) -> Dict[str, str]:
    """casefold(name) -> name of every readable factory preset of ``store`` (names and file stems)."""
    from presets import PresetError
    from presets.preset import Preset, file_stem

    out: Dict[str, str] = {}
    folder = getattr(store, "factory_dir", None)
    if folder is None or not folder.is_dir():
        return out
    for f in sorted(folder.glob("*.json")):
        out[f.stem.casefold()] = f.stem
        try:
            name = Preset.from_file(f, factory=True).name
        except PresetError:
            continue
        out[name.casefold()] = name
        out[file_stem(name).casefold()] = name
    return out


class Commands:
    """Preset, ITO and transport handlers; mixed into :class:`~bridge.osc.server.OscServer`.

    Uses the server's ``state``, ``store``, ``preset``, ``ito_handler``, ``nudge_handler``,
    ``transport``, ``song``, ``reference``, ``_preset_lock``, ``_ito_thread``, ``_reply``,
    ``reply_error``, ``reply_ok``, ``_mark_dirty``, ``_one_number`` and ``save_preset``.
    """

    def _on_preset_load(self, address, args, sender, arrival):
        from presets import PresetError

        if self.store is None:
            raise OscReplyError("no preset store attached to this server")
        if len(args) != 1 or not isinstance(args[0], str):
            raise OscReplyError("expected one string argument: the preset's name")
        with self._preset_lock:
            try:
                pr = self.store.get(args[0])
            except PresetError as e:
                if str(e).startswith("no preset called"):   # the store's message lists the others: not over OSC
                    raise OscReplyError(f"no preset called '{args[0]}'") from None
                raise
            self.preset = pr
            self.state.load(pr.chain, source=f"preset:{pr.name}")
        self._mark_dirty([A.PRESET_CURRENT])
        return A.OK, f"loaded preset '{pr.name}'"

    def _on_preset_save(self, address, args, sender, arrival):
        if self.store is None:
            raise OscReplyError("no preset store attached to this server")
        if len(args) > 1 or (args and not isinstance(args[0], str)):
            raise OscReplyError("expected no argument or one string: the preset's name")
        name = args[0] if args else None
        target = name or (self.preset.name if self.preset is not None else None)
        if target is not None:
            factory = factory_names(self.store).get(target.casefold())
            if factory is not None:
                raise OscReplyError(f"'{factory}' is a factory preset: OSC cannot replace it; "
                                    f"save under a new name (/refmaster/preset/save <name>)")
        self.save_preset(name)
        return A.OK, f"saved preset '{self.preset.name}'"

    def _start_ito(self, address, sender, request_kind: str, handler: Optional[ItoHandler],
                   steps: Optional[int], words: Optional[str]) -> None:
        if handler is None:
            raise OscReplyError(ITO_UNAVAILABLE)
        if self._ito_thread is not None and self._ito_thread.is_alive():
            raise OscReplyError("an ITO run is already in progress")

        def progress(step: int, loss: float) -> None:
            self._reply(None, A.ITO_PROGRESS, [int(step), float(loss)])

        req = ItoRequest(request_kind, steps, words, self.state.snapshot(), self.preset, self.song,
                         self.reference, progress)

        def work() -> None:
            try:
                result = handler(req)
            except RefmasterError as e:
                self.reply_error(sender, address, str(e))
                return
            except Exception as e:  # a bug in the hook: report it, keep serving
                traceback.print_exc(file=sys.stderr)
                self.reply_error(sender, address, f"ITO failed ({type(e).__name__}: {e})")
                return
            with self._preset_lock:
                self.state.load(result.chain, source="ito" if request_kind == "run" else f"nudge:{words}")
                if self.preset is not None:
                    ito = {"settings": dict(result.settings), "loss_history": list(result.loss_history)}
                    self.preset = self.preset.updated(z_ref=result.z_ref if result.z_ref is not None
                                                      else self.preset.z_ref, ito=ito)
            final = f"; loss {result.loss_history[-1]:.4g}" if result.loss_history else ""
            self.reply_ok(sender, address, f"{request_kind} done{final}")

        self._ito_thread = threading.Thread(target=work, name="ito", daemon=True)
        self._ito_thread.start()

    def _on_ito(self, address, args, sender, arrival):
        steps = None
        if len(args) > 1:
            raise OscReplyError("expected no argument or one integer: the number of steps")
        if args:
            try:
                steps = P.check_steps(args[0], "steps")
            except RefmasterError as e:
                raise OscReplyError(str(e)) from None
        self._start_ito(address, sender, "run", self.ito_handler, steps, None)

    def _on_nudge(self, address, args, sender, arrival):
        if not args or not all(isinstance(a, str) for a in args):
            raise OscReplyError("expected words (strings), e.g. \"brighter, wider\"")
        self._start_ito(address, sender, "nudge", self.nudge_handler, None, " ".join(args))

    def _need_transport(self) -> Transport:
        if self.transport is None:
            raise OscReplyError("no live engine is attached to this server")
        return self.transport

    def _on_play(self, address, args, sender, arrival):
        if args:
            raise OscReplyError("expected no arguments")
        self._need_transport().play()
        self._mark_dirty([A.TRANSPORT_STATE])

    def _on_stop(self, address, args, sender, arrival):
        if args:
            raise OscReplyError("expected no arguments")
        self._need_transport().stop()
        self._mark_dirty([A.TRANSPORT_STATE])

    def _on_seek(self, address, args, sender, arrival):
        s = self._one_number(args, "a position in seconds")
        if s < 0:
            raise OscReplyError(f"position {s:g} s is negative")
        self._need_transport().seek(s)
        self._mark_dirty([A.TRANSPORT_STATE])
