"""The OSC address space, generated from :mod:`engine.params` (no second list of names or ranges).

=====================================  ===========================  =====================================
address                                arguments                    what
=====================================  ===========================  =====================================
/refmaster/param/<module>/<name>       float (real unit)            set a parameter (clamped, with warning)
/refmaster/norm/<module>/<name>        float 0…1                    set a parameter in normalised form
/refmaster/on/<module>                 int/float 0|1 or T/F         switch a module on or off
/refmaster/bypass                      int/float 0|1 or T/F         A/B: 1 the input, loudness-matched
/refmaster/amount                      float 0…1                    how much of the preset (0 neutral)
/refmaster/preset/load                 string name                  load a preset into the engine
/refmaster/preset/save                 [string name]                save the engine's state as a preset
/refmaster/ito/run                     [int steps]                  inference-time optimisation (hook)
/refmaster/nudge                       string words                 "brighter, wider" via ITO (hook)
/refmaster/transport/play|stop         —                            start / pause playback
/refmaster/transport/seek              float seconds                jump in the song
/refmaster/dump                        [string host, int port]      every value, to the sender (or host:port)
/refmaster/subscribe                   string host, int port,       push every change to host:port, after
                                       [string form]                a full dump; form: both|param|norm|<dialect>
/refmaster/unsubscribe                 string host, int port        stop pushing
/refmaster/auth                        string secret                when the server has a shared secret
=====================================  ===========================  =====================================

Address patterns reach the settings (param, norm, on, bypass, amount and dialect addresses), never
the commands. Bypass and amount are live controls (:data:`bridge.osc.state.CONTROLS`): smoothed by
the engine, pushed and dumped like the parameters, never part of a saved preset.
Replies — at most one per message (to the sender, a copy to the subscribers on its host):
``/refmaster/error <address> <reason>``,
``/refmaster/warning <address> <reason>``, ``/refmaster/ok <address> <detail>``; a dump ends
with ``/refmaster/dump/done <number of values>``; feedback uses the same addresses as the
settings (``/refmaster/param/...``, ``/refmaster/norm/...``, ``/refmaster/on/...``) plus
``/refmaster/bypass``, ``/refmaster/amount``, ``/refmaster/preset/current <name>`` and
``/refmaster/transport/state <playing 0|1> <seconds>``.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from bridge.osc.state import CONTROLS
from engine import params as P

PREFIX = "/refmaster"
ERROR = f"{PREFIX}/error"
WARNING = f"{PREFIX}/warning"
OK = f"{PREFIX}/ok"
DUMP_DONE = f"{PREFIX}/dump/done"
PRESET_CURRENT = f"{PREFIX}/preset/current"
TRANSPORT_STATE = f"{PREFIX}/transport/state"
ITO_PROGRESS = f"{PREFIX}/ito/progress"

PRESET_LOAD = f"{PREFIX}/preset/load"
PRESET_SAVE = f"{PREFIX}/preset/save"
ITO_RUN = f"{PREFIX}/ito/run"
NUDGE = f"{PREFIX}/nudge"
PLAY = f"{PREFIX}/transport/play"
STOP = f"{PREFIX}/transport/stop"
SEEK = f"{PREFIX}/transport/seek"
DUMP = f"{PREFIX}/dump"
SUBSCRIBE = f"{PREFIX}/subscribe"
UNSUBSCRIBE = f"{PREFIX}/unsubscribe"
AUTH = f"{PREFIX}/auth"


def param_address(spec: P.ParamSpec) -> str:
    return f"{PREFIX}/param/{spec.module}/{spec.name}"


def norm_address(spec: P.ParamSpec) -> str:
    return f"{PREFIX}/norm/{spec.module}/{spec.name}"


def switch_address(module: str) -> str:
    return f"{PREFIX}/on/{module}"


def control_address(name: str) -> str:
    return f"{PREFIX}/{name}"


#: address -> ParamSpec (real-unit form), address -> ParamSpec (normalised form), address -> module
PARAM_ADDRESSES: Dict[str, P.ParamSpec] = {param_address(s): s for s in P.PARAMS}
NORM_ADDRESSES: Dict[str, P.ParamSpec] = {norm_address(s): s for s in P.PARAMS}
SWITCH_ADDRESSES: Dict[str, str] = {switch_address(m): m for m in P.MODULES}
#: address -> live control name (bypass, amount)
CONTROL_ADDRESSES: Dict[str, str] = {control_address(c): c for c in CONTROLS}

#: The command addresses with their argument signature and meaning.
COMMANDS: Tuple[Tuple[str, str, str], ...] = (
    (PRESET_LOAD, "s name", "load a preset into the engine (pushed to subscribers)"),
    (PRESET_SAVE, "[s name]", "save the engine's state as a preset (default: the current preset's name)"),
    (ITO_RUN, "[i steps]", "run inference-time optimisation from the current state"),
    (NUDGE, "s words", "nudge the master (\"brighter, wider\") with ITO"),
    (PLAY, "", "start playback"),
    (STOP, "", "pause playback"),
    (SEEK, "f seconds", "jump to a position in the song"),
    (DUMP, "[s host, i port]", "send every value to the sender (or to host:port)"),
    (SUBSCRIBE, "s host, i port, [s form]", "push every change to host:port (after a full dump); "
                                            "form: both (default), param, norm or a loaded dialect's name"),
    (UNSUBSCRIBE, "s host, i port", "stop pushing changes to host:port (only host:port itself or who subscribed it)"),
    (AUTH, "s secret", "with serve's shared secret: authorises the rest of its bundle and its sender's address"),
)


def address_rows() -> List[Tuple[str, str, str]]:
    """(address, arguments, meaning) for every address the server answers, in schema order."""
    rows: List[Tuple[str, str, str]] = []
    for s in P.PARAMS:
        unit = f" {s.unit}" if s.unit else ""
        rows.append((param_address(s), "f", f"{s.description}: {s.min:g}…{s.max:g}{unit} ({s.scale})"))
    for s in P.PARAMS:
        rows.append((norm_address(s), "f", f"{s.key} as 0…1 ({s.scale} over {s.min:g}…{s.max:g})"))
    for m in P.MODULES:
        rows.append((switch_address(m), "i|f|T|F", f"{P.MODULE_TITLES[m]} on (1) / off (0)"))
    for c, (lo, hi, default, meaning) in CONTROLS.items():
        rows.append((control_address(c), "i|f|T|F" if c == "bypass" else "f",
                     f"{meaning} ({lo:g}…{hi:g}, default {default:g}; live, smoothed, not saved in presets)"))
    rows.extend(COMMANDS)
    return rows
