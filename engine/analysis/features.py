"""Audio features: the differentiable Audio Feature (AF) set and the evaluation measures.

Differentiable (Torch, batched ``(B, 2, T)``), SPEC.md "Inference-time optimisation":

* RMS per channel (linear), crest factor per channel (dB),
* stereo width = side energy / mid energy, stereo imbalance = (E_R − E_L) / (E_R + E_L),
* bark spectrum: 24 bands equally spaced on the Bark scale between 20 Hz and 20 kHz, of mid
  and side, from an STFT with FFT size 32768 (hop 8192, Hann), power averaged over time, as
  natural-log magnitude.

:class:`AudioFeatureLoss` is the MSE of each feature against a reference, weighted
RMS 0.1, crest 0.001, width 1.0, imbalance 1.0, bark 0.1.

Evaluation only (NumPy): integrated loudness (pyloudnorm, BS.1770), true peak (4x
oversampled), and DRV, the dynamic-range variability: per channel, onsets are peaks of a
high-frequency-content novelty function; each onset's level is the peak (dBFS) in the 50 ms
after it; DRV is the standard deviation of the top quartile of those levels, averaged over
channels.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Dict, Mapping, Optional

import numpy as np
import pyloudnorm
import torch
from scipy.signal import resample_poly

from engine.params import SAMPLE_RATE

EPS = 1e-10

AF_WEIGHTS: Dict[str, float] = {"rms": 0.1, "crest": 0.001, "width": 1.0, "imbalance": 1.0, "bark": 0.1}
BARK_FFT = 32768
BARK_HOP = 8192
BARK_BANDS = 24
BARK_FMIN = 20.0
BARK_FMAX = 20000.0


# ------------------------------------------------------------------------------ bark scale

def hz_to_bark(f):
    """Traunmüller's Bark formula."""
    return 26.81 * f / (1960.0 + f) - 0.53


def bark_to_hz(z):
    return 1960.0 * (z + 0.53) / (26.28 - z)


def bark_band_edges(n_bands: int = BARK_BANDS, fmin: float = BARK_FMIN, fmax: float = BARK_FMAX) -> np.ndarray:
    """``n_bands + 1`` band edges in Hz, equally spaced in Bark."""
    return bark_to_hz(np.linspace(hz_to_bark(fmin), hz_to_bark(fmax), n_bands + 1))


def bark_band_centres(n_bands: int = BARK_BANDS) -> np.ndarray:
    e = bark_band_edges(n_bands)
    return np.sqrt(e[:-1] * e[1:])


@lru_cache(maxsize=4)
def _bark_matrix(n_fft: int, sample_rate: float, dtype: torch.dtype, device: str) -> torch.Tensor:
    """(bins, bands) averaging matrix: each rfft bin in [fmin, fmax) belongs to one band."""
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    edges = bark_band_edges()
    m = np.zeros((len(freqs), BARK_BANDS))
    for b in range(BARK_BANDS):
        sel = (freqs >= edges[b]) & (freqs < edges[b + 1])
        if not sel.any():  # a band narrower than a bin: take the nearest bin
            sel = np.abs(freqs - np.sqrt(edges[b] * edges[b + 1])) == np.abs(freqs - np.sqrt(edges[b] * edges[b + 1])).min()
        m[sel, b] = 1.0 / sel.sum()
    return torch.tensor(m, dtype=dtype, device=device)


# ------------------------------------------------------------------------------ differentiable features

def mid_side(x: torch.Tensor):
    """Energy-preserving mid and side of ``(B, 2, T)`` -> two ``(B, T)``."""
    s = 1.0 / math.sqrt(2.0)
    return (x[:, 0] + x[:, 1]) * s, (x[:, 0] - x[:, 1]) * s


def rms(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, T)`` -> ``(B, C)`` linear RMS."""
    return torch.sqrt(x.square().mean(-1) + EPS)


def crest_factor_db(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, T)`` -> ``(B, C)`` peak-to-RMS ratio in dB."""
    return 20.0 * torch.log10((x.abs().amax(-1) + EPS) / rms(x))


def stereo_width(x: torch.Tensor) -> torch.Tensor:
    """``(B, 2, T)`` -> ``(B,)`` side energy over mid energy."""
    m, s = mid_side(x)
    return s.square().sum(-1) / (m.square().sum(-1) + EPS)


def stereo_imbalance(x: torch.Tensor) -> torch.Tensor:
    """``(B, 2, T)`` -> ``(B,)`` (E_R − E_L) / (E_R + E_L): 0 balanced, ±1 one side only."""
    e = x.square().sum(-1)
    return (e[:, 1] - e[:, 0]) / (e[:, 0] + e[:, 1] + EPS)


#: Frames of the long STFT taken at a time by :func:`spectrum_power`: a minute of stereo at once is
#: 168 MB of complex128 spectra plus as much again for their squares, and twice as slow as
#: summing them 32 frames (17 MB) at a time (measured).
SPECTRUM_CHUNK_FRAMES = 32


def spectrum_power(x: torch.Tensor, n_fft: int = BARK_FFT, hop: int = BARK_HOP) -> torch.Tensor:
    """Time-averaged power of each rfft bin of each channel: ``(B, C, T)`` -> ``(B, C, n_fft // 2 + 1)``."""
    B, C, T = x.shape
    sig = x.reshape(B * C, T)
    if T < n_fft:
        sig = torch.nn.functional.pad(sig, (0, n_fft - T))
    window = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
    frames = 1 + (sig.shape[-1] - n_fft) // hop
    if frames <= SPECTRUM_CHUNK_FRAMES:
        X = torch.stft(sig, n_fft, hop, window=window, center=False, return_complex=True)
        return ((X.real.square() + X.imag.square()).mean(-1) / window.square().sum()).reshape(B, C, -1)
    total = None
    for first in range(0, frames, SPECTRUM_CHUNK_FRAMES):
        last = min(frames, first + SPECTRUM_CHUNK_FRAMES) - 1
        X = torch.stft(sig[:, first * hop : last * hop + n_fft], n_fft, hop, window=window, center=False,
                       return_complex=True)
        part = (X.real.square() + X.imag.square()).sum(-1)
        total = part if total is None else total + part
    return (total / frames / window.square().sum()).reshape(B, C, -1)


def bins_to_bark(power: torch.Tensor, sample_rate: float = SAMPLE_RATE) -> torch.Tensor:
    """Per-bin power ``(..., n_fft // 2 + 1)`` -> bark band power ``(..., 24)`` (mean over each band's bins)."""
    n_fft = 2 * (power.shape[-1] - 1)
    return power @ _bark_matrix(n_fft, float(sample_rate), power.dtype, str(power.device))


def bark_power(x: torch.Tensor, sample_rate: float = SAMPLE_RATE, n_fft: int = BARK_FFT, hop: int = BARK_HOP) -> torch.Tensor:
    """Time-averaged band power of each channel: ``(B, C, T)`` -> ``(B, C, 24)``."""
    return bins_to_bark(spectrum_power(x, n_fft, hop), sample_rate)


def bark_spectrum(x: torch.Tensor, sample_rate: float = SAMPLE_RATE) -> torch.Tensor:
    """Log bark spectrum of mid and side: ``(B, 2, T)`` -> ``(B, 2, 24)`` (ln magnitude)."""
    m, s = mid_side(x)
    return 0.5 * torch.log(bark_power(torch.stack([m, s], 1), sample_rate) + EPS)


def audio_features(x: torch.Tensor, sample_rate: float = SAMPLE_RATE) -> Dict[str, torch.Tensor]:
    """All AF features of ``(B, 2, T)``, each with a leading batch dimension."""
    return {
        "rms": rms(x),
        "crest": crest_factor_db(x),
        "width": stereo_width(x),
        "imbalance": stereo_imbalance(x),
        "bark": bark_spectrum(x, sample_rate),
    }


def feature_distance(fa: Mapping[str, torch.Tensor], fb: Mapping[str, torch.Tensor],
                     weights: Mapping[str, float] = AF_WEIGHTS) -> Dict[str, torch.Tensor]:
    """Weighted MSE per feature between two feature dicts -> ``{name: (B,)}``."""
    out = {}
    for k, w in weights.items():
        d = (fa[k] - fb[k]).square()
        out[k] = w * d.reshape(d.shape[0], -1).mean(-1)
    return out


class AudioFeatureLoss(torch.nn.Module):
    """SPEC.md's Audio Feature loss: weighted MSE of RMS, crest, width, imbalance and bark spectrum.

    ``loss(y, ref)`` returns the total per batch item ``(B,)``; :meth:`terms` the parts.
    Reference features can be precomputed once with :func:`audio_features` and passed as
    ``ref_features`` (ITO calls the loss many times against the same reference).
    """

    def __init__(self, weights: Optional[Mapping[str, float]] = None, sample_rate: float = SAMPLE_RATE):
        super().__init__()
        self.weights = dict(AF_WEIGHTS if weights is None else weights)
        self.sample_rate = sample_rate

    def terms(self, y: torch.Tensor, ref: Optional[torch.Tensor] = None,
              ref_features: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        if ref_features is None:
            if ref is None:
                raise ValueError("give ref or ref_features")
            ref_features = audio_features(ref, self.sample_rate)
        return feature_distance(audio_features(y, self.sample_rate), ref_features, self.weights)

    def forward(self, y: torch.Tensor, ref: Optional[torch.Tensor] = None,
                ref_features: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
        return sum(self.terms(y, ref, ref_features).values())


def af_distance(y: np.ndarray, ref: np.ndarray, sample_rate: float = SAMPLE_RATE) -> float:
    """AF loss between two ``(2, T)`` NumPy signals (float64), as a float."""
    a = torch.as_tensor(np.asarray(y, dtype=np.float64)).unsqueeze(0)
    b = torch.as_tensor(np.asarray(ref, dtype=np.float64)).unsqueeze(0)
    with torch.no_grad():
        return float(AudioFeatureLoss(sample_rate=sample_rate)(a, b)[0])


# ------------------------------------------------------------------------------ evaluation measures

def integrated_loudness(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """BS.1770 integrated loudness (LUFS) of ``(2, T)`` audio, pyloudnorm's to float rounding; -inf if silent.

    Stereo goes through :class:`engine.analysis.meters.LoudnessMeter` (pyloudnorm's filters and
    gating, one filter pass, each sample squared once: 2.5x faster than pyloudnorm's own, and a
    master measures loudness a dozen times); other channel counts through pyloudnorm.
    """
    x = np.asarray(audio, dtype=np.float64)
    if x.shape[-1] < int(0.4 * sample_rate):
        x = np.pad(x, ((0, 0), (0, int(0.4 * sample_rate) - x.shape[-1])))
    if x.ndim == 2 and x.shape[0] == 2:
        from engine.analysis.meters import LoudnessMeter

        meter = LoudnessMeter(sample_rate)
        meter.add(x)
        return float(meter.integrated())
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(x.T))


def true_peak_db(audio: np.ndarray) -> float:
    """Peak of the 4x oversampled signal in dBTP."""
    up = resample_poly(np.asarray(audio, dtype=np.float64), 4, 1, axis=-1)
    return 20.0 * math.log10(max(float(np.abs(up).max()), EPS))


def sample_peak_db(audio: np.ndarray) -> float:
    return 20.0 * math.log10(max(float(np.abs(audio).max()), EPS))


ONSET_FFT = 1024
ONSET_HOP = 512


def hfc_frames(channel: np.ndarray, n_fft: int = ONSET_FFT, hop: int = ONSET_HOP) -> np.ndarray:
    """High-frequency content of each frame (Hann, ``n_fft``, every ``hop``) of a 1-D signal; frame
    ``i`` starts at ``i * hop``, so consecutive pieces overlapping by ``n_fft - hop`` give the whole."""
    if len(channel) < n_fft:
        return np.zeros(0)
    n_frames = 1 + (len(channel) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    frames = channel[idx] * np.hanning(n_fft)[None, :]
    mag2 = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return (mag2 * np.arange(mag2.shape[1])[None, :]).sum(1)


def hfc_onsets(channel: np.ndarray, sample_rate: int = SAMPLE_RATE, n_fft: int = ONSET_FFT, hop: int = ONSET_HOP) -> np.ndarray:
    """Onset sample positions from a high-frequency-content novelty function."""
    return onsets_from_hfc(hfc_frames(channel, n_fft, hop), hop)


def onsets_from_hfc(hfc: np.ndarray, hop: int = ONSET_HOP) -> np.ndarray:
    """Onset sample positions from the :func:`hfc_frames` of a whole channel (its median and
    spread set the thresholds, so it takes all of them at once)."""
    if not len(hfc):
        return np.zeros(0, dtype=int)
    novelty = np.maximum(np.diff(np.log1p(hfc / (np.median(hfc) + EPS)), prepend=0.0), 0.0)
    if not np.any(novelty > 0):
        return np.zeros(0, dtype=int)
    # Peaks: local maxima over +-3 frames (about 35 ms) above an adaptive threshold.
    w = 3
    padded = np.pad(novelty, w, mode="constant")
    local_max = np.max(np.lib.stride_tricks.sliding_window_view(padded, 2 * w + 1), axis=1)
    k = 16
    mean_local = np.convolve(np.pad(novelty, k, mode="edge"), np.ones(2 * k + 1) / (2 * k + 1), mode="valid")
    thresh = mean_local + 0.5 * novelty.std()
    peaks = np.nonzero((novelty == local_max) & (novelty > thresh) & (novelty > 0))[0]
    return peaks * hop


def drv_db(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Dynamic-range variability (dB) of ``(2, T)`` audio: std of the top-quartile onset peak
    levels, mean over channels (computed by :func:`drv_torch`, the one implementation).

    Returns NaN when a channel has fewer than 4 onsets (too little material to say).
    """
    return segments_drv(np.asarray(audio)[None], sample_rate)


DRV_WINDOW_S = 0.05
DRV_MIN_ONSETS = 4


def onset_table(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list:
    """Onsets of ``(K, 2, T)`` excerpts, per channel: ``[[(k, sample), ...] for each channel]``.

    Found once (on the output at the start of an optimisation) so that :func:`drv_torch` can
    follow the same events while the chain's parameters change.
    """
    a = np.asarray(audio, dtype=np.float64)
    table = []
    for c in range(a.shape[1]):
        table.append([(k, int(o)) for k in range(a.shape[0]) for o in hfc_onsets(a[k, c], sample_rate)])
    return table


def drv_torch(y: torch.Tensor, onsets: list, sample_rate: int = SAMPLE_RATE) -> Optional[torch.Tensor]:
    """Differentiable DRV of ``(K, 2, T)`` excerpts at fixed ``onsets`` (from :func:`onset_table`).

    The same statistic as :func:`drv_db` — per channel, the peak level in the 50 ms after each
    onset, the standard deviation of the top quartile of those levels, the mean over channels —
    with the onsets held fixed and the quartile chosen on the current levels (the selection is
    piecewise constant, the levels carry the gradient). None when a channel has fewer than 4 onsets.
    """
    win = int(DRV_WINDOW_S * sample_rate)
    T = y.shape[-1]
    offsets = torch.arange(win)
    peaks = []
    for c, events in enumerate(onsets):
        events = [(k, o) for k, o in events if o < T]
        if len(events) < DRV_MIN_ONSETS:
            return None
        k = torch.tensor([e[0] for e in events])
        idx = (torch.tensor([e[1] for e in events])[:, None] + offsets[None, :]).clamp(max=T - 1)
        peaks.append(y[k[:, None], c, idx].abs().amax(-1))
    return drv_of_peaks(peaks)


def drv_of_peaks(peaks) -> Optional[torch.Tensor]:
    """DRV from each channel's onset peaks (linear, 50 ms after each onset): the standard deviation
    of the top quartile of their levels in dB, the mean over channels; None below 4 onsets."""
    per_channel = []
    for p in peaks:
        if p.shape[0] < DRV_MIN_ONSETS:
            return None
        levels = 20.0 * torch.log10(p + EPS)
        cut = float(np.percentile(levels.detach().numpy(), 75))
        top = levels[levels.detach() >= cut]
        per_channel.append(top.std(unbiased=False))
    return torch.stack(per_channel).mean()


def segments_drv(segments: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """DRV of a track from ``(K, 2, n)`` segments of it: the onsets of all segments pooled.

    For K = 1 it is :func:`drv_db`. A segment after the first starts mid-music, so an onset in
    its first frame is its cut, not an event, and is left out.
    """
    seg = np.asarray(segments, dtype=np.float64)
    table = [[(k, o) for k, o in ch if k == 0 or o > 0] for ch in onset_table(seg, sample_rate)]
    with torch.no_grad():
        d = drv_torch(torch.from_numpy(seg), table, sample_rate)
    return float("nan") if d is None else float(d)


def analyze(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, spectrum: bool = True) -> Dict[str, object]:
    """Everything `refmaster analyze` reports for a ``(2, T)`` signal (:class:`Analysis`, fed in blocks);
    ``spectrum=False`` leaves out the bark balance (a third of the time; `master` reports it only in a plot)."""
    a = Analysis(sample_rate, spectrum)
    a.add(audio)
    return a.result()


class Analysis:
    """The figures of :func:`analyze` from a signal fed in ``(2, n)`` blocks of any size, in bounded
    memory: sums, peaks and meters, bark power summed frame by frame, and two numbers per channel
    and 512 samples for the DRV (a frame's HFC and the peak of the 50 ms from its start: its
    thresholds need the whole file's), 7.4 MB an hour.
    Each figure is its whole-signal definition above, to float rounding: crest, width and
    imbalance as :func:`audio_features`, loudness as :func:`integrated_loudness`, true peak as
    :func:`true_peak_db`, the bark balance as :func:`bark_spectrum`, DRV as :func:`drv_db`.
    """

    PIECE = 1 << 17   # blocks are split into pieces of this many samples (bounds the work arrays)

    def __init__(self, sample_rate: int = SAMPLE_RATE, spectrum: bool = True):
        from engine.analysis.meters import LoudnessMeter, TruePeakMeter

        self.rate, self.n, self.spectrum = sample_rate, 0, spectrum
        self.peak, self.energy, self.mid_side_energy = np.zeros(2), np.zeros(2), np.zeros(2)
        self.loudness, self.true_peak = LoudnessMeter(sample_rate), TruePeakMeter()
        self.win = int(DRV_WINDOW_S * sample_rate)
        self._ms = np.zeros((2, 0))                        # mid/side not yet in a whole bark frame
        self._power, self._frames = torch.zeros(2, BARK_FFT // 2 + 1, dtype=torch.float64), 0
        self._onset_buf, self._hfc = np.zeros((2, 0)), [[], []]
        self._level_buf, self._levels = np.zeros((2, 0)), [[], []]

    def add(self, block: np.ndarray) -> None:
        block = np.asarray(block)
        for i in range(0, block.shape[-1], self.PIECE):
            self._add(np.asarray(block[:, i:i + self.PIECE], dtype=np.float64))

    def _add(self, x: np.ndarray) -> None:
        self.n += x.shape[1]
        self.peak = np.maximum(self.peak, np.abs(x).max(axis=1))
        self.energy += np.square(x).sum(axis=1)
        ms = np.stack([x[0] + x[1], x[0] - x[1]]) * (1.0 / math.sqrt(2.0))
        self.mid_side_energy += np.square(ms).sum(axis=1)
        self.loudness.add(x)
        self.true_peak.add(x)
        if self.spectrum:
            self._ms = np.concatenate([self._ms, ms], axis=1)
            if self._ms.shape[1] >= BARK_FFT + 15 * BARK_HOP:   # 16 frames at a time (3.5 s, 2.5 MB)
                self._bark_frames()
        buf = self._onset_buf = np.concatenate([self._onset_buf, x], axis=1)
        if buf.shape[1] >= ONSET_FFT:
            k = 1 + (buf.shape[1] - ONSET_FFT) // ONSET_HOP
            for c in range(2):
                self._hfc[c].append(hfc_frames(buf[c, :ONSET_FFT + (k - 1) * ONSET_HOP]))
            self._onset_buf = buf[:, k * ONSET_HOP:]
        lev = self._level_buf = np.concatenate([self._level_buf, np.abs(x)], axis=1)
        if lev.shape[1] >= self.win:        # the peak of the window from every hop, where it is whole
            k = 1 + (lev.shape[1] - self.win) // ONSET_HOP
            peaks = np.lib.stride_tricks.sliding_window_view(lev, self.win, axis=1)[:, :k * ONSET_HOP:ONSET_HOP].max(-1)
            for c in range(2):
                self._levels[c].append(peaks[c].astype(np.float32))   # exact for float32 audio
            self._level_buf = lev[:, k * ONSET_HOP:]

    def _bark_frames(self) -> None:
        """Sum the power of the whole bark frames buffered, as torch.stft(center=False) cuts them."""
        if self._ms.shape[1] >= BARK_FFT:
            k = 1 + (self._ms.shape[1] - BARK_FFT) // BARK_HOP
            self._power += k * spectrum_power(torch.from_numpy(self._ms[None, :, :BARK_FFT + (k - 1) * BARK_HOP]))[0]
            self._frames += k
            self._ms = self._ms[:, k * BARK_HOP:]

    def _drv(self) -> float:
        peaks = []
        tail = self._level_buf   # windows cut by the end of the signal
        tails = [tail[:, o:].max(axis=1) for o in range(0, tail.shape[1], ONSET_HOP)]
        for c in range(2):
            levels = np.concatenate(self._levels[c] + [np.array([t[c] for t in tails], np.float32)])
            onsets = onsets_from_hfc(np.concatenate(self._hfc[c] or [np.zeros(0)]))
            self._levels[c], self._hfc[c] = [], []   # one channel's whole-file arrays at a time
            peaks.append(torch.from_numpy(levels[onsets // ONSET_HOP].astype(np.float64)))
        with torch.no_grad():
            d = drv_of_peaks(peaks)
        return float("nan") if d is None else float(d)

    def result(self) -> Dict[str, object]:
        """The report (call once, after the last block)."""
        n, rate = self.n, self.rate
        if n < int(0.4 * rate):   # integrated_loudness pads a signal shorter than one gating block
            self.loudness.add(np.zeros((2, int(0.4 * rate) - n)))
        crest = 20.0 * np.log10((self.peak + EPS) / np.sqrt(self.energy / max(n, 1) + EPS))
        e = self.energy
        figures = {
            "duration_s": n / rate,
            "loudness_lufs": self.loudness.integrated(),
            "true_peak_dbtp": self.true_peak.db(),
            "sample_peak_dbfs": 20.0 * math.log10(max(float(self.peak.max()), EPS)),
            "rms_dbfs": float(20 * np.log10(np.sqrt(e.sum() / max(2 * n, 1)) + EPS)),
            "crest_db": float(crest.mean()),
            "width": float(self.mid_side_energy[1] / (self.mid_side_energy[0] + EPS)),
            "imbalance": float((e[1] - e[0]) / (e[0] + e[1] + EPS)),
            "drv_db": self._drv(),
        }
        if not self.spectrum:
            return figures
        self._bark_frames()
        power, frames = self._power, self._frames
        if frames == 0:           # shorter than one frame: bark_power pads it to one
            power, frames = spectrum_power(torch.from_numpy(self._ms[None]))[0], 1
        bark_db = (20.0 / math.log(10.0)) * 0.5 * torch.log(bins_to_bark(power / frames, rate) + EPS)
        mid_db = bark_db[0].numpy()
        level = float(np.mean(mid_db))
        return dict(figures, bark_centres_hz=[float(c) for c in bark_band_centres()],
                    bark_mid_db=[float(v) - level for v in mid_db], bark_side_db=[float(v) - level for v in bark_db[1].numpy()])
