"""The preset store: one JSON file per reference track, keyed by a fingerprint of its audio.

API (what ``refmaster master``, ``serve`` and ``render --preset`` call)::

    from presets import Preset, PresetStore, fingerprint, PresetError

    fp = fingerprint(audio)                  # audio: (2, T) float32 at 44.1 kHz (decoded)
    store = PresetStore()                    # or PresetStore(dir); default: default_presets_dir()
    old = store.find_by_fingerprint(fp)      # Preset or None (user presets first, then factory)
    preset = old.updated(chain=theta, z_ref=z, ito={...}) if old else \
        Preset.new("my reference", theta, fingerprint=fp, reference="my reference.wav",
                   z_ref=z, ito={"settings": {"steps": 100, "lr": 1e-3}, "loss_history": [...]},
                   model_version="white-box/1")
    store.save(preset)                       # atomic, under a file lock; returns the path
    store.get("my reference").chain          # engine.params.ChainParams (Θ in real units + switches)
    presets, problems = store.scan()         # every readable preset, and (path, reason) for the rest

A preset is the mastering chain (Θ in real units plus the six module switches, exactly the
``engine.params.ChainParams`` JSON form, so no range is re-declared here), the reference
embedding z_ref (a list of floats, or null for hand-made presets), the ITO settings and loss
history, the model version, the reference file's name and fingerprint, created and modified
times (UTC, ISO 8601) and free-form notes. Its ``name`` is for people (by default the stem of
the reference file name) and can be renamed; the file is ``<name>.json`` with characters that
file systems reject replaced by ``_``.

**Where.** ``PresetStore()`` uses, in order: the ``directory`` argument (the CLI's
``--presets DIR``), the ``REFMASTER_PRESETS`` environment variable, then the user data folder
(``$XDG_DATA_HOME/refmaster/presets``, by default ``~/.local/share/refmaster/presets``;
``~/Library/Application Support/refmaster/presets`` on macOS, ``%APPDATA%\\refmaster\\presets``
on Windows). Factory presets ship read-only in ``presets/factory/``; a user preset of the same
name shadows a factory one, and saving a factory preset writes a user copy.

**Key.** The fingerprint is computed from the *decoded* audio (44.1 kHz stereo float32, as
``engine.io.audio.load_audio`` returns it), so the same music in wav and flac has the same key.
It is a Haitsma–Kalker style bit pattern: the signs of the time differences of the
differences of log energies in 33 bands (100 Hz–8 kHz) over 128 equal segments of the song,
4064 bits, plus the duration. Identical decodes give identical strings; re-encodings that change
the samples slightly (16-bit vs 24-bit, a good lossy encode) flip a few bits, so
:func:`fingerprints_match` compares with a bit-error-rate threshold and
:meth:`PresetStore.find_by_fingerprint` finds the preset either way. The store keeps one preset
per reference: saving a second, differently named preset whose fingerprint matches an existing
one is refused (rename or overwrite that one instead).

**Safety.** Every write goes to a temporary file in the same folder, is flushed to disk and
renamed over the target (``os.replace``), under a folder-wide lock (``filelock``), so a reader
sees the old file or the new one and a killed writer leaves the previous version intact.
Temporary files a killed writer left behind are removed at the next write. A file that cannot
be read, is not valid JSON, is not a preset or was written by a newer schema is reported by
name (``scan()`` returns it as a problem) and never stops the others from loading.

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
import sys
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
from filelock import FileLock, Timeout

from engine import params as P
from engine.io.atomic import atomic_write_text
from engine.io.audio import SAMPLE_RATE, check_audio_array
from engine.errors import AudioError, ParamError, RefmasterError

SCHEMA_NAME = "refmaster.preset"
SCHEMA_VERSION = 1
SCHEMA_TAG = f"{SCHEMA_NAME}/{SCHEMA_VERSION}"
ENV_VAR = "REFMASTER_PRESETS"
FACTORY_DIR = Path(__file__).resolve().parent / "factory"
#: Seconds a writer waits for another process's lock on the folder.
LOCK_TIMEOUT_S = 30.0
MAX_NAME_LEN = 120

PathLike = Union[str, os.PathLike]


class PresetError(RefmasterError):
    """A preset that is missing, unreadable, invalid, or an operation the store refuses."""


# ------------------------------------------------------------------------------ fingerprint

FP_VERSION = "rmfp1"
FP_SEGMENTS = 128
FP_BANDS = 33
FP_FMIN, FP_FMAX = 100.0, 8000.0
#: Largest share of differing bits for two fingerprints to count as the same music.
FP_MAX_BIT_ERROR = 0.15


def fingerprint(audio: np.ndarray) -> str:
    """Fingerprint of decoded audio ``(2, T)`` float32 at 44.1 kHz (see the module docstring).

    Returns ``"rmfp1:<duration ms>:<1016 hex digits>"``. Memory stays bounded for long songs
    (the spectrum is accumulated chunk by chunk).
    """
    a = check_audio_array(audio, "reference audio")
    x = a.mean(axis=0, dtype=np.float64)
    T = x.shape[0]
    n_fft = 2048
    while n_fft > 64 and T // n_fft < FP_SEGMENTS:
        n_fft //= 2
    n_frames = T // n_fft
    if n_frames < FP_SEGMENTS:
        raise AudioError(f"reference audio: {T / SAMPLE_RATE:.2f} s is too short to fingerprint "
                         f"(needs at least {FP_SEGMENTS * 64 / SAMPLE_RATE:.2f} s)")
    freqs = np.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE)
    edges = np.geomspace(FP_FMIN, FP_FMAX, FP_BANDS + 1)
    band_of_bin = np.searchsorted(edges, freqs, side="right") - 1
    in_range = (band_of_bin >= 0) & (band_of_bin < FP_BANDS)
    bands = np.zeros((freqs.shape[0], FP_BANDS))
    bands[np.nonzero(in_range)[0], band_of_bin[in_range]] = 1.0
    window = np.hanning(n_fft)
    seg_of_frame = (np.arange(n_frames) * FP_SEGMENTS) // n_frames
    energy = np.zeros((FP_SEGMENTS, FP_BANDS))
    chunk = 1024
    for start in range(0, n_frames, chunk):
        stop = min(start + chunk, n_frames)
        frames = x[start * n_fft: stop * n_fft].reshape(stop - start, n_fft) * window
        power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
        np.add.at(energy, seg_of_frame[start:stop], power @ bands)
    counts = np.bincount(seg_of_frame, minlength=FP_SEGMENTS)[:, None]
    level = 10.0 * np.log10(energy / counts / n_fft + 1e-12)
    dfreq = level[:, :-1] - level[:, 1:]
    bits = (dfreq[1:] - dfreq[:-1]) > 0.0
    return f"{FP_VERSION}:{round(T * 1000 / SAMPLE_RATE)}:{np.packbits(bits).tobytes().hex()}"


def _parse_fp(fp: str) -> Optional[Tuple[int, np.ndarray]]:
    parts = fp.split(":") if isinstance(fp, str) else []
    if len(parts) != 3 or parts[0] != FP_VERSION or not parts[1].isdigit():
        return None
    try:
        raw = bytes.fromhex(parts[2])
    except ValueError:
        return None
    return int(parts[1]), np.unpackbits(np.frombuffer(raw, dtype=np.uint8))


def fingerprint_bit_error(a: str, b: str) -> float:
    """Share of differing bits between two fingerprints (1.0 when they cannot be compared)."""
    pa, pb = _parse_fp(a), _parse_fp(b)
    if pa is None or pb is None or pa[1].shape != pb[1].shape:
        return 1.0
    return float(np.count_nonzero(pa[1] != pb[1])) / pa[1].size


def fingerprints_match(a: Optional[str], b: Optional[str]) -> bool:
    """True when two fingerprints are of the same music (same duration within 1 %, few bits differ)."""
    if not a or not b:
        return False
    if a == b:
        return True
    pa, pb = _parse_fp(a), _parse_fp(b)
    if pa is None or pb is None:
        return False
    if abs(pa[0] - pb[0]) > max(100, 0.01 * max(pa[0], pb[0])):
        return False
    return fingerprint_bit_error(a, b) <= FP_MAX_BIT_ERROR


def short_fingerprint(fp: Optional[str]) -> str:
    """A short form for tables: ``<duration s>s/<first 8 hex digits>``."""
    p = fp.split(":") if fp else []
    if len(p) != 3:
        return "-"
    return f"{int(p[1]) / 1000:.1f}s/{p[2][:8]}"


def fingerprint_file(path: PathLike) -> str:
    """Decode an audio file (any supported format) and fingerprint it."""
    from engine.io.audio import load_audio

    return fingerprint(load_audio(path).audio)


# ------------------------------------------------------------------------------ the preset

def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _check_name(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise PresetError(f"preset name {name!r}: must be a non-empty string")
    name = name.strip()
    if len(name) > MAX_NAME_LEN:
        raise PresetError(f"preset name {name[:40]!r}...: longer than {MAX_NAME_LEN} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise PresetError(f"preset name {name!r}: contains control characters")
    return name


def file_stem(name: str) -> str:
    """The file name (without .json) a preset called ``name`` is stored under."""
    s = "".join("_" if (c in '/\\:*?"<>|' or ord(c) < 32) else c for c in _check_name(name))
    if s.startswith("."):
        s = "_" + s[1:]
    return s


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
            raise PresetError(f"{source}: unknown fields {sorted(unknown)}")
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
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PresetError(f"{p}: no such preset file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise PresetError(f"{p}: cannot read ({e})") from None
        if not text.strip():
            raise PresetError(f"{p}: file is empty")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PresetError(f"{p}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                              f"the file is damaged or truncated") from None
        preset = cls.from_dict(data, str(p), default_name=p.stem)
        preset.path = p
        preset.factory = factory
        return preset


def schema_version(data: Mapping, source: str = "preset") -> int:
    """0 for a bare chain-parameter file, N for ``refmaster.preset/N``; PresetError otherwise."""
    tag = data.get("schema")
    if tag == P.SCHEMA_TAG:
        return 0
    m = re.fullmatch(re.escape(SCHEMA_NAME) + r"/(\d+)", tag) if isinstance(tag, str) else None
    if not m:
        raise PresetError(f"{source}: not a refmaster preset (schema {tag!r}; expected {SCHEMA_TAG!r})")
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


# ------------------------------------------------------------------------------ the store

def default_presets_dir() -> Path:
    """``$REFMASTER_PRESETS``, else the platform's user data folder + ``refmaster/presets``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    elif os.name == "nt":
        base = Path(os.environ.get("APPDATA") or (Path.home() / "AppData" / "Roaming"))
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or (Path.home() / ".local" / "share"))
    return base / "refmaster" / "presets"


@dataclass
class LoadProblem:
    """A file in the presets folder that could not be used, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return self.reason if self.reason.startswith(str(self.path)) else f"{self.path}: {self.reason}"


class PresetStore:
    """The presets folder (plus the read-only factory presets)."""

    def __init__(self, directory: Optional[PathLike] = None, factory_dir: Optional[PathLike] = FACTORY_DIR):
        self.directory = Path(directory).expanduser() if directory is not None else default_presets_dir()
        self.factory_dir = Path(factory_dir) if factory_dir is not None else None
        if self.directory.exists() and not self.directory.is_dir():
            raise PresetError(f"{self.directory}: presets folder is a file, not a folder")

    def __repr__(self) -> str:
        return f"PresetStore({str(self.directory)!r})"

    # -- reading
    def _files(self, folder: Optional[Path]) -> List[Path]:
        if folder is None or not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.suffix == ".json" and not p.name.startswith("."))

    def scan(self) -> Tuple[List[Preset], List[LoadProblem]]:
        """All usable presets (user presets shadow factory ones of the same name) and the problems."""
        presets: Dict[str, Preset] = {}
        problems: List[LoadProblem] = []
        for factory, folder in ((True, self.factory_dir), (False, self.directory)):
            for f in self._files(folder):
                try:
                    pr = Preset.from_file(f, factory=factory)
                except PresetError as e:
                    problems.append(LoadProblem(f, str(e)))
                    continue
                if not factory and pr.name in presets and not presets[pr.name].factory:
                    problems.append(LoadProblem(f, f"{f}: holds preset '{pr.name}', which "
                                                f"{presets[pr.name].path} also holds; ignored"))
                    continue
                presets[pr.name] = pr
        return sorted(presets.values(), key=lambda p: p.name.casefold()), problems

    def list(self) -> List[Preset]:
        return self.scan()[0]

    def problems(self) -> List[LoadProblem]:
        return self.scan()[1]

    def get(self, name: str) -> Preset:
        """The preset called ``name`` (exact, else the one case-insensitive match); PresetError if none."""
        presets, problems = self.scan()
        for p in presets:
            if p.name == name:
                return p
        folded = [p for p in presets if p.name.casefold() == str(name).casefold()]
        if len(folded) == 1:
            return folded[0]
        stem = file_stem(name) if _valid_name(name) else None
        for prob in problems:
            if prob.path.stem == stem:
                raise PresetError(f"preset '{name}' cannot be used: {prob}")
        known = ", ".join(p.name for p in presets[:8]) + (" ..." if len(presets) > 8 else "")
        raise PresetError(f"no preset called '{name}' in {self.directory}" +
                          (f" (there are: {known})" if presets else " (the folder holds no presets)"))

    def exists(self, name: str) -> bool:
        return any(p.name == name for p in self.list())

    def find_by_fingerprint(self, fp: str) -> Optional[Preset]:
        """The preset for the reference with fingerprint ``fp``: exact key first, then the closest match."""
        presets = self.list()
        for p in presets:
            if p.fingerprint == fp and not p.factory:
                return p
        best, best_err = None, 2.0
        for p in presets:
            if p.fingerprint and fingerprints_match(p.fingerprint, fp):
                err = fingerprint_bit_error(p.fingerprint, fp)
                if err < best_err or (err == best_err and best is not None and best.factory and not p.factory):
                    best, best_err = p, err
        return best

    # -- writing
    def _lock(self) -> FileLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.directory / ".lock"), timeout=LOCK_TIMEOUT_S)

    def _locked(self):
        lock = self._lock()
        try:
            lock.acquire()
        except Timeout:
            raise PresetError(f"{self.directory}: presets folder is locked by another process "
                              f"for more than {LOCK_TIMEOUT_S:g} s") from None
        return lock

    def _remove_stale_temp_files(self) -> None:
        # Called with the lock held: no other writer is mid-write, so any temp file is an orphan.
        for f in self.directory.glob(".*.tmp"):
            try:
                f.unlink()
            except FileNotFoundError:
                continue


    def _check_conflicts(self, preset: Preset, path: Path, replacing: Optional[str] = None) -> None:
        if path.exists():
            try:
                on_disk = Preset.from_file(path)
            except PresetError:
                on_disk = None  # a damaged file under this name: the save replaces it
            if on_disk is not None and on_disk.name != preset.name and on_disk.name != replacing:
                raise PresetError(f"preset '{preset.name}' would be stored in {path}, which holds preset "
                                  f"'{on_disk.name}'; choose another name")
        if preset.fingerprint:
            for other in self.list():
                if other.factory or other.name in (preset.name, replacing):
                    continue
                if fingerprints_match(other.fingerprint, preset.fingerprint):
                    raise PresetError(f"preset '{other.name}' already holds this reference "
                                      f"({short_fingerprint(other.fingerprint)}); save over it or rename it "
                                      f"instead of making a second preset '{preset.name}'")

    def save(self, preset: Preset, touch: bool = True) -> Path:
        """Write ``preset`` to ``<name>.json`` atomically under the folder lock; return the path.

        Sets ``modified`` to now (unless ``touch`` is false) and ``created`` if it was unset;
        the preset object is updated in place with those times and its new ``path``.
        """
        path = self.directory / f"{file_stem(preset.name)}.json"
        lock = self._locked()
        try:
            self._remove_stale_temp_files()
            self._check_conflicts(preset, path)
            now = now_iso()
            if preset.created is None:
                preset.created = now
            if touch or preset.modified is None:
                preset.modified = now
            atomic_write_text(path, preset.to_json())
        finally:
            lock.release()
        preset.path = path
        preset.factory = False
        return path

    def rename(self, old: str, new: str) -> Path:
        """Rename a user preset (file and name). The new file is written before the old one goes."""
        new = _check_name(new)
        lock = self._locked()
        try:
            self._remove_stale_temp_files()
            pr = self.get(old)
            if pr.factory:
                raise PresetError(f"preset '{pr.name}' is a factory preset (read-only); "
                                  f"save a copy under a new name instead")
            if new == pr.name:
                return pr.path
            if any(p.name == new and not p.factory for p in self.list()):
                raise PresetError(f"a preset called '{new}' already exists")
            renamed = pr.updated(name=new)
            path = self.directory / f"{file_stem(new)}.json"
            if path != pr.path:
                self._check_conflicts(renamed, path, replacing=pr.name)
            renamed.modified = now_iso()
            atomic_write_text(path, renamed.to_json())
            if pr.path is not None and pr.path != path and pr.path.exists():
                pr.path.unlink()
        finally:
            lock.release()
        return path

    def delete(self, name: str) -> Path:
        lock = self._locked()
        try:
            pr = self.get(name)
            if pr.factory:
                raise PresetError(f"preset '{pr.name}' is a factory preset (read-only) and cannot be deleted")
            pr.path.unlink()
        finally:
            lock.release()
        return pr.path

    def import_file(self, path: PathLike, name: Optional[str] = None, overwrite: bool = False) -> Preset:
        """Copy a preset file (or a bare chain-parameter file, migrated) into the store."""
        pr = Preset.from_file(path)
        if name:
            pr = pr.updated(name=_check_name(name))
        if not overwrite and any(p.name == pr.name and not p.factory for p in self.list()):
            raise PresetError(f"a preset called '{pr.name}' already exists (choose --name or --force)")
        self.save(pr, touch=False)
        return pr

    def export(self, name: str, path: PathLike) -> Path:
        """Write the preset called ``name`` to ``path`` (current schema), atomically."""
        pr = self.get(name)
        out = Path(path)
        if out.is_dir():
            out = out / f"{file_stem(pr.name)}.json"
        if not out.parent.is_dir():
            raise PresetError(f"{out}: folder {out.parent} does not exist")
        atomic_write_text(out, pr.to_json())
        return out


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
