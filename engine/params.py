"""The 46 parameters Θ of the mastering chain: the single source of truth.

Everything that names, ranges, displays, normalises or stores a chain parameter reads this
module: the Torch chain, the models (which predict the normalised form), the exporters, the
OSC address space, the presets and the docs. Never copy a range elsewhere.

Order is fixed (SPEC.md, "The mastering chain"): EQ (18), distortion (2), multiband
compressor/expander (21), make-up gain (1), stereo imager (1), limiter (3).

Ranges are those of the ITO-Master white-box converter, widened where the training
manipulation f draws outside them, so that every manipulation can be reproduced by the
converter (SPEC.md asks for this and for the choice to be recorded):
* multiband attack: converter 5–100 ms, f draws 1–20 ms        -> widened to 1–100 ms
* multiband release: converter 5–100 ms, f draws 20–500 ms     -> widened to 5–500 ms
* limiter attack: converter 5–100 ms, f draws 0.1–5 ms         -> widened to 0.1–100 ms
* limiter release: converter 5–100 ms, f draws 20–1000 ms      -> widened to 5–1000 ms

All other manipulation ranges lie inside the converter ranges and are unchanged.

Scales: frequencies, times, Q and compressor ratio are mapped logarithmically between the
normalised (0…1) and the real-unit form (equal steps are equal ratios, which is how these
are heard); everything else linearly.

Besides Θ, each of the six modules has an on/off switch; :class:`ChainParams` carries both.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Tuple

import numpy as np

from engine.errors import ParamError, RefmasterError

if TYPE_CHECKING:  # for the annotations; the functions import torch where they make a tensor (start-up without it)
    import torch

#: The rate the models run at (Hz): features, Φ, Ψ, ITO and the matches (audio is resampled to it
#: on the way in: engine.io.audio). The chain runs natively at any whole rate in CHAIN_RATES
#: (filters designed, time constants converted for it; engine/rates.py): render, master, the insert.
SAMPLE_RATE = 44100
CHAIN_RATES = (22050, 192000)

#: ITO step counts, defined once for every caller (CLI, OSC, serve, evaluation): the default on
#: z_ref (SPEC.md: up to 100 steps), the default of the paper's baseline on Θ, and the most
#: anyone may ask for.
ITO_STEPS = 100
THETA_STEPS = 2000
MAX_ITO_STEPS = 5000


def check_steps(steps, what: str = "ITO steps", allow_zero: bool = False) -> int:
    """``steps`` as an int in 1…MAX_ITO_STEPS (0… with ``allow_zero``), or one clear error."""
    low = 0 if allow_zero else 1
    if isinstance(steps, bool) or not isinstance(steps, (int, float)) or not float(steps).is_integer() \
            or not low <= steps <= MAX_ITO_STEPS:
        raise RefmasterError(f"{what} must be a whole number {low}…{MAX_ITO_STEPS}, got {steps!r}")
    return int(steps)


MODULES: Tuple[str, ...] = ("eq", "distortion", "multiband", "gain", "imager", "limiter")

MODULE_TITLES: Dict[str, str] = {
    "eq": "6-band parametric EQ",
    "distortion": "Parallel tanh saturation",
    "multiband": "3-band compressor/expander",
    "gain": "Make-up gain",
    "imager": "Stereo imager (mid/side)",
    "limiter": "Limiter",
}

#: JSON schema tag written with every parameter set.
SCHEMA_TAG = "refmaster.chain/1"


@dataclass(frozen=True)
class ParamSpec:
    """One chain parameter: what it is, its unit, range, neutral default and scale."""

    module: str
    name: str
    unit: str
    min: float
    max: float
    default: float
    scale: str  # "linear" or "log"
    description: str

    @property
    def key(self) -> str:
        """``module.name``, the parameter's unique key (also used in JSON and OSC)."""
        return f"{self.module}.{self.name}"

    def to_normalized(self, value: float) -> float:
        """Real unit -> 0…1 (not clamped)."""
        if self.scale == "log":
            return math.log(value / self.min) / math.log(self.max / self.min)
        return (value - self.min) / (self.max - self.min)

    def from_normalized(self, norm: float) -> float:
        """0…1 -> real unit (not clamped)."""
        if self.scale == "log":
            return self.min * (self.max / self.min) ** norm
        return self.min + norm * (self.max - self.min)

    def check(self, value) -> float:
        """Return ``value`` as a float, or raise :class:`ParamError` naming this parameter."""
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise ParamError(self.key, f"expected a number, got {type(value).__name__} {repr(value)[:40]}")
        value = float(value)
        if not math.isfinite(value):
            raise ParamError(self.key, f"value is {value} (must be a finite number)")
        tol = 1e-6 * (self.max - self.min)
        if value < self.min - tol or value > self.max + tol:
            raise ParamError(
                self.key, f"{value:g} {self.unit} is outside {self.min:g}…{self.max:g} {self.unit}".replace("  ", " ")
            )
        return min(max(value, self.min), self.max)

    def to_dict(self, index: Optional[int] = None) -> dict:
        """The JSON form (`refmaster params --json`, the OSC address space, the docs)."""
        d = {"key": self.key, "module": self.module, "name": self.name, "unit": self.unit, "min": self.min,
             "max": self.max, "default": self.default, "scale": self.scale, "description": self.description}
        return d if index is None else {"index": index, **d}

    def clamp(self, value: float) -> float:
        return min(max(float(value), self.min), self.max)

    def at_limit(self, value: float) -> Optional[str]:
        """``"min"`` or ``"max"`` when ``value`` is at that end of the range (within
        :data:`LIMIT_TOLERANCE` of it, normalised) and that end is not the neutral default
        (a compressor at ratio 1 is off, not pinned); otherwise None."""
        n = self.to_normalized(float(value))
        for end, at in (("min", n <= LIMIT_TOLERANCE), ("max", n >= 1.0 - LIMIT_TOLERANCE)):
            if at and abs(self.to_normalized(self.default) - (0.0 if end == "min" else 1.0)) > LIMIT_TOLERANCE:
                return end
        return None


#: The EQ's sections in chain order: ``(parameter prefix, filter kind)``, with each band's
#: label and centre/corner frequency range and default (Hz). Every table of bands reads these.
EQ_BANDS: Tuple[Tuple[str, str], ...] = (("low_shelf", "low_shelf"), ("band0", "peaking"), ("band1", "peaking"),
                                         ("band2", "peaking"), ("band3", "peaking"), ("high_shelf", "high_shelf"))
_EQ_BAND_RANGES = {"low_shelf": ("Low shelf", 20.0, 2000.0, 100.0), "band0": ("Band 0", 80.0, 2000.0, 300.0),
                   "band1": ("Band 1", 2000.0, 8000.0, 3000.0), "band2": ("Band 2", 8000.0, 12000.0, 10000.0),
                   "band3": ("Band 3", 12000.0, 21050.0, 15000.0), "high_shelf": ("High shelf", 4000.0, 21050.0, 10000.0)}
#: The multiband compressor's bands, low to high.
MB_BANDS: Tuple[str, ...] = ("low", "mid", "high")


def _eq_band(prefix: str, kind: str) -> List[ParamSpec]:
    label, fmin, fmax, fdef = _EQ_BAND_RANGES[prefix]
    kind = kind.replace("_", " ")
    return [
        ParamSpec("eq", f"{prefix}_gain", "dB", -20.0, 20.0, 0.0, "linear", f"{label} gain ({kind})"),
        ParamSpec("eq", f"{prefix}_freq", "Hz", fmin, fmax, fdef, "log", f"{label} {'corner' if 'shelf' in kind else 'centre'} frequency"),
        ParamSpec("eq", f"{prefix}_q", "", 0.1, 5.0, 0.707, "log", f"{label} Q (bandwidth; higher is narrower)"),
    ]


def _mb_band(band: str) -> List[ParamSpec]:
    title = band.capitalize()
    return [
        ParamSpec("multiband", f"{band}_comp_threshold", "dB", -60.0, 0.0, 0.0, "linear", f"{title} band compressor threshold (RMS level)"),
        ParamSpec("multiband", f"{band}_comp_ratio", ":1", 1.0, 20.0, 1.0, "log", f"{title} band compressor ratio (1 = no compression)"),
        ParamSpec("multiband", f"{band}_exp_threshold", "dB", -60.0, 0.0, -60.0, "linear", f"{title} band expander threshold (RMS level)"),
        ParamSpec("multiband", f"{band}_exp_ratio", ":1", 0.0, 1.0, 1.0, "linear", f"{title} band expander ratio (1 = no expansion, 0 = gate)"),
        ParamSpec("multiband", f"{band}_attack", "ms", 1.0, 100.0, 10.0, "log", f"{title} band attack time (widened from 5 ms: f draws 1–20 ms)"),
        ParamSpec("multiband", f"{band}_release", "ms", 5.0, 500.0, 100.0, "log", f"{title} band release time (widened from 100 ms: f draws 20–500 ms)"),
    ]


PARAMS: Tuple[ParamSpec, ...] = tuple(
    [spec for band, kind in EQ_BANDS for spec in _eq_band(band, kind)]
    + [
        ParamSpec("distortion", "drive", "dB", 0.0, 8.0, 0.0, "linear", "Drive into the tanh soft clipper"),
        ParamSpec("distortion", "mix", "", 0.2, 0.7, 0.2, "linear", "Wet share of the parallel saturation"),
        ParamSpec("multiband", "low_crossover", "Hz", 20.0, 300.0, 150.0, "log", "Low/mid crossover (Linkwitz-Riley, 4th order)"),
        ParamSpec("multiband", "high_crossover", "Hz", 2000.0, 12000.0, 4000.0, "log", "Mid/high crossover (Linkwitz-Riley, 4th order)"),
        ParamSpec("multiband", "mix", "", 0.2, 0.7, 0.2, "linear", "Wet share of the parallel multiband dynamics"),
    ]
    + [spec for band in MB_BANDS for spec in _mb_band(band)]
    + [
        ParamSpec("gain", "gain", "dB", -24.0, 24.0, 0.0, "linear", "Make-up gain"),
        ParamSpec("imager", "width", "", 0.0, 1.0, 0.5, "linear", "Stereo width: 0 mono, 0.5 unchanged, 1 side only"),
        ParamSpec("limiter", "threshold", "dB", -60.0, 0.0, 0.0, "linear", "Limiter threshold (peak level)"),
        ParamSpec("limiter", "attack", "ms", 0.1, 100.0, 1.0, "log", "Limiter attack (widened from 5 ms: f draws 0.1–5 ms)"),
        ParamSpec("limiter", "release", "ms", 5.0, 1000.0, 100.0, "log", "Limiter release (widened from 100 ms: f draws 20–1000 ms)"),
    ]
)

NUM_PARAMS = len(PARAMS)
assert NUM_PARAMS == 46, NUM_PARAMS

#: The highest frequency any parameter reaches (Hz): engine.rates.design_freq_limit at SAMPLE_RATE.
TOP_FREQ_HZ = max(p.max for p in PARAMS if p.unit == "Hz")

PARAM_KEYS: Tuple[str, ...] = tuple(p.key for p in PARAMS)
PARAM_INDEX: Dict[str, int] = {p.key: i for i, p in enumerate(PARAMS)}


def spec(key: str) -> ParamSpec:
    """The :class:`ParamSpec` for ``module.name``; :class:`ParamError` if unknown."""
    try:
        return PARAMS[PARAM_INDEX[key]]
    except KeyError:
        raise ParamError(key, "unknown parameter (see `refmaster params`)") from None


def module_params(module: str) -> List[ParamSpec]:
    if module not in MODULES:
        raise ParamError(module, f"unknown module (one of {', '.join(MODULES)})")
    return [p for p in PARAMS if p.module == module]


def module_slice(module: str) -> slice:
    """Index range of ``module``'s parameters in the 46-vector."""
    idx = [i for i, p in enumerate(PARAMS) if p.module == module]
    return slice(idx[0], idx[-1] + 1)


# ---------------------------------------------------------------------------- tensors

_BOUNDS_CACHE: Dict[Tuple[torch.dtype, torch.device], Tuple[torch.Tensor, ...]] = {}


def _bounds(dtype: torch.dtype, device: torch.device):
    import torch  # only here and below: commands that need no tensor start without torch

    key = (dtype, device)
    if key not in _BOUNDS_CACHE:
        lo = torch.tensor([p.min for p in PARAMS], dtype=torch.float64)
        hi = torch.tensor([p.max for p in PARAMS], dtype=torch.float64)
        is_log = torch.tensor([p.scale == "log" for p in PARAMS])
        # Log-scaled parameters are handled in log space: log_lo + n * (log_hi - log_lo).
        lo_t = torch.where(is_log, lo.log(), lo)
        span = torch.where(is_log, hi.log() - lo.log(), hi - lo)
        _BOUNDS_CACHE[key] = tuple(t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device) for t in (lo_t, span, is_log, lo, hi))
    return _BOUNDS_CACHE[key]


def normalize_tensor(values: torch.Tensor) -> torch.Tensor:
    """Real units (..., 46) -> normalised 0…1 (..., 46). Differentiable."""
    import torch

    lo_t, span, is_log, _, _ = _bounds(values.dtype, values.device)
    v = torch.where(is_log, values.clamp_min(1e-30).log(), values)
    return (v - lo_t) / span


def denormalize_tensor(norm: torch.Tensor) -> torch.Tensor:
    """Normalised 0…1 (..., 46) -> real units (..., 46). Differentiable."""
    import torch

    lo_t, span, is_log, _, _ = _bounds(norm.dtype, norm.device)
    v = lo_t + norm * span
    return torch.where(is_log, v.exp(), v)


def clamp_tensor(values: torch.Tensor) -> torch.Tensor:
    """Real units (..., 46) clamped into every parameter's range (differentiable inside it)."""
    import torch

    _, _, _, lo, hi = _bounds(values.dtype, values.device)
    return torch.minimum(torch.maximum(values, lo), hi)


def default_tensor(dtype=None, device="cpu") -> torch.Tensor:
    """The defaults as a (46,) tensor (float32 unless ``dtype`` is given)."""
    import torch

    return torch.tensor([p.default for p in PARAMS], dtype=dtype or torch.float32, device=device)


def check_tensor(values: torch.Tensor) -> None:
    """Raise :class:`ParamError` naming the first non-finite or out-of-range parameter."""
    if values.shape[-1] != NUM_PARAMS:
        raise ParamError("params", f"expected {NUM_PARAMS} values in the last dimension, got {values.shape[-1]}")
    import torch

    v = values.detach().to("cpu", torch.float64).reshape(-1, NUM_PARAMS)
    bad = ~torch.isfinite(v)
    if bad.any():
        i = int(bad.any(0).nonzero()[0])
        raise ParamError(PARAMS[i].key, "value is not a finite number")
    _, _, _, lo, hi = _bounds(torch.float64, torch.device("cpu"))
    tol = 1e-6 * (hi - lo)
    out = (v < lo - tol) | (v > hi + tol)
    if out.any():
        i = int(out.any(0).nonzero()[0])
        p = PARAMS[i]
        row = int(out[:, i].nonzero()[0])
        raise ParamError(p.key, f"{float(v[row, i]):g} {p.unit} is outside {p.min:g}…{p.max:g} {p.unit}")


# ---------------------------------------------------------------------------- dicts

#: A value this close to an end of its range (normalised 0…1 units) counts as pinned there.
LIMIT_TOLERANCE = 0.005


def pinned(values: Mapping[str, float]) -> Dict[str, str]:
    """The parameters of ``values`` sitting at a range limit: ``{key: "min" | "max"}``
    (:meth:`ParamSpec.at_limit`)."""
    out = {}
    for key, value in values.items():
        end = spec(key).at_limit(value)
        if end:
            out[key] = end
    return out


def defaults() -> Dict[str, float]:
    return {p.key: p.default for p in PARAMS}


def normalize_dict(values: Mapping[str, float]) -> Dict[str, float]:
    return {k: spec(k).to_normalized(float(v)) for k, v in values.items()}


def denormalize_dict(norm: Mapping[str, float]) -> Dict[str, float]:
    return {k: spec(k).from_normalized(float(v)) for k, v in norm.items()}


def validate(values: Mapping[str, object], require_all: bool = True) -> Dict[str, float]:
    """Check a flat ``{"module.name": value}`` mapping; return clean floats in schema order.

    Raises :class:`ParamError` naming the offending parameter for an unknown name, a value
    that is not a finite number, a value out of range, or (with ``require_all``) a missing one.
    """
    for k in values:
        spec(k)  # unknown names first: they are the most likely typo
    out: Dict[str, float] = {}
    for p in PARAMS:
        if p.key in values:
            out[p.key] = p.check(values[p.key])
        elif require_all:
            raise ParamError(p.key, "missing")
    return out


# ---------------------------------------------------------------------------- Θ + switches

@dataclass
class ChainParams:
    """Θ in real units plus the six module switches: what the chain renders.

    ``values`` maps every ``module.name`` key to a float; ``switches`` maps every module
    to ``True`` (on) or ``False`` (bypassed).
    """

    values: Dict[str, float]
    switches: Dict[str, bool]

    @classmethod
    def default(cls) -> "ChainParams":
        return cls(defaults(), {m: True for m in MODULES})

    def __post_init__(self):
        self.values = validate(self.values)
        for m in self.switches:
            if m not in MODULES:
                raise ParamError(f"switch.{m}", f"unknown module (one of {', '.join(MODULES)})")
        sw = {}
        for m in MODULES:
            v = self.switches.get(m, True)
            if not isinstance(v, (bool, np.bool_)):
                raise ParamError(f"switch.{m}", f"expected true or false, got {v!r}")
            sw[m] = bool(v)
        self.switches = sw

    # -- conversions
    def to_tensors(self, dtype=None, device="cpu") -> Tuple[torch.Tensor, torch.Tensor]:
        """(params (46,), switches (6,)) tensors in schema order (float32 unless ``dtype`` is given)."""
        import torch

        p = torch.tensor([self.values[k] for k in PARAM_KEYS], dtype=dtype or torch.float32, device=device)
        s = torch.tensor([self.switches[m] for m in MODULES], dtype=torch.bool, device=device)
        return p, s

    @classmethod
    def from_tensors(cls, params: torch.Tensor, switches: Optional[torch.Tensor] = None) -> "ChainParams":
        import torch

        v = params.detach().to("cpu", torch.float64).reshape(-1)
        values = {k: PARAMS[i].clamp(float(v[i])) for i, k in enumerate(PARAM_KEYS)}
        if switches is None:
            sw = {m: True for m in MODULES}
        else:
            s = switches.detach().to("cpu").reshape(-1)
            sw = {m: bool(s[i] > 0.5) for i, m in enumerate(MODULES)}
        return cls(values, sw)

    def normalized(self) -> Dict[str, float]:
        return normalize_dict(self.values)

    def with_values(self, **changes: float) -> "ChainParams":
        """A copy with some values replaced; keys may use ``module__name`` or ``module.name``."""
        vals = dict(self.values)
        for k, v in changes.items():
            vals[k.replace("__", ".", 1) if "." not in k else k] = v
        return ChainParams(vals, dict(self.switches))

    # -- JSON
    def to_dict(self) -> dict:
        nested: Dict[str, Dict[str, float]] = {m: {} for m in MODULES}
        for p in PARAMS:
            nested[p.module][p.name] = round(self.values[p.key], 6)
        return {"schema": SCHEMA_TAG, "params": nested, "switches": dict(self.switches)}

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping) -> "ChainParams":
        """Parse the JSON form; every problem is a :class:`ParamError` naming the field."""
        if not isinstance(data, Mapping):
            raise ParamError("params", "expected a JSON object")
        if data.get("schema") != SCHEMA_TAG:
            tag = data.get("schema")
            shown = "missing" if tag is None else f"is {repr(tag)[:40]}"
            raise ParamError("schema", f"{shown}; a parameter set says \"schema\": \"{SCHEMA_TAG}\"")
        if "params" not in data:
            raise ParamError("params", "missing (expected {\"params\": {module: {name: value}}, \"switches\": {...}})")
        nested = data["params"]
        if not isinstance(nested, Mapping):
            raise ParamError("params", "expected an object of modules")
        flat: Dict[str, object] = {}
        for module, group in nested.items():
            if module not in MODULES:
                raise ParamError(str(module), f"unknown module (one of {', '.join(MODULES)})")
            if not isinstance(group, Mapping):
                raise ParamError(module, "expected an object of parameter values")
            for name, value in group.items():
                flat[f"{module}.{name}"] = value
        switches = data.get("switches", {})
        if not isinstance(switches, Mapping):
            raise ParamError("switches", "expected an object of module: true/false")
        return cls(dict(flat), dict(switches))

    @classmethod
    def load(cls, path) -> "ChainParams":
        """Θ + switches from a JSON file (a params file or anything with a top-level "params");
        every problem is one :class:`RefmasterError` naming the file."""

        from engine.io.jsonfile import read_json

        p = Path(path)
        data = read_json(p, "parameter file")  # too deep, huge numbers, NaN: one JsonError naming the file
        try:
            return cls.from_dict(data)
        except ParamError as e:
            raise ParamError(e.name, f"{e.reason} (in {p})") from None

    @classmethod
    def from_json(cls, text: str) -> "ChainParams":
        from engine.io.jsonfile import JsonError, parse_json

        try:
            data = parse_json(text, "parameters")
        except JsonError as e:
            raise ParamError("params", str(e)) from None
        return cls.from_dict(data)


def params_table(values: Optional[Mapping[str, float]] = None, switches: Optional[Mapping[str, bool]] = None,
                 show_range: bool = True) -> str:
    """A plain-text table of the 46 parameters (the `refmaster params` view)."""
    rows = []
    header = ["#", "parameter", "value" if values is not None else "default", "unit"]
    if show_range:
        header += ["range", "scale"]
    for i, p in enumerate(PARAMS):
        v = values[p.key] if values is not None else p.default
        row = [str(i + 1), p.key, _fmt(v), p.unit]
        if show_range:
            row += [f"{_fmt(p.min)} … {_fmt(p.max)}", p.scale]
        rows.append(row)
    widths = [max(len(r[c]) for r in rows + [header]) for c in range(len(header))]
    lines = []
    current = None
    for r, p in zip(rows, PARAMS):
        if p.module != current:
            current = p.module
            state = ""
            if switches is not None:
                state = "  [on]" if switches.get(p.module, True) else "  [off]"
            lines.append(f"{MODULE_TITLES[p.module]} ({p.module}){state}")
        lines.append("  " + "  ".join(c.rjust(w) if j in (0, 2) else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))))
    head = "  " + "  ".join(h.rjust(w) if j in (0, 2) else h.ljust(w) for j, (h, w) in enumerate(zip(header, widths)))
    return "\n".join([head] + lines)


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"
