"""Naturalness: FAD_musicnn, the Fréchet distance between musicnn embeddings of masters and of real music.

The ITO-Master paper judges naturalness with FAD (VGGish/CLAP embeddings, not available here). This
is the same measure on musicnn's (:mod:`engine.model.musicnn`): every 3 s patch of a track gives
the 200-d penultimate layer of ``MSD_musicnn`` (the tagger trained on the larger, more varied
collection); a set of tracks is summarised by the mean μ and covariance Σ of its patches, and

    FAD = ‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½).

The real-music side (:func:`real_music_statistics`) is the corpus test split: up to
:data:`SECONDS_PER_SONG` from the middle of each file of that split (songs nobody trained on).
Lower is closer to real music. FAD is biased by the number of patches, so systems are only
compared on the same pairs, each with as many patches as the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
import torch

from engine.errors import UsageError
from engine.io.audio import load_audio
from engine.model.musicnn import HOP, MUSICNN_RATE, PATCH_FRAMES, load_tagger, log_mel, patches, to_musicnn_rate
from engine.params import SAMPLE_RATE

#: The tagger whose penultimate layer FAD_musicnn compares.
FAD_TAGGER = "MSD_musicnn"
#: How much of each real song the real-music statistics read (from the middle), seconds.
SECONDS_PER_SONG = 30.0


@torch.no_grad()
def embeddings(audio: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """``(C, T)`` audio -> ``(P, 200)`` penultimate embeddings of its 3 s patches (float64)."""
    tagger = load_tagger(FAD_TAGGER)
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).unsqueeze(0)
    spec = log_mel(to_musicnn_rate(x, rate))[0]
    return tagger(patches(spec))[1].double().numpy()


def patch_count(seconds: float) -> int:
    """How many patches :func:`embeddings` makes of ``seconds`` of audio (a short clip is one short patch)."""
    frames = 1 + int(seconds * MUSICNN_RATE) // HOP
    return max(1, frames // PATCH_FRAMES)


def check_enough_patches(tracks: int, seconds: float) -> None:
    """One line, before any work, when ``tracks`` masters of ``seconds`` are too few for a covariance."""
    if tracks * patch_count(seconds) < 2:
        raise UsageError(f"FAD_musicnn needs at least two 3 s patches per system: {tracks} track(s) of "
                         f"{seconds:g} s give {tracks * patch_count(seconds)}; use more pairs or longer excerpts")


def statistics(embedded: Iterable[np.ndarray]) -> Tuple[np.ndarray, np.ndarray, int]:
    """(μ, Σ, count) of the rows of all the ``(P, 200)`` arrays given."""
    e = np.concatenate(list(embedded), axis=0)
    if e.shape[0] < 2:
        raise UsageError("FAD needs at least two 3 s patches")
    return e.mean(0), np.cov(e, rowvar=False), e.shape[0]


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: Tuple[np.ndarray, np.ndarray, int], b: Tuple[np.ndarray, np.ndarray, int]) -> float:
    """The Fréchet distance between the Gaussians of two :func:`statistics`.

    ``tr((Σ_a Σ_b)^½)`` is taken as the sum of the square roots of the eigenvalues of the symmetric
    ``Σ_a^½ Σ_b Σ_a^½`` (the same eigenvalues): real and stable even when a covariance is singular
    (fewer patches than dimensions), where a general matrix square root goes complex."""
    (mu_a, cov_a, _), (mu_b, cov_b, _) = a, b
    root_a = _psd_sqrt(cov_a)
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
                 - 2.0 * np.sum(np.sqrt(np.clip(cross, 0.0, None))))


def middle(audio: np.ndarray, seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    n = int(seconds * rate)
    start = max(0, audio.shape[1] // 2 - n // 2)
    return audio[:, start : start + n]


def real_music_statistics(files: Sequence[Path], seconds: float = SECONDS_PER_SONG):
    """:func:`statistics` of the real songs ``files`` (e.g. a corpus test split), ``seconds`` from the middle of each."""
    if not files:
        raise UsageError("FAD_musicnn needs real songs (the corpus test split is empty)")
    return statistics(embeddings(middle(load_audio(f).audio, seconds)) for f in files)


class FadCollector:
    """Embeddings of each system's masters as they are made, and their FAD_musicnn at the end."""

    def __init__(self):
        self.embedded: Dict[str, List[np.ndarray]] = {}

    def add(self, system: str, audio: np.ndarray) -> None:
        self.embedded.setdefault(system, []).append(embeddings(audio))

    def distances(self, real_files: Sequence[Path]) -> Dict[str, float]:
        """``{system: FAD_musicnn}`` against :func:`real_music_statistics` of ``real_files``."""
        real = real_music_statistics(real_files)
        return {s: frechet_distance(statistics(e), real) for s, e in self.embedded.items()}
