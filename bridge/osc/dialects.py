"""DAW dialects: map refmaster's parameters onto a DAW's own OSC addresses and value scaling.

A dialect is a JSON file (``refmaster.dialect/1``)::

    {"schema": "refmaster.dialect/1",
     "name": "reaper",
     "description": "...",
     "variables": {"track": 1, "fx": 1},
     "params":   {"*": {"address": "/track/{track}/fx/{fx}/fxparam/{index}/value", "scale": "norm"},
                  "gain.gain": {"address": "/my/gain", "scale": "real"},
                  "imager.width": null},
     "switches": {"*": {"address": "/track/{track}/fx/{fx}/fxparam/{index}/value", "scale": "bool"}}}

``"*"`` applies to every parameter (or switch) of :mod:`engine.params`, so a map never lists
the 46 names again; an entry for a key (``module.name``, or a module for switches) overrides it
and ``null`` leaves that one out. An optional ``"controls"`` section maps the live controls
(``bypass``, ``amount``: :data:`bridge.osc.state.CONTROLS`) the same way. Address templates may use
``{module}``, ``{name}``, ``{key}``, ``{index}`` (1-based: parameters 1–46 in schema order, switches
47–52, controls 53–54) and the file's ``variables`` (overridable, e.g. ``--var track=2``).

Scales for parameters: ``real`` (the value in its unit), ``norm`` (0…1 as refmaster normalises
it: log for Hz, ms, Q and ratio, else linear), ``linear`` (0…1 linear between min and max).
For switches and the bypass: ``int`` (1/0) or ``bool`` (1.0/0.0 floats, as DAWs send toggles).
The amount is 0…1 in every parameter scale.

Ready maps ship in ``bridge/dialect_maps/``: ``generic`` (refmaster's own addresses) and
``reaper`` (``/track/N/fx/M/fxparam/P/value``, normalised). The OSC server accepts a dialect's
addresses as input and pushes changes in it to subscribers that ask for it by name.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

from bridge.osc.state import CONTROLS
from engine import params as P
from engine.errors import RefmasterError

DIALECT_DIR = Path(__file__).resolve().parent / "dialect_maps"
SCHEMA_TAG = "refmaster.dialect/1"
PARAM_SCALES = ("real", "norm", "linear")
SWITCH_SCALES = ("int", "bool")
_FIELDS = {"module", "name", "key", "index"}


class DialectError(RefmasterError):
    """A dialect file that cannot be used."""


@dataclass(frozen=True)
class Entry:
    address: str
    scale: str


def builtin_dialects() -> List[str]:
    return sorted(p.stem for p in DIALECT_DIR.glob("*.json"))


class Dialect:
    """A loaded, validated dialect (see the module docstring)."""

    def __init__(self, name: str, description: str, params: Dict[str, Entry], switches: Dict[str, Entry],
                 source: str = "", controls: Optional[Dict[str, Entry]] = None):
        self.name = name
        self.description = description
        self.params = params
        self.switches = switches
        self.controls = dict(controls or {})
        self.source = source
        self._incoming: Dict[str, Tuple[str, str, str]] = {}
        for key, e in params.items():
            self._add_incoming(e.address, ("param", key, e.scale))
        for m, e in switches.items():
            self._add_incoming(e.address, ("switch", m, e.scale))
        for c, e in self.controls.items():
            self._add_incoming(e.address, ("control", c, e.scale))

    def _add_incoming(self, address: str, target: Tuple[str, str, str]) -> None:
        if address in self._incoming:
            other = self._incoming[address][1]
            raise DialectError(f"{self.source}: address {address} is used for both {other} and {target[1]}")
        self._incoming[address] = target

    # -- loading
    @classmethod
    def load(cls, name_or_path: Union[str, Path], variables: Optional[Mapping[str, object]] = None) -> "Dialect":
        """A built-in dialect by name (``reaper``, ``generic``) or a mapping file by path."""
        p = Path(name_or_path)
        if not p.suffix and not p.exists():
            p = DIALECT_DIR / f"{name_or_path}.json"
            if not p.exists():
                raise DialectError(f"unknown dialect '{name_or_path}' (built in: {', '.join(builtin_dialects())}; "
                                   f"or give a mapping file)")
        from engine.io.jsonfile import JsonError, read_json

        try:
            data = read_json(p, "dialect file")  # depth, huge numbers: one line, as any damage
        except JsonError as e:
            raise DialectError(str(e)) from None
        return cls.from_dict(data, str(p), variables)

    @classmethod
    def from_dict(cls, data, source: str = "dialect", variables: Optional[Mapping[str, object]] = None) -> "Dialect":
        if not isinstance(data, Mapping):
            raise DialectError(f"{source}: expected a JSON object")
        if data.get("schema") != SCHEMA_TAG:
            raise DialectError(f"{source}: not a dialect file (schema {data.get('schema')!r}; expected {SCHEMA_TAG!r})")
        unknown = set(data) - {"schema", "name", "description", "variables", "params", "switches", "controls"}
        if unknown:
            raise DialectError(f"{source}: unknown fields {sorted(unknown)}")
        name = data.get("name")
        if not isinstance(name, str) or not name or not name.replace("-", "").replace("_", "").isalnum():
            raise DialectError(f"{source}: 'name' must be a word (letters, digits, - and _)")
        if name in ("both", "param", "norm"):
            raise DialectError(f"{source}: name {name!r} is reserved")
        if not isinstance(data.get("variables") or {}, Mapping):
            raise DialectError(f"{source}: 'variables' must be an object")
        var = dict(data.get("variables") or {})
        for k, v in (variables or {}).items():
            if k not in var:
                raise DialectError(f"{source}: no variable {k!r} (has: {', '.join(var) or 'none'})")
            var[k] = v
        clash = set(var) & _FIELDS
        if clash:
            raise DialectError(f"{source}: variables may not be called {sorted(clash)}")

        def table(section: str, keys: List[str], scales: Tuple[str, ...], index0: int) -> Dict[str, Entry]:
            raw = data.get(section)
            if raw is None:
                return {}
            if not isinstance(raw, Mapping):
                raise DialectError(f"{source}: '{section}' must be an object")
            for k in raw:
                if k != "*" and k not in keys:
                    kind = {"params": "parameter", "controls": "control"}.get(section, "module")
                    raise DialectError(f"{source}: {section} entry {k!r} is not a refmaster {kind}")
            out: Dict[str, Entry] = {}
            for i, key in enumerate(keys):
                spec = raw[key] if key in raw else raw.get("*")
                if spec is None:
                    continue
                if not isinstance(spec, Mapping) or set(spec) - {"address", "scale"} or "address" not in spec:
                    raise DialectError(f"{source}: {section} entry for {key!r} must be "
                                       f"{{\"address\": ..., \"scale\": ...}} or null")
                default = scales[0] if section != "controls" else ("int" if key == "bypass" else "real")
                scale = spec.get("scale", default)
                if scale not in scales:
                    raise DialectError(f"{source}: {section} {key!r}: scale {scale!r} is not one of {', '.join(scales)}")
                module, _, pname = key.partition(".")
                fields = dict(var, module=module, name=pname or module, key=key, index=index0 + i)
                out[key] = Entry(_expand(spec["address"], fields, f"{source}: {section} {key!r}"), scale)
            return out

        params = table("params", list(P.PARAM_KEYS), PARAM_SCALES, 1)
        switches = table("switches", list(P.MODULES), SWITCH_SCALES, P.NUM_PARAMS + 1)
        controls = table("controls", list(CONTROLS), SWITCH_SCALES + PARAM_SCALES, P.NUM_PARAMS + len(P.MODULES) + 1)
        for c, e in controls.items():
            allowed = SWITCH_SCALES if c == "bypass" else PARAM_SCALES   # a toggle, or 0…1
            if e.scale not in allowed:
                raise DialectError(f"{source}: controls {c!r}: scale {e.scale!r} is not one of {', '.join(allowed)}")
        desc = str(data.get("description") or "")
        try:
            desc = desc.format(**var)
        except (KeyError, IndexError, ValueError):
            pass  # a description is free text; braces in it need not be template fields
        return cls(name, desc, params, switches, source, controls)

    # -- mapping
    def incoming(self) -> Dict[str, Tuple[str, str, str]]:
        """address -> ("param", key, scale) or ("switch", module, scale)."""
        return dict(self._incoming)

    @staticmethod
    def from_real(spec: P.ParamSpec, real: float, scale: str) -> float:
        if scale == "real":
            return real
        if scale == "norm":
            return spec.to_normalized(real)
        return (real - spec.min) / (spec.max - spec.min)

    @staticmethod
    def to_real(spec: P.ParamSpec, raw: float, scale: str) -> Tuple[float, bool]:
        """(real value clamped to the range, whether it had to be clamped)."""
        if scale == "real":
            real = raw
        else:
            n = min(max(raw, 0.0), 1.0)
            if n != raw:
                return (spec.from_normalized(n) if scale == "norm" else spec.min + n * (spec.max - spec.min)), True
            real = spec.from_normalized(n) if scale == "norm" else spec.min + n * (spec.max - spec.min)
        c = spec.clamp(real)
        return c, c != real

    def outgoing_param(self, spec: P.ParamSpec, real: float) -> List[Tuple[str, float]]:
        e = self.params.get(spec.key)
        return [] if e is None else [(e.address, float(self.from_real(spec, real, e.scale)))]

    def outgoing_switch(self, module: str, on: bool) -> List[Tuple[str, object]]:
        e = self.switches.get(module)
        if e is None:
            return []
        return [(e.address, (1.0 if on else 0.0) if e.scale == "bool" else int(on))]

    def outgoing_control(self, name: str, value: float) -> List[Tuple[str, object]]:
        e = self.controls.get(name)
        if e is None:
            return []
        return [(e.address, int(value) if e.scale == "int" else float(value))]

    def rows(self) -> List[Tuple[str, str, str]]:
        """(refmaster key, DAW address, scale) for display."""
        return [(k, e.address, e.scale) for k, e in self.params.items()] + \
               [(f"switch.{m}", e.address, e.scale) for m, e in self.switches.items()] + \
               [(f"control.{c}", e.address, e.scale) for c, e in self.controls.items()]


def _expand(template, fields: Mapping[str, object], where: str) -> str:
    if not isinstance(template, str):
        raise DialectError(f"{where}: address must be a string")
    names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    missing = [n for n in names if n not in fields]
    if missing:
        raise DialectError(f"{where}: unknown template field(s) {', '.join('{' + m + '}' for m in missing)} "
                           f"(known: {', '.join(sorted(fields))})")
    try:
        address = template.format(**fields)
    except (ValueError, IndexError) as e:
        raise DialectError(f"{where}: bad address template {template!r} ({e})") from None
    if not address.startswith("/") or any(c in address for c in " #*?[]{},\x00"):
        raise DialectError(f"{where}: {address!r} is not a valid OSC address")
    return address


def parse_vars(items) -> Dict[str, object]:
    """``["track=2", "fx=1"]`` -> ``{"track": 2, "fx": 1}`` (numbers become ints)."""
    out: Dict[str, object] = {}
    for it in items or []:
        k, sep, v = it.partition("=")
        if not sep or not k:
            raise DialectError(f"--var {it!r}: expected NAME=VALUE")
        out[k] = int(v) if v.lstrip("-").isdigit() else v
    return out


# ------------------------------------------------------------------------------ controller layout

def open_stage_control_layout(host: str = "127.0.0.1", port: int = 9000, form: str = "param") -> dict:
    """An Open Stage Control (1.x) session: an A/B tab (bypass toggle, amount fader), then one tab per
    module, a fader per parameter (range, unit and log scale from the schema) and an on/off toggle per
    module, sending to host:port.

    ``form``: ``param`` faders send real units to /refmaster/param/...; ``norm`` faders send 0…1
    to /refmaster/norm/... (the value shown is then normalised).
    """
    from bridge.osc import space as A

    if form not in ("param", "norm"):
        raise DialectError(f"layout form {form!r}: expected param or norm")
    target = f"{host}:{port}"

    def widget(kind: str, wid: str, **props) -> dict:
        base = {"type": kind, "id": wid, "lock": False, "visible": True, "interaction": True,
                "comments": "", "width": "auto", "height": "auto", "expand": "true",
                "label": "auto", "target": target, "preArgs": "", "typeTags": "",
                "ignoreDefaults": False, "bypass": False, "onCreate": "", "onValue": ""}
        base.update(props)
        return base

    tabs = []
    for m in P.MODULES:
        faders = []
        for s in P.module_params(m):
            unit = s.unit
            if form == "param":
                faders.append(widget("fader", f"{m}_{s.name}", label=f"{s.name} ({unit})" if unit else s.name,
                                     address=A.param_address(s), range={"min": s.min, "max": s.max},
                                     logScale=s.scale == "log", unit=unit, default=s.default,
                                     value=s.default, decimals=3 if s.max - s.min < 10 else 1,
                                     typeTags="f", doubleTap=True, design="default", pips=True,
                                     comments=s.description))
            else:
                faders.append(widget("fader", f"{m}_{s.name}", label=s.name, address=A.norm_address(s),
                                     range={"min": 0, "max": 1}, logScale=False, unit="",
                                     default=s.to_normalized(s.default), value=s.to_normalized(s.default),
                                     decimals=3, typeTags="f", doubleTap=True, design="default",
                                     comments=f"{s.description} ({s.min:g}…{s.max:g} {unit}, {s.scale})"))
        toggle = widget("button", f"{m}_on", label="on", address=A.switch_address(m), mode="toggle",
                        on=1, off=0, value=1, default=1, typeTags="i", expand="false", height=60)
        panel = widget("panel", f"{m}_faders", layout="horizontal", widgets=faders, tabs=[],
                       scroll=True, contain=True, innerPadding=True, label=False)
        tabs.append(widget("tab", f"tab_{m}", label=P.MODULE_TITLES[m], layout="vertical",
                           widgets=[toggle, panel], tabs=[], address="auto", target=""))
    # the live controls: A/B (loudness-matched bypass) and the amount, first, where a producer looks
    amount = widget("fader", "amount", label="amount", address=A.control_address("amount"), range={"min": 0, "max": 1},
                    logScale=False, unit="", default=1, value=1, decimals=2, typeTags="f", doubleTap=True,
                    design="default", comments=CONTROLS["amount"][3])
    bypass = widget("button", "bypass", label="bypass (A/B)", address=A.control_address("bypass"), mode="toggle",
                    on=1, off=0, value=0, default=0, typeTags="i", expand="false", height=60,
                    comments=CONTROLS["bypass"][3])
    tabs.insert(0, widget("tab", "tab_monitor", label="A/B", layout="vertical", tabs=[], address="auto", target="",
                          widgets=[bypass, widget("panel", "monitor_faders", layout="horizontal", widgets=[amount],
                                                  tabs=[], scroll=True, contain=True, innerPadding=True, label=False)]))
    root = widget("root", "root", layout="default", widgets=[], tabs=tabs, address="auto", target="",
                  label=False)
    return {"createdWith": "refmaster", "version": "1.26.2", "type": "session", "content": root}
