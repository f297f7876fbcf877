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

The record and its file format are in :mod:`presets.preset`, the key in :mod:`presets.fingerprint`.

**Where.** ``PresetStore()`` uses, in order: the ``directory`` argument (the CLI's
``--presets DIR``), the ``REFMASTER_PRESETS`` environment variable, then the user data folder
(``$XDG_DATA_HOME/refmaster/presets``, by default ``~/.local/share/refmaster/presets``;
``~/Library/Application Support/refmaster/presets`` on macOS, ``%APPDATA%\\refmaster\\presets``
on Windows). Factory presets ship read-only in ``presets/factory/``; a user preset of the same
name shadows a factory one, and saving a factory preset writes a user copy.

:meth:`PresetStore.find_by_fingerprint` finds a reference's preset whether its fingerprint is
identical or only matches (a re-encoding). The store keeps one preset per reference: saving a
second, differently named preset whose fingerprint matches an existing one is refused (rename
or overwrite that one instead).

**Safety.** Every write goes through ``engine.io.atomic.atomic_write_text`` (a temporary file
in the same folder, flushed to disk and renamed over the target with ``os.replace``), under a
folder-wide lock (``filelock``), so a reader sees the old file or the new one and a killed
writer leaves the previous version intact. Temporary files a killed writer left behind are
removed at the next write. A file that cannot be read, is not valid JSON, is not a preset or
was written by a newer schema is reported by name (``scan()`` returns it as a problem) and
never stops the others from loading.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from filelock import FileLock, Timeout

from engine.io.atomic import atomic_write_text, check_output, folder_unwritable
from presets.fingerprint import fingerprint_bit_error, fingerprints_match, short_fingerprint
from presets.preset import PathLike, Preset, PresetError, _check_name, _valid_name, file_stem, now_iso

ENV_VAR = "REFMASTER_PRESETS"
FACTORY_DIR = Path(__file__).resolve().parent / "factory"
#: Seconds a writer waits for another process's lock on the folder.
LOCK_TIMEOUT_S = 30.0


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
    def check_writable(self) -> None:
        """Refuse now, with one line, a presets folder that a later save could not write to
        (read-only, not creatable): `master` calls it before its work, not after."""
        reason = folder_unwritable(self.directory)
        if reason:
            raise PresetError(f"{self.directory}: presets cannot be saved there ({reason})")

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
        check_output(out, (pr.path,), "export")
        atomic_write_text(out, pr.to_json())
        return out
