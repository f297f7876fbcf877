"""A preset record: its fields, JSON form, validation, schema versions and file-name rules.

A preset is the mastering chain (Θ in real units plus the six module switches, exactly the
``engine.params.ChainParams`` JSON form, so no range is re-declared here), the reference
embedding z_ref (a list of floats, or null for hand-made presets), the ITO settings and loss
history, the model version, the reference file's name and fingerprint (:mod:`presets.fingerprint`),
created and modified times (UTC, ISO 8601) and free-form notes. Its ``name`` is for people (by
default the stem of the reference file name) and can be renamed; the file is ``<name>.json``
with characters that file systems reject replaced by ``_`` (:func:`file_stem`).

**Versions.** ``schema`` is ``"refmaster.preset/<version>"`` (now 1). Older forms migrate on
load through :data:`MIGRATIONS`; version 0 is the bare chain-parameter file
(``"refmaster.chain/1"``, what ``refmaster demo`` and ``render --params`` use), so such a file
can be imported as a preset. A file from a newer version is reported and left alone.
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from engine import params as P
from engine.errors import ParamError, RefmasterError
from engine.io.jsonfile import JsonError, read_json
from presets.fingerprint import FP_VERSION, _parse_fp, fingerprints_match, short_fingerprint

SCHEMA_NAME = "refmaster.preset"
SCHEMA_VERSION = 1
SCHEMA_TAG = f"{SCHEMA_NAME}/{SCHEMA_VERSION}"
MAX_NAME_LEN = 120
#: Longest file name (UTF-8 bytes, without ".json") a preset is stored under: file systems allow
#: 255 bytes per name, and the atomic write's temporary file adds about 20 (120 emoji are 480).
MAX_STEM_BYTES = 200
#: Characters that reorder how text is displayed (Unicode bidirectional controls).
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

PathLike = Union[str, os.PathLike]


class PresetError(RefmasterError):
    """A preset that is missing, unreadable, invalid, or an operation the store refuses."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _check_name(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise PresetError(f"preset name {str(name)[:40]!r}: must be a non-empty string")
    name = name.strip()
    if len(name) > MAX_NAME_LEN:
        raise PresetError(f"preset name {name[:40]!r}...: longer than {MAX_NAME_LEN} characters")
    if any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in name):
        raise PresetError(f"preset name {name[:40]!r}: contains control characters, line breaks or lone surrogates")
    if any(c in BIDI_CONTROLS for c in name):
        # U+202E and friends make a name display as something else (in lists, OSC replies, file names)
        raise PresetError(f"preset name {ascii(name[:40])}: contains bidirectional text controls "
                          f"(U+200E/F, U+202A-E, U+2066-9, U+061C)")
    stem_bytes = len(_stem(name).encode("utf-8"))
    if stem_bytes > MAX_STEM_BYTES:
        raise PresetError(f"preset name {name[:20]!r}...: its file name would be {stem_bytes} bytes long "
                          f"(at most {MAX_STEM_BYTES}); choose a shorter name")
    return name


def _stem(name: str) -> str:
    s = "".join("_" if (c in '/\\:*?"<>|' or ord(c) < 32) else c for c in name)
    return "_" + s[1:] if s.startswith(".") else s


def file_stem(name: str) -> str:
    """The file name (without .json) a preset called ``name`` is stored under."""
    return _stem(_check_name(name))


def _float_list(value, what: str) -> Optional[List[float]]:
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.reshape(-1).tolist()
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().reshape(-1).tolist()
    if not isinstance(value, (list, tuple)):
        raise PresetError(f"{what}: expected a list of numbers or null, got {type(value).__name__}")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(float(v)):
            raise PresetError(f"{what}[{i}]: expected a finite number, got {v!r}")
        out.append(float(v))
    return out


def _json_scalar_map(value, what: str) -> Dict[str, object]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PresetError(f"{what}: expected an object, got {type(value).__name__}")
    out = {}
    for k, v in value.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise PresetError(f"{what}.{k}: {v} is not a finite number")
        if not isinstance(v, (str, int, float, bool, type(None))):
            raise PresetError(f"{what}.{k}: expected a string, number, true/false or null")
        out[str(k)] = v
    return out


@dataclass
class Preset:
    """One preset. ``chain`` is Θ in real units plus the module switches.

    ``ito`` is ``{"settings": {name: scalar}, "loss_history": [float, ...]}``. ``path`` and
    ``factory`` say where it was loaded from; they are not stored in the file.
    """

    name: str
    chain: P.ChainParams
    fingerprint: Optional[str] = None
    reference: Optional[str] = None
    z_ref: Optional[List[float]] = None
    ito: Dict[str, object] = field(default_factory=lambda: {"settings": {}, "loss_history": []})
    model_version: Optional[str] = None
    created: Optional[str] = None
    modified: Optional[str] = None
    notes: str = ""
    path: Optional[Path] = field(default=None, compare=False)
    factory: bool = field(default=False, compare=False)

    def __post_init__(self):
        self.name = _check_name(self.name)
        if not isinstance(self.chain, P.ChainParams):
            raise PresetError(f"preset '{self.name}': chain must be engine.params.ChainParams")
        if self.fingerprint is not None and _parse_fp(self.fingerprint) is None:
            raise PresetError(f"preset '{self.name}': fingerprint {str(self.fingerprint)[:40]!r} is not a "
                              f"{FP_VERSION} fingerprint")
        self.z_ref = _float_list(self.z_ref, f"preset '{self.name}': z_ref")
        ito = self.ito or {}
        if not isinstance(ito, Mapping):
            raise PresetError(f"preset '{self.name}': ito must be an object")
        unknown = set(ito) - {"settings", "loss_history"}
        if unknown:
            raise PresetError(f"preset '{self.name}': ito has unknown fields {sorted(unknown)} "
                              f"(expected settings, loss_history)")
        self.ito = {"settings": _json_scalar_map(ito.get("settings"), f"preset '{self.name}': ito.settings"),
                    "loss_history": _float_list(ito.get("loss_history") or [], f"preset '{self.name}': ito.loss_history")}
        for attr in ("reference", "model_version", "created", "modified"):
            v = getattr(self, attr)
            if v is not None and not isinstance(v, str):
                raise PresetError(f"preset '{self.name}': {attr} must be a string or null")
        if not isinstance(self.notes, str):
            raise PresetError(f"preset '{self.name}': notes must be a string")

    @classmethod
    def new(cls, name: str, chain: P.ChainParams, **kw) -> "Preset":
        """A fresh preset (created = modified = now)."""
        t = now_iso()
        kw.setdefault("created", t)
        kw.setdefault("modified", t)
        return cls(name, chain, **kw)

    def updated(self, **changes) -> "Preset":
        """A copy with fields replaced (``chain=``, ``z_ref=``, ``ito=``, ``notes=`` ...)."""
        return replace(self, **changes)

    # -- JSON
    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_TAG,
            "name": self.name,
            "reference": {"file": self.reference, "fingerprint": self.fingerprint},
            "chain": self.chain.to_dict(),
            "z_ref": self.z_ref,
            "ito": {"settings": dict(self.ito["settings"]), "loss_history": list(self.ito["loss_history"])},
            "model_version": self.model_version,
            "created": self.created,
            "modified": self.modified,
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data, source: str = "preset", default_name: Optional[str] = None) -> "Preset":
        """Parse (and migrate) the JSON form; every problem is a :class:`PresetError` naming ``source``."""
        if not isinstance(data, Mapping):
            raise PresetError(f"{source}: not a refmaster preset (expected a JSON object)")
        version = schema_version(data, source)
        if version > SCHEMA_VERSION:
            raise PresetError(f"{source}: written by a newer refmaster (preset schema version {version}; "
                              f"this one reads up to {SCHEMA_VERSION})")
        data = dict(data)
        while version < SCHEMA_VERSION:
            data = MIGRATIONS[version](data, default_name or "unnamed")
            version += 1
        expected = {"schema", "name", "reference", "chain", "z_ref", "ito", "model_version", "created",
                    "modified", "notes"}
        unknown = set(data) - expected
        if unknown:
            raise PresetError(f"{source}: unknown fields {sorted(map(str, unknown))[:5]}")
        ref = data.get("reference") or {}
        if not isinstance(ref, Mapping) or set(ref) - {"file", "fingerprint"}:
            raise PresetError(f"{source}: 'reference' must be {{\"file\": ..., \"fingerprint\": ...}}")
        try:
            chain = P.ChainParams.from_dict(data.get("chain"))
        except ParamError as e:
            raise PresetError(f"{source}: chain parameter '{e.name}': {e.reason}") from None
        try:
            return cls(name=data.get("name"), chain=chain, fingerprint=ref.get("fingerprint"),
                       reference=ref.get("file"), z_ref=data.get("z_ref"), ito=data.get("ito"),
                       model_version=data.get("model_version"), created=data.get("created"),
                       modified=data.get("modified"), notes=data.get("notes") or "")
        except PresetError as e:
            raise PresetError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, path: PathLike, factory: bool = False) -> "Preset":
        """Read a preset file; anything wrong with it (unreadable, not JSON, too deep, huge
        numbers, wrong types, not a preset) is one :class:`PresetError` naming the file."""
        p = Path(path)
        try:
            data = read_json(p, "preset file")
        except JsonError as e:
            raise PresetError(str(e)) from None
        preset = cls.from_dict(data, str(p), default_name=p.stem)  # checks every field's type (fuzz-tested)
        preset.path = p
        preset.factory = factory
        return preset


def schema_version(data: Mapping, source: str = "preset") -> int:
    """0 for a bare chain-parameter file, N for ``refmaster.preset/N``; PresetError otherwise."""
    tag = data.get("schema")
    if tag == P.SCHEMA_TAG:
        return 0
    # at most 6 ASCII digits: int() of a 5,000-digit version would raise, not refuse
    m = re.fullmatch(re.escape(SCHEMA_NAME) + r"/([0-9]{1,6})", tag) if isinstance(tag, str) else None
    if not m:
        shown = repr(tag)[:60] + ("..." if len(repr(tag)) > 60 else "")
        raise PresetError(f"{source}: not a refmaster preset (schema {shown}; expected {SCHEMA_TAG!r})")
    return int(m.group(1))


def _migrate_0_to_1(data: dict, default_name: str) -> dict:
    """A bare chain file (``refmaster.chain/1``) becomes a hand-made preset without a reference."""
    chain = {k: data[k] for k in ("schema", "params", "switches") if k in data}
    extra = set(data) - {"schema", "params", "switches"}
    if extra:
        raise PresetError(f"chain file has unknown fields {sorted(extra)}")
    return {"schema": f"{SCHEMA_NAME}/1", "name": default_name, "reference": {"file": None, "fingerprint": None},
            "chain": chain, "z_ref": None, "ito": {"settings": {}, "loss_history": []}, "model_version": None,
            "created": None, "modified": None, "notes": "imported from a chain parameter file"}


#: version -> function migrating a dict of that version to the next one.
MIGRATIONS: Dict[int, Callable[[dict, str], dict]] = {0: _migrate_0_to_1}


def _valid_name(name) -> bool:
    try:
        _check_name(name)
        return True
    except PresetError:
        return False


def diff_presets(a: Preset, b: Preset) -> List[Tuple[str, str, str, str]]:
    """Rows ``(what, value in a, value in b, difference)`` for everything that differs."""
    rows: List[Tuple[str, str, str, str]] = []
    for spec in P.PARAMS:
        va, vb = a.chain.values[spec.key], b.chain.values[spec.key]
        if abs(va - vb) > 1e-6 * (spec.max - spec.min):
            unit = f" {spec.unit}" if spec.unit else ""
            rows.append((spec.key, f"{va:.4g}{unit}", f"{vb:.4g}{unit}", f"{vb - va:+.4g}{unit}"))
    for m in P.MODULES:
        if a.chain.switches[m] != b.chain.switches[m]:
            rows.append((f"switch.{m}", "on" if a.chain.switches[m] else "off",
                         "on" if b.chain.switches[m] else "off", ""))
    for attr in ("reference", "model_version", "notes"):
        if getattr(a, attr) != getattr(b, attr):
            rows.append((attr, str(getattr(a, attr)), str(getattr(b, attr)), ""))
    if (a.fingerprint or b.fingerprint) and not fingerprints_match(a.fingerprint, b.fingerprint):
        rows.append(("fingerprint", short_fingerprint(a.fingerprint), short_fingerprint(b.fingerprint),
                     "different references"))
    if (a.z_ref is None) != (b.z_ref is None) or (a.z_ref is not None and a.z_ref != b.z_ref):
        def zdesc(z):
            return "none" if z is None else f"{len(z)} values"
        dist = ""
        if a.z_ref is not None and b.z_ref is not None and len(a.z_ref) == len(b.z_ref):
            dist = f"L2 distance {float(np.linalg.norm(np.subtract(a.z_ref, b.z_ref))):.4g}"
        rows.append(("z_ref", zdesc(a.z_ref), zdesc(b.z_ref), dist))
    return rows
