"""The real training corpus: Debian's free game-music packages, split by song.

``build_corpus(out)`` fetches exactly the packages of :data:`PACKAGES` (``apt-get download``: no
root, no install), unpacks each with ``dpkg-deb -x``, keeps its audio files and its copyright
file, measures every file (duration, sample rate, channels, integrated loudness) and writes a
manifest with a deterministic song-level split into train / validation / test.

Why song-level and by hash: a song's variants (``battle.ogg`` and ``battle-loop.ogg``) share one
song id and therefore one split, so the test split holds music no model trained on; the split of
a song is decided by a hash of its id alone, so it does not depend on the order files are found
in or on the machine.

Layout of ``out``::
    debs/<package>_<version>.deb      what apt-get downloaded (kept: a rebuild reuses them)
    audio/<package>/<file>            the audio files
    licences/<package>.copyright      the package's Debian copyright file
    manifest.json                     {"packages": {...}, "files": [...], "splits": {...}}
    manifest.csv                      one row per file

Nothing of this is committed to the repository (the music keeps its own licences, recorded in
the manifest).
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

from engine.analysis.features import integrated_loudness
from engine.errors import RefmasterError

#: The packages of the corpus, exactly these (SPEC.md, "Models"; the corpus issue).
PACKAGES = ("wesnoth-1.16-music", "warzone2100-music", "singularity-music", "planetblupi-music-ogg",
            "hyperrogue-music", "asc-music")
AUDIO_EXTENSIONS = (".ogg", ".flac", ".wav", ".mp3", ".opus")
#: Shorter files are jingles or stingers, not songs: kept out of the corpus.
MIN_SONG_SECONDS = 20.0
SPLITS = ("train", "validation", "test")
#: Song-level split: this share of songs (and at least MIN_TEST_SONGS, where the corpus is
#: large enough) is test, this share validation, the rest train.
TEST_FRACTION = 0.22
VALIDATION_FRACTION = 0.10
MIN_TEST_SONGS = 40
MANIFEST = "manifest.json"
#: Suffixes that mark a variant of the same song (a loop, an intro, a shortened version).
_VARIANT = re.compile(r"([-_. ](loop|looped|intro|outro|short|long|alt|edit|enhanced|remix|remastered|original|old|v\d))+$")


@dataclass
class CorpusFile:
    file: str          # path relative to the corpus folder
    package: str
    song: str          # song id: "<package>/<stem without variant suffix>"
    licence: str
    seconds: float
    sample_rate: int
    channels: int
    lufs: float
    split: str = ""


def song_id(package: str, filename: str) -> str:
    """The song a file belongs to: its package and its stem without loop/intro/number suffixes."""
    stem = Path(filename).stem.lower()
    base = _VARIANT.sub("", stem) or stem
    return f"{package}/{base}"


def split_songs(songs: Iterable[str]) -> Dict[str, str]:
    """``{song id: split}``, deterministic: songs ordered by the SHA-256 of their id."""
    ordered = sorted(set(songs), key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    n = len(ordered)
    n_test = max(round(TEST_FRACTION * n), min(MIN_TEST_SONGS, n // 2))
    n_val = max(1 if n >= 3 else 0, round(VALIDATION_FRACTION * n))
    out = {}
    for i, s in enumerate(ordered):
        out[s] = "test" if i < n_test else ("validation" if i < n_test + n_val else "train")
    return out


def _dep5_stanzas(text: str) -> List[Tuple[List[str], str]]:
    """``[(file globs, licence)]`` of a machine-readable (DEP-5) copyright file, in order."""
    stanzas = []
    for block in re.split(r"\n\s*\n", text):
        files = re.search(r"^Files:(.*(?:\n[ \t]+.*)*)", block, re.M)
        lic = re.search(r"^License:\s*(\S.*)$", block, re.M)
        if files and lic:
            stanzas.append((files.group(1).split(), lic.group(1).strip()))
    return stanzas


def licence_of(copyright_text: str, installed_path: str = "") -> str:
    """The licence a Debian copyright file gives the file installed at ``installed_path``.

    DEP-5 files: the last ``Files:`` stanza whose glob matches a trailing part of the path wins
    (the format's rule); other copyright files: the licence their text names.
    """
    stanzas = _dep5_stanzas(copyright_text)
    if stanzas:
        parts = installed_path.strip("/").split("/")
        tails = ["/".join(parts[i:]) for i in range(len(parts))] or [""]
        found = None
        for globs, lic in stanzas:
            if any(fnmatch.fnmatchcase(t, g) for g in globs for t in tails):
                found = lic
        return found or stanzas[0][1]
    text = " ".join(copyright_text.split())
    m = re.search(r"Attribution-ShareAlike (\d\.\d)", text) or re.search(r"CC[- ]BY[- ]SA[- ](\d\.\d)", text)
    if m:
        return f"CC-BY-SA-{m.group(1)}"
    m = re.search(r"GNU General Public License.{0,80}?version (\d)", text)
    if m:
        return f"GPL-{m.group(1)}+" if "or (at your option) any later" in text else f"GPL-{m.group(1)}"
    for word in ("CC0", "Creative Commons", "GPL"):
        if word.lower() in text.lower():
            return word
    return "unknown (see the copyright file)"


def _run(cmd: Sequence[str], cwd: Optional[Path] = None, what: str = "") -> str:
    try:
        r = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError:
        raise RefmasterError(f"corpus: `{cmd[0]}` is not installed here (the corpus needs Debian's apt-get "
                             "and dpkg-deb)") from None
    except subprocess.TimeoutExpired:
        raise RefmasterError(f"corpus: {what or cmd[0]} took more than 30 minutes; giving up") from None
    if r.returncode != 0:
        last = (r.stderr.strip() or r.stdout.strip() or f"exit status {r.returncode}").splitlines()[-1]
        raise RefmasterError(f"corpus: {what or ' '.join(cmd)} failed: {last}")
    return r.stdout


def apt_download(package: str, folder: Path) -> Path:
    """``apt-get download PACKAGE`` into ``folder``; the .deb's path."""
    _run(["apt-get", "download", "-q", package], cwd=folder, what=f"downloading {package}")
    found = sorted(folder.glob(f"{package}_*.deb"))
    if not found:
        raise RefmasterError(f"corpus: apt-get downloaded no .deb for {package}")
    return found[-1]


def _file_entry(path: Path, rel: str, package: str, licence: str, min_seconds: float) -> Optional[CorpusFile]:
    try:
        info = sf.info(str(path))
        data = sf.read(str(path), dtype="float32", always_2d=True)[0]
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError):
        return None  # a file libsndfile cannot decode is no training material; reported as skipped
    seconds = data.shape[0] / info.samplerate
    if seconds < min_seconds or not np.isfinite(data).all():
        return None
    audio = data.T if data.shape[1] == 2 else np.repeat(data[:, :1].T, 2, axis=0)
    return CorpusFile(rel, package, song_id(package, path.name), licence, round(seconds, 3), info.samplerate,
                      info.channels, round(float(integrated_loudness(audio, info.samplerate)), 2))


def build_corpus(out: Path, packages: Sequence[str] = PACKAGES, debs: Optional[Path] = None,
                 download: Callable[[str, Path], Path] = apt_download,
                 progress: Optional[Callable[[str], None]] = None, min_seconds: float = MIN_SONG_SECONDS) -> dict:
    """Assemble the corpus in ``out`` (see the module docstring); returns the manifest.

    ``debs``: a folder that already holds the packages' .deb files (tests, offline rebuilds);
    otherwise they are downloaded into ``out/debs`` (a .deb already there is reused).
    """
    say = progress or (lambda msg: None)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "debs").mkdir(exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RefmasterError(f"corpus: cannot write to {out} ({e.strerror or e})") from None
    files: List[CorpusFile] = []
    skipped: List[str] = []
    pkg_info = {}
    for package in packages:
        source = Path(debs) if debs else out / "debs"
        have = sorted(source.glob(f"{package}_*.deb"))
        if have:
            deb = have[-1]
        elif debs:
            raise RefmasterError(f"corpus: no {package}_*.deb in {debs}")
        else:
            say(f"downloading {package}")
            deb = download(package, out / "debs")
        say(f"unpacking {deb.name}")
        version = _run(["dpkg-deb", "-f", str(deb), "Version"], what=f"reading {deb.name}").strip()
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            _run(["dpkg-deb", "-x", str(deb), tmp], what=f"unpacking {deb.name}")
            tree = Path(tmp)
            cr = tree / "usr" / "share" / "doc" / package / "copyright"
            text = cr.read_text(errors="replace") if cr.is_file() else ""
            (out / "licences").mkdir(exist_ok=True)
            (out / "licences" / f"{package}.copyright").write_text(text)
            dest = out / "audio" / package
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
            found = sorted(p for p in tree.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            names, licences = set(), {}
            for p in found:
                name = p.name if p.name not in names else f"{p.parent.name}-{p.name}"
                names.add(name)
                licences[name] = licence_of(text, str(p.relative_to(tree)))
                shutil.move(str(p), dest / name)
        pkg_files = 0
        for p in sorted(dest.iterdir()):
            say(f"measuring {package}/{p.name}")
            entry = _file_entry(p, str(p.relative_to(out)), package, licences[p.name], min_seconds)
            if entry is None:
                skipped.append(str(p.relative_to(out)))
                p.unlink()
                continue
            files.append(entry)
            pkg_files += 1
        used = sorted({f.licence for f in files if f.package == package})
        pkg_info[package] = {"version": version, "licence": " / ".join(used) or licence_of(text), "files": pkg_files}
    if not files:
        raise RefmasterError("corpus: the packages held no usable audio files")
    split = split_songs(f.song for f in files)
    for f in files:
        f.split = split[f.song]
    manifest = {
        "schema": "refmaster.corpus/1",
        "packages": pkg_info,
        "files": [asdict(f) for f in files],
        "skipped": skipped,
        "splits": {s: {"songs": len({f.song for f in files if f.split == s}),
                       "files": sum(f.split == s for f in files),
                       "hours": round(sum(f.seconds for f in files if f.split == s) / 3600, 3)} for s in SPLITS},
        "hours": round(sum(f.seconds for f in files) / 3600, 3),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(asdict(files[0])))
        w.writeheader()
        for f in files:
            w.writerow(asdict(f))
    return manifest


def load_manifest(folder: Path) -> dict:
    """The manifest of a built corpus, or one clear error."""
    p = Path(folder) / MANIFEST
    try:
        m = json.loads(p.read_text())
        if m.get("schema") != "refmaster.corpus/1" or not isinstance(m.get("files"), list):
            raise ValueError("not a refmaster corpus manifest")
    except (OSError, ValueError, RecursionError) as e:
        raise RefmasterError(f"{p}: cannot read the corpus manifest ({e}); build it with "
                             "`refmaster corpus build --out DIR`") from None
    return m


def split_files(folder: Path, split: str) -> List[Path]:
    """The audio files of one split of the corpus in ``folder``."""
    if split not in SPLITS:
        raise RefmasterError(f"corpus split must be one of {', '.join(SPLITS)}, not {split!r}")
    m = load_manifest(folder)
    return [Path(folder) / f["file"] for f in m["files"] if f["split"] == split]
