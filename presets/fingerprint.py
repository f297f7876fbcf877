"""The fingerprint of a reference track: the key the preset store finds its preset by.

It is computed from the *decoded* audio (44.1 kHz stereo float32, as
``engine.io.audio.load_audio`` returns it), so the same music in wav and flac has the same key.
It is a Haitsma–Kalker style bit pattern: the signs of the time differences of the
differences of log energies in 33 bands (100 Hz–8 kHz) over 128 equal segments of the song,
4064 bits, plus the duration. Identical decodes give identical strings; re-encodings that change
the samples slightly (16-bit vs 24-bit, a good lossy encode) flip a few bits, so
:func:`fingerprints_match` compares with a bit-error-rate threshold.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

import numpy as np

from engine.errors import AudioError
from engine.io.audio import SAMPLE_RATE, PathLike, check_audio_array, load_audio

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
    # ASCII digits, a few of them: str.isdigit() accepts "²", and int() refuses 5,000 digits
    if len(parts) != 3 or parts[0] != FP_VERSION or not re.fullmatch(r"[0-9]{1,9}", parts[1]):
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

    return fingerprint(load_audio(path).audio)

