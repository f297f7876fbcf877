"""What `engine.io.audio.load_audio` decodes, per input format: the content, not only the shape.

One signal is written as wav, flac, ogg, mp3 and aiff — stereo and mono, at 44.1 kHz and at
48 kHz — and decoded again. Lossless files (24-bit) must come back to within quantisation;
lossy ones must correlate with the original after aligning and keep its length; mono is
duplicated to both channels; a 48 kHz file comes back at 44.1 kHz with the same duration and
the same (band-limited) content, compared with the analytic signal evaluated at 44.1 kHz.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import correlate

from engine.io.audio import SAMPLE_RATE, load_audio
from engine.model.synth import synth_song

FORMATS = [("wav", "PCM_24", "lossless"), ("flac", "PCM_24", "lossless"), ("ogg", "VORBIS", "lossy"),
           ("mp3", "MPEG_LAYER_III", "lossy"), ("aiff", "PCM_24", "lossless")]
SECONDS = 2.0
#: 24-bit quantisation is 2**-23 ≈ 1.2e-7 of full scale; a decode through 16 bits would miss by ~1.5e-5.
LOSSLESS_TOL = 2e-6
#: the polyphase 48 -> 44.1 kHz resampler on band-limited content (tones up to 15.5 kHz, faded in and out)
RESAMPLED_TOL = 1e-3
#: lossy: length kept within 10 ms, content aligned within 10 ms and correlating above 0.99
LOSSY_FRAMES = int(0.010 * SAMPLE_RATE)


def analytic(rate: int, seconds: float = SECONDS) -> np.ndarray:
    """A band-limited stereo signal (tones, raised-cosine fades) sampled at ``rate``: (2, T) float32."""
    t = np.arange(int(round(seconds * rate))) / rate
    ramp = np.clip(np.minimum(t, seconds - t) / 0.05, 0.0, 1.0)
    fade = 0.5 - 0.5 * np.cos(np.pi * ramp)
    left = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1870 * t + 0.3)
            + 0.1 * np.sin(2 * np.pi * 9300 * t) + 0.05 * np.sin(2 * np.pi * 15500 * t))
    right = (0.25 * np.sin(2 * np.pi * 330 * t + 1.0) + 0.2 * np.sin(2 * np.pi * 4100 * t)
             + 0.08 * np.sin(2 * np.pi * 12000 * t))
    return (np.stack([left, right]) * fade).astype(np.float32)


@pytest.fixture(scope="module")
def music():
    x = synth_song(5, SECONDS)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def _case(kind: str, music: np.ndarray):
    """(what to write, its rate, what load_audio must return at 44.1 kHz (2, T))."""
    if kind == "stereo-44k":
        return music, 44100, music
    if kind == "mono-44k":
        return music[:1], 44100, np.repeat(music[:1], 2, axis=0)
    x48, x44 = analytic(48000), analytic(44100)
    if kind == "stereo-48k":
        return x48, 48000, x44
    if kind == "mono-48k":
        return x48[:1], 48000, np.repeat(x44[:1], 2, axis=0)
    raise ValueError(kind)


def _lag(a: np.ndarray, b: np.ndarray) -> int:
    """Samples by which ``a`` lags ``b`` (FFT cross-correlation of the mid signals)."""
    c = correlate(a.mean(0).astype(np.float64), b.mean(0).astype(np.float64), mode="full", method="fft")
    return int(np.argmax(c)) - (b.shape[1] - 1)


@pytest.mark.parametrize("kind", ["stereo-44k", "mono-44k", "stereo-48k", "mono-48k"])
@pytest.mark.parametrize("ext,subtype,codec", FORMATS, ids=[f[0] for f in FORMATS])
def test_decoded_content_matches_what_was_written(tmp_path, music, kind, ext, subtype, codec):
    data, rate, want = _case(kind, music)
    f = tmp_path / f"signal.{ext}"
    try:
        sf.write(f, data.T, rate, subtype=subtype)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:  # an old libsndfile without mp3 writing
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} cannot write {ext} ({e})")
    got = load_audio(f)
    a = got.audio
    assert got.source_rate == rate and got.source_channels == data.shape[0]
    assert a.dtype == np.float32 and a.shape[0] == 2
    if data.shape[0] == 1:
        assert np.array_equal(a[0], a[1]), "mono must be duplicated to both channels"
    if codec == "lossless":
        # same duration at 44.1 kHz, sample for sample
        assert a.shape == want.shape
        tol = LOSSLESS_TOL if rate == SAMPLE_RATE else RESAMPLED_TOL
        assert float(np.abs(a - want).max()) < tol
    else:
        assert abs(a.shape[1] - want.shape[1]) <= LOSSY_FRAMES
        lag = _lag(a, want)
        assert abs(lag) <= LOSSY_FRAMES
        a2, w2 = (a[:, lag:], want) if lag >= 0 else (a, want[:, -lag:])
        n = min(a2.shape[1], w2.shape[1])
        for ch in range(2):
            r = np.corrcoef(a2[ch, :n], w2[ch, :n])[0, 1]
            assert r > 0.99, (ch, r)
        # and at the original level (a codec keeps the gain; a decode at the wrong scale would not)
        rms = lambda s: float(np.sqrt(np.mean(np.square(s[:, :n], dtype=np.float64))))  # noqa: E731
        assert rms(a2) == pytest.approx(rms(w2), rel=0.05)


def test_48k_file_has_the_duration_of_its_source(tmp_path):
    """Odd lengths too: 1.5 s + 1 frame at 48 kHz is 66151.x frames at 44.1 kHz -> within one frame."""
    x = analytic(48000, 1.6)[:, :72001]
    sf.write(tmp_path / "odd.flac", x.T, 48000, subtype="PCM_24")
    a = load_audio(tmp_path / "odd.flac")
    assert a.source_frames == 72001
    assert abs(a.audio.shape[1] - 72001 * 44100 / 48000) <= 1.0
    assert a.seconds == pytest.approx(72001 / 48000, abs=1 / 44100)
