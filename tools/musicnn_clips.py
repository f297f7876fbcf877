"""The synthesised clips of musicnn's golden-value test (NumPy only: the original implementation's
environment and ours both make them, bit for bit the same up to libm rounding).

Four 6.5 s mono clips at 16 kHz (two 3 s patches each) that the taggers tell apart — a piano-like
chord progression, a drum loop, a distorted power-chord riff over drums, a bass-heavy beat — and
one 6.5 s stereo clip at 44.1 kHz (the drum loop with a bass line) for the resampling path.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

SECONDS = 6.5


def _t(rate: int) -> np.ndarray:
    return np.arange(int(SECONDS * rate)) / rate


def _hz(midi: float) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


def _notes(rate: int, events, partials, decay: float) -> np.ndarray:
    """Sum of decaying harmonic tones: ``events`` = [(start s, length s, midi)]."""
    out = np.zeros(int(SECONDS * rate))
    for start, length, midi in events:
        n0, n = int(start * rate), int(length * rate)
        t = np.arange(min(n, len(out) - n0)) / rate
        env = np.exp(-t / decay) * np.minimum(1.0, t / 0.005)
        tone = sum(a * np.sin(2 * np.pi * _hz(midi) * (k + 1) * t) for k, a in enumerate(partials))
        out[n0 : n0 + len(t)] += env * tone
    return out


def _drums(rate: int, bpm: float, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(int(SECONDS * rate))
    beat = 60.0 / bpm
    for i in range(int(SECONDS / beat * 2)):
        n0 = int(i * beat / 2 * rate)
        t = np.arange(int(0.25 * rate)) / rate
        t = t[: len(out) - n0]
        if i % 4 == 0:       # kick: a falling sine
            out[n0 : n0 + len(t)] += 0.9 * np.sin(2 * np.pi * (50 * t + 60 * 0.03 * (1 - np.exp(-t / 0.03)))) * np.exp(-t / 0.12)
        if i % 4 == 2:       # snare: noise and a tone
            out[n0 : n0 + len(t)] += (0.5 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * 190 * t)) * np.exp(-t / 0.06)
        noise = rng.standard_normal(len(t))
        hat = noise - np.concatenate([[0.0], noise[:-1]])  # first difference: a bright hi-hat
        out[n0 : n0 + len(t)] += 0.12 * hat * np.exp(-t / 0.02)
    return out


def golden_clips() -> Dict[str, Tuple[int, np.ndarray]]:
    """``{name: (rate, float32 audio)}``: mono ``(T,)`` clips at 16 kHz and one stereo ``(2, T)`` at 44.1 kHz."""
    rng = np.random.default_rng(13)
    sr = 16000
    chords = [(0.0, 60), (1.6, 65), (3.2, 67), (4.8, 64)]
    piano = _notes(sr, [(s + 0.05 * j, 1.6, m + iv) for s, m in chords for j, iv in enumerate((0, 4, 7, 12))],
                   (1.0, 0.5, 0.3, 0.15, 0.08), 0.6)
    drums = _drums(sr, 100, rng)
    riff = _notes(sr, [(0.3 * i, 0.3, 40 + (0, 0, 3, 5, 0, 7, 5, 3)[i % 8]) for i in range(22)], (1.0, 0.8, 0.6, 0.5, 0.4, 0.3), 0.5)
    riff = np.tanh(8.0 * (riff + _notes(sr, [(0.3 * i, 0.3, 47 + (0, 0, 3, 5, 0, 7, 5, 3)[i % 8]) for i in range(22)],
                                        (1.0, 0.7, 0.5), 0.5)))
    metal = 0.35 * riff + 0.6 * _drums(sr, 160, rng)
    bass = _notes(sr, [(0.6 * i, 0.6, 33 + (0, 0, 5, 3)[i % 4]) for i in range(11)], (1.0, 0.3, 0.1), 0.4)
    beat = 0.7 * bass + 0.5 * _drums(sr, 90, rng)
    clips = {"piano": piano, "drums": drums, "metal": metal, "beat": beat}
    out = {name: (sr, (0.5 * x / np.max(np.abs(x))).astype(np.float32)) for name, x in clips.items()}
    sr44 = 44100
    left = _drums(sr44, 120, rng) + 0.6 * _notes(sr44, [(0.5 * i, 0.5, 36 + (0, 7, 5, 3)[i % 4]) for i in range(13)], (1.0, 0.4), 0.3)
    right = 0.8 * left + 0.2 * _notes(sr44, [(1.0 * i, 1.0, 72 + (0, 4, 7, 4)[i % 4]) for i in range(7)], (1.0, 0.2), 0.5)
    stereo = np.stack([left, right])
    out["stereo44k"] = (sr44, (0.5 * stereo / np.max(np.abs(stereo))).astype(np.float32))
    return out
