"""Training and validation examples: SPEC.md's self-supervised scheme.

One song, two segments A and B: ``x_in = f1(f_norm(A))``, reference ``f2(B)``, target
``y = f2(A)``, where f1 and f2 are independent draws of the random manipulation f
(:mod:`engine.model.manipulation`). The same f2 on A and B is what makes B a reference for A's target:
the converter must find, from x_in and the reference's embedding, the chain that turns x_in into
y.

Songs come from a folder of real music (the songs of ``../shared/audio`` minus the held-out
validation songs) and from an unbounded stream of synthesised songs (:mod:`engine.model.synth`): a pool
whose oldest song is replaced by a new seed every few steps. f_norm is applied once per whole
song (as at inference, where the whole input track is normalised) and cached.

Each example re-levels its raw song (A and B by the same gain) to a random integrated loudness
between −26 and −10 LUFS before f2. Without it, with a handful of real songs, a song's identity
predicts the target's level and the converter learns to remember songs instead of reading the
reference (measured: validation loss on held-out songs rose while training loss fell).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from engine.analysis.features import integrated_loudness
from engine.dsp.chain import render_chain
from engine.io.audio import READ_EXTENSIONS, SAMPLE_RATE, load_audio
from engine.model.fxnorm import fx_normalize, load_stats
from engine.model.manipulation import random_manipulation
from engine.model.synth import synth_song

#: Real songs never used for training: validation and `eval-synthetic` use them.
HELD_OUT = ("vibe_ace.ogg", "sweet_waltz.ogg")
#: Segments quieter than this (RMS, dBFS) are redrawn: silence teaches nothing about style.
MIN_SEGMENT_DBFS = -45.0
#: Range of the random loudness (LUFS) each example's raw song is re-levelled to.
RELEVEL_LUFS = (-26.0, -10.0)


@dataclass
class Song:
    name: str
    raw: np.ndarray    # (2, T) float32
    norm: np.ndarray   # f_norm(raw)
    lufs: float        # integrated loudness of raw


def list_songs(folder: Path, names: Optional[Sequence[str]] = None, exclude: Sequence[str] = ()) -> List[Path]:
    files = sorted(f for f in Path(folder).iterdir() if f.suffix.lower() in READ_EXTENSIONS)
    if names is not None:
        files = [f for f in files if f.name in names]
    return [f for f in files if f.name not in exclude]


#: A corpus song is kept in memory as one excerpt this long (f_norm is computed on the whole song
#: first, as at inference): 65 songs of the corpus train split are 2.7 GB this way, 16 GB whole.
CORPUS_EXCERPT_SECONDS = 60.0


def load_songs(files: Sequence[Path], stats: dict, max_seconds: Optional[float] = None, seed: int = 0,
               progress: bool = False) -> List[Song]:
    """Decode and f_norm ``files``; with ``max_seconds``, keep one seeded excerpt of each (the
    same excerpt for a file and seed, whatever the order of the files)."""

    songs = []
    for f in tqdm(files, desc="loading songs", unit="song", disable=not progress or len(files) < 8):
        raw = load_audio(f).audio
        norm = fx_normalize(raw, stats)
        n = int(max_seconds * SAMPLE_RATE) if max_seconds else raw.shape[1]
        if raw.shape[1] > n:
            key = int.from_bytes(f.name.encode()[-8:].rjust(8, b"\0"), "little")
            start = int(np.random.default_rng([seed, key]).integers(0, raw.shape[1] - n + 1))
            raw, norm = raw[:, start:start + n].copy(), norm[:, start:start + n].copy()
        songs.append(Song(f.name, raw, norm, integrated_loudness(raw)))
    return songs


def synth_entry(seed: int, seconds: float, stats: dict) -> Song:
    raw = synth_song(seed, seconds)
    return Song(f"synth-{seed}", raw, fx_normalize(raw, stats), integrated_loudness(raw))


class ExampleSource:
    """Draws batches of (x_in, reference, target) from real songs and a synthesiser pool."""

    def __init__(self, real: List[Song], seed: int, synth_pool: int = 16, synth_seconds: float = 12.0,
                 real_prob: float = 0.5, stats: Optional[dict] = None):
        self.stats = stats or load_stats()
        self.real = real
        self.rng = np.random.default_rng(seed)
        self.synth_seconds = synth_seconds
        self.real_prob = real_prob if real else 0.0
        self.next_seed = 1_000_000 + seed * 10_000
        self.synth: List[Song] = []
        for _ in range(synth_pool):
            self.add_synth_song()

    def add_synth_song(self) -> None:
        """Replace the oldest synthesised song with a new one (the unbounded stream)."""
        if self.synth:
            self.synth.pop(0)
        self.synth.append(synth_entry(self.next_seed, self.synth_seconds, self.stats))
        self.next_seed += 1

    def _segments(self, song: Song, a_len: int, b_len: int):
        """Start of A and of B: non-overlapping (in a random order) when the song is long enough."""
        T = song.raw.shape[1]
        for _ in range(20):
            if T >= a_len + b_len:
                a_first = self.rng.random() < 0.5
                n1, n2 = (a_len, b_len) if a_first else (b_len, a_len)
                s1 = int(self.rng.integers(0, T - n1 - n2 + 1))
                s2 = int(self.rng.integers(s1 + n1, T - n2 + 1))
                a0, b0 = (s1, s2) if a_first else (s2, s1)
            else:
                a0 = int(self.rng.integers(0, max(1, T - a_len + 1)))
                b0 = int(self.rng.integers(0, max(1, T - b_len + 1)))
            seg = song.raw[:, a0 : a0 + a_len].astype(np.float64)
            if 10 * np.log10(np.mean(seg ** 2) + 1e-12) > MIN_SEGMENT_DBFS:
                break
        return a0, b0

    def pick_song(self) -> Song:
        if self.real and self.rng.random() < self.real_prob:
            return self.real[int(self.rng.integers(len(self.real)))]
        return self.synth[int(self.rng.integers(len(self.synth)))]

    def batch(self, size: int, seg_seconds: float, ref_seconds: float, device="cpu") -> Dict[str, torch.Tensor]:
        a_len, b_len = int(seg_seconds * SAMPLE_RATE), int(ref_seconds * SAMPLE_RATE)
        a_norm, a_raw, b_raw = [], [], []
        for _ in range(size):
            song = self.pick_song()
            a0, b0 = self._segments(song, a_len, b_len)
            fit = lambda x, n: np.pad(x, ((0, 0), (0, n - x.shape[1]))) if x.shape[1] < n else x
            gain = np.float32(10 ** ((self.rng.uniform(*RELEVEL_LUFS) - song.lufs) / 20))
            a_norm.append(fit(song.norm[:, a0 : a0 + a_len], a_len))
            a_raw.append(fit(song.raw[:, a0 : a0 + a_len], a_len) * gain)
            b_raw.append(fit(song.raw[:, b0 : b0 + b_len], b_len) * gain)
        g = torch.Generator().manual_seed(int(self.rng.integers(2 ** 62)))
        return make_example(torch.from_numpy(np.stack(a_norm)), torch.from_numpy(np.stack(a_raw)),
                            torch.from_numpy(np.stack(b_raw)), g, device)


def make_example(a_norm: torch.Tensor, a_raw: torch.Tensor, b_raw: torch.Tensor, generator: torch.Generator,
                 device="cpu", apply_f1: bool = True) -> Dict[str, torch.Tensor]:
    """Apply f1 and f2 to a batch of segments: ``x_in = f1(A_norm)``, ``ref = f2(B)``, ``y = f2(A)``."""
    B = a_norm.shape[0]
    p1, s1 = random_manipulation(generator, B)
    p2, s2 = random_manipulation(generator, B)
    with torch.no_grad():
        a_norm, a_raw, b_raw = a_norm.to(device), a_raw.to(device), b_raw.to(device)
        x_in = render_chain(a_norm, p1.to(device), s1.to(device), check_params=False) if apply_f1 else a_norm
        y = render_chain(a_raw, p2.to(device), s2.to(device), check_params=False)
        ref = render_chain(b_raw, p2.to(device), s2.to(device), check_params=False)
    return {"x_in": x_in, "ref": ref, "y": y, "params2": p2, "switches2": s2}
