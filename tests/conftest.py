"""Shared fixtures: synthesised songs everywhere, real music where ../shared/audio exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO.parent / "shared" / "audio"
REAL_SONGS = sorted(p for p in SHARED_AUDIO.glob("*") if p.suffix in (".ogg", ".flac", ".mp3", ".wav")) if SHARED_AUDIO.is_dir() else []

needs_real_music = pytest.mark.skipif(
    not REAL_SONGS, reason=f"real music not found at {SHARED_AUDIO} (see ../shared/audio/SOURCES.md)"
)


@pytest.fixture(scope="session")
def song():
    """8 s synthesised mix, float32 (2, T)."""
    from engine.model.synth import synth_song

    return synth_song(3, 8.0)


@pytest.fixture(scope="session")
def songs():
    """Five different 6 s synthesised mixes."""
    from engine.model.synth import synth_song

    return [synth_song(s, 6.0) for s in (11, 12, 13, 14, 15)]


@pytest.fixture
def song_t(song):
    return torch.from_numpy(song).unsqueeze(0)


def active_params(**overrides) -> torch.Tensor:
    """A Θ in which every one of the 46 parameters audibly matters on music."""
    from engine import params as P

    v = P.defaults()
    v.update({
        "eq.low_shelf_gain": 4.0, "eq.band0_gain": -3.0, "eq.band1_gain": 5.0, "eq.band2_gain": -4.0,
        "eq.band3_gain": 6.0, "eq.high_shelf_gain": 3.0, "eq.low_shelf_q": 0.8, "eq.band3_q": 1.5,
        "distortion.drive": 5.0, "distortion.mix": 0.5, "multiband.mix": 0.6,
        "gain.gain": 6.0, "imager.width": 0.6,
        "limiter.threshold": -8.0, "limiter.attack": 2.0, "limiter.release": 60.0,
    })
    for b in ("low", "mid", "high"):
        v.update({f"multiband.{b}_comp_threshold": -32.0, f"multiband.{b}_comp_ratio": 4.0,
                  f"multiband.{b}_exp_threshold": -45.0, f"multiband.{b}_exp_ratio": 0.6,
                  f"multiband.{b}_attack": 8.0, f"multiband.{b}_release": 80.0})
    v.update({k.replace("__", "."): val for k, val in overrides.items()})
    return torch.tensor([v[k] for k in P.PARAM_KEYS], dtype=torch.float32)


def loudness(x) -> float:
    from engine.analysis.features import integrated_loudness

    x = x.detach().numpy() if isinstance(x, torch.Tensor) else x
    return integrated_loudness(np.asarray(x).reshape(2, -1))
