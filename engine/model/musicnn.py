"""musicnn (Pons & Serra, 2019), ported to Torch: a pretrained music tagger for prompts and FAD.

``MSD_musicnn`` and ``MTT_musicnn`` tag 3 s of music with the 50 tags of the Million Song Dataset
and of MagnaTagATune. The weights are the authors' TensorFlow checkpoints from the ``musicnn==0.1.0``
wheel (ISC licence, Music Technology Group, Universitat Pompeu Fabra), converted once by
``tools/musicnn_convert.py`` into ``engine/weights/musicnn-{msd,mtt}.safetensors`` (see
MUSICNN_LICENSE.md there). Nothing here imports TensorFlow or librosa.

The original's input, reproduced here (``tests/test_musicnn.py`` compares this port with values the
original produced):

* mono audio at 16 kHz; librosa's mel spectrogram: centred STFT (reflect padding), periodic Hann
  window, n_fft 512, hop 256, power 2, 96 Slaney mel bands from 0 to 8 kHz with Slaney area
  normalisation (:func:`slaney_mel_filterbank`);
* the mel power rounded to float16 (musicnn's ``audio_rep.astype(np.float16)``; here with a
  straight-through gradient, so ITO can differentiate through it), then ``log10(10000 x + 1)``;
* 187-frame patches (3 s), without overlap; the last incomplete patch is dropped.

The network (``build_musicnn`` in musicnn/models.py): batch-normalised input; a front end of
timbral convolutions (7 frames × 38 and × 67 mel bands, 204 filters each) and temporal ones
(128, 64, 32 frames × 1 band, 51 filters each), each max-pooled over frequency; a mid end of three
7-frame convolutions with 64 filters and residual connections; a back end of max and mean pooling
over time, a 200-unit dense layer (the *penultimate* embedding used for FAD) and 50 logits.
TensorFlow's batch normalisation (epsilon 1e-3) runs with its moving statistics (inference).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from engine.errors import RefmasterError
from engine.params import SAMPLE_RATE

#: musicnn's own signal setup (musicnn/configuration.py); not the chain's sample rate.
MUSICNN_RATE = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
#: Frames per patch: librosa.time_to_frames(3 s) + 1, the length musicnn was trained on.
PATCH_FRAMES = 187
BN_EPSILON = 1e-3  # tf.layers.batch_normalization's default

MTT_LABELS = ['guitar', 'classical', 'slow', 'techno', 'strings', 'drums', 'electronic', 'rock', 'fast', 'piano',
              'ambient', 'beat', 'violin', 'vocal', 'synth', 'female', 'indian', 'opera', 'male', 'singing',
              'vocals', 'no vocals', 'harpsichord', 'loud', 'quiet', 'flute', 'woman', 'male vocal', 'no vocal',
              'pop', 'soft', 'sitar', 'solo', 'man', 'classic', 'choir', 'voice', 'new age', 'dance',
              'male voice', 'female vocal', 'beats', 'harp', 'cello', 'no voice', 'weird', 'country', 'metal',
              'female voice', 'choral']
MSD_LABELS = ['rock', 'pop', 'alternative', 'indie', 'electronic', 'female vocalists', 'dance', '00s',
              'alternative rock', 'jazz', 'beautiful', 'metal', 'chillout', 'male vocalists', 'classic rock',
              'soul', 'indie rock', 'Mellow', 'electronica', '80s', 'folk', '90s', 'chill', 'instrumental', 'punk',
              'oldies', 'blues', 'hard rock', 'ambient', 'acoustic', 'experimental', 'female vocalist', 'guitar',
              'Hip-Hop', '70s', 'party', 'country', 'easy listening', 'sexy', 'catchy', 'funk', 'electro',
              'heavy metal', 'Progressive rock', '60s', 'rnb', 'indie pop', 'sad', 'House', 'happy']

#: The two shipped taggers: name -> (weights file, labels).
MODELS: Dict[str, Tuple[str, List[str]]] = {
    "MSD_musicnn": ("musicnn-msd.safetensors", MSD_LABELS),
    "MTT_musicnn": ("musicnn-mtt.safetensors", MTT_LABELS),
}
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"  # engine/weights, beside the mastering models


# ------------------------------------------------------------------------------ the mel front end

def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa ``htk=False``): linear to 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=4)
def slaney_mel_filterbank(sr: int = MUSICNN_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """``(n_mels, n_fft//2 + 1)`` float32 triangles on Slaney's mel scale from 0 Hz to sr/2, each
    scaled by 2 / its width in Hz (librosa.filters.mel with its defaults, rebuilt in NumPy)."""
    fft_hz = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2))
    widths = np.diff(mel_hz)
    ramps = mel_hz[:, None] - fft_hz[None, :]
    weights = np.zeros((n_mels, len(fft_hz)), dtype=np.float32)
    for i in range(n_mels):
        rising, falling = -ramps[i] / widths[i], ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]
    return weights


def log_mel(audio: torch.Tensor) -> torch.Tensor:
    """musicnn's input: ``(B, T)`` mono audio at 16 kHz -> ``(B, frames, 96)`` log-compressed mel
    power, ``frames = 1 + T // 256``. Differentiable (float16 rounding passes gradients straight)."""
    if audio.shape[-1] <= N_FFT // 2:
        raise RefmasterError(f"musicnn needs more than {N_FFT // 2} samples at {MUSICNN_RATE} Hz")
    window = torch.hann_window(N_FFT, periodic=True, dtype=audio.dtype, device=audio.device)
    spec = torch.stft(audio, N_FFT, HOP, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = spec.real.square() + spec.imag.square()                      # (B, 257, frames)
    fb = torch.from_numpy(slaney_mel_filterbank()).to(audio.device, audio.dtype)
    mel = torch.einsum("mf,bft->btm", fb, power).float()
    rounded = mel.half().float()
    mel = mel + (rounded - mel).detach()                                   # == rounded, exactly
    return torch.log10(10000.0 * mel + 1.0)


def patches(spectrogram: torch.Tensor, frames: int = PATCH_FRAMES) -> torch.Tensor:
    """``(frames_total, 96)`` -> ``(P, frames, 96)`` non-overlapping patches (musicnn's ``batch_data``
    without overlap); a spectrogram shorter than one patch is one shorter patch."""
    n = spectrogram.shape[0] // frames
    if n == 0:
        return spectrogram.unsqueeze(0)
    return spectrogram[: n * frames].reshape(n, frames, spectrogram.shape[1])


#: The original's resampler: ``librosa.load(sr=16000)`` runs resampy's "kaiser_best" (resampy 0.4:
#: a Kaiser-windowed sinc, 50 zero crossings, 2^13 table entries per crossing, cut off at 0.917 of
#: the new Nyquist). Rebuilt here as fixed polyphase kernels with the same weights, table
#: interpolation and truncated table step included, so a 44.1 kHz track reaches the network as it
#: reaches the original's.
_KAISER_ZEROS, _KAISER_PRECISION = 50, 2 ** 13
_KAISER_ROLLOFF, _KAISER_BETA = 0.9173473712608761, 12.984585247040012


@lru_cache(maxsize=1)
def _kaiser_sinc_table() -> np.ndarray:
    n = _KAISER_ZEROS * _KAISER_PRECISION
    sinc = _KAISER_ROLLOFF * np.sinc(_KAISER_ROLLOFF * np.linspace(0, _KAISER_ZEROS, n + 1))
    return np.kaiser(2 * n + 1, _KAISER_BETA)[n:] * sinc


@lru_cache(maxsize=4)
def _resample_kernel(orig: int, new: int) -> Tuple[torch.Tensor, int]:
    """Polyphase kernels ``(new, 1, taps)`` for orig -> new (reduced by their gcd) and the taps left
    of a block's first input sample: output ``new·j + p`` reads inputs ``orig·j − width …``."""
    ratio = new / orig
    scale = min(1.0, ratio)
    table = _kaiser_sinc_table() * scale
    delta = np.diff(table, append=table[-1])
    step = int(scale * _KAISER_PRECISION)
    width = len(table) // step + 2
    kernel = np.zeros((new, 2 * width + orig))

    def wing(p: int, frac: float, first: int, sign: int) -> None:
        index = frac * _KAISER_PRECISION
        offset = int(index)
        taps = offset + step * np.arange((len(table) - offset) // step)
        kernel[p, width + first + sign * np.arange(len(taps))] += table[taps] + (index - offset) * delta[taps]

    for p in range(new):
        time = p * orig / new
        n = int(time)
        frac = scale * (time - n)
        wing(p, frac, n, -1)               # inputs n, n−1, …
        wing(p, scale - frac, n + 1, +1)   # inputs n+1, n+2, …
    return torch.from_numpy(kernel).unsqueeze(1), width


def to_musicnn_rate(audio: torch.Tensor, rate: int = SAMPLE_RATE) -> torch.Tensor:
    """``(B, C, T)`` (or ``(B, T)``) audio at ``rate`` -> ``(B, T')`` mono at 16 kHz, differentiable
    (channel mean, as librosa.load's mono; band-limited polyphase resampling)."""
    mono = audio.mean(1) if audio.dim() == 3 else audio
    g = math.gcd(int(rate), MUSICNN_RATE)
    orig, new = int(rate) // g, MUSICNN_RATE // g
    if orig == new:
        return mono
    kernel, width = _resample_kernel(orig, new)
    T = mono.shape[-1]
    blocks = math.ceil(T / orig)
    x = F.pad(mono.unsqueeze(1), (width, width + blocks * orig - T))
    y = F.conv1d(x, kernel.to(mono.device, mono.dtype), stride=orig)   # (B, new, blocks)
    out = y.transpose(1, 2).reshape(mono.shape[0], -1)
    # resampy returns floor(T·new/orig) samples and librosa pads them with zeros to the ceiling
    return F.pad(out[:, : T * new // orig], (0, math.ceil(T * new / orig) - T * new // orig))


# ------------------------------------------------------------------------------ the network

class _PooledConv(nn.Module):
    """Convolution over (time, mel) -> ReLU -> batch norm -> max over the mel axis: ``(B, C, T)``."""

    def __init__(self, filters: int, kernel: Tuple[int, int], time_pad: Tuple[int, int]):
        super().__init__()
        self.time_pad = time_pad
        self.conv = nn.Conv2d(1, filters, kernel)
        self.bn = nn.BatchNorm2d(filters, eps=BN_EPSILON)

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # x: (B, 1, T, 96)
        h = self.bn(F.relu(self.conv(F.pad(x, (0, 0) + self.time_pad))))
        return h.amax(dim=3)


class _MidConv(nn.Module):
    """7-frame convolution over all channels -> ReLU -> batch norm (musicnn's mid end layer)."""

    def __init__(self, channels_in: int, filters: int):
        super().__init__()
        self.conv = nn.Conv1d(channels_in, filters, 7)
        self.bn = nn.BatchNorm1d(filters, eps=BN_EPSILON)

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (B, C, T)
        return self.bn(F.relu(self.conv(F.pad(x, (3, 3)))))


def _same(k: int) -> Tuple[int, int]:
    """TensorFlow's 'same' padding for an odd or even kernel at stride 1."""
    return ((k - 1) // 2, k - 1 - (k - 1) // 2)


class Musicnn(nn.Module):
    """The musicnn network on ``(B, frames, 96)`` log-mel patches: ``(logits (B, 50), penultimate (B, 200))``."""

    def __init__(self, classes: int = 50, midend_filters: int = 64, backend_units: int = 200):
        super().__init__()
        self.input_bn = nn.BatchNorm2d(1, eps=BN_EPSILON)
        timbral = int(1.6 * 128)
        temporal = int(1.6 * 32)
        self.frontend = nn.ModuleList([
            _PooledConv(timbral, (7, int(0.4 * N_MELS)), (3, 3)),
            _PooledConv(timbral, (7, int(0.7 * N_MELS)), (3, 3)),
            _PooledConv(temporal, (128, 1), _same(128)),
            _PooledConv(temporal, (64, 1), _same(64)),
            _PooledConv(temporal, (32, 1), _same(32)),
        ])
        front = 2 * timbral + 3 * temporal
        self.midend = nn.ModuleList([_MidConv(front, midend_filters), _MidConv(midend_filters, midend_filters),
                                     _MidConv(midend_filters, midend_filters)])
        pooled = 2 * (front + 3 * midend_filters)
        self.pool_bn = nn.BatchNorm1d(pooled, eps=BN_EPSILON)
        self.dense = nn.Linear(pooled, backend_units)
        self.dense_bn = nn.BatchNorm1d(backend_units, eps=BN_EPSILON)
        self.logits = nn.Linear(backend_units, classes)

    def forward(self, spectrogram: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.input_bn(spectrogram.unsqueeze(1))                          # (B, 1, T, 96)
        front = torch.cat([block(x) for block in self.frontend], dim=1)     # (B, 561, T)
        h1 = self.midend[0](front)
        h2 = self.midend[1](h1) + h1
        h3 = self.midend[2](h2) + h2
        features = torch.cat([front, h1, h2, h3], dim=1)                   # (B, 753, T)
        # TF concatenates [max, mean] on a last axis and flattens: the two interleave per channel
        pooled = torch.stack([features.amax(dim=2), features.mean(dim=2)], dim=2).flatten(1)
        penultimate = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))
        return self.logits(penultimate), penultimate


class MusicnnTagger:
    """One of :data:`MODELS` with its labels: tag probabilities and embeddings of audio."""

    def __init__(self, name: str, net: Musicnn, labels: List[str], meta: dict):
        self.name, self.net, self.labels, self.meta = name, net.eval(), list(labels), meta
        for p in self.net.parameters():
            p.requires_grad_(False)

    @classmethod
    def load(cls, name: str, path: Path = None) -> "MusicnnTagger":
        if name not in MODELS:
            raise RefmasterError(f"unknown tagger {name!r}; choose from {', '.join(MODELS)}")
        filename, labels = MODELS[name]
        path = Path(path) if path else WEIGHTS_DIR / filename
        if not path.exists():
            raise RefmasterError(f"{path}: musicnn weights not found (tools/musicnn_convert.py makes them)")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            net = Musicnn(classes=len(labels))
            net.load_state_dict(load_file(str(path)))
        except (OSError, ValueError, RuntimeError, SafetensorError) as e:
            raise RefmasterError(f"{path}: not usable musicnn weights ({str(e).splitlines()[0][:120]})") from None
        return cls(name, net, labels, meta)

    def index(self, tag: str) -> int:
        return self.labels.index(tag)

    def __call__(self, spectrogram: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(B, frames, 96)`` -> (probabilities (B, 50), penultimate (B, 200))."""
        logits, penultimate = self.net(spectrogram)
        return torch.sigmoid(logits), penultimate

    @torch.no_grad()
    def taggram(self, audio16k: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """musicnn's ``extractor`` on mono 16 kHz audio: per 3 s patch, (probabilities (P, 50),
        penultimate (P, 200)), float64 STFT and mel as in librosa."""
        spec = log_mel(torch.from_numpy(np.asarray(audio16k, np.float64)).unsqueeze(0))[0]
        probs, emb = self(patches(spec))
        return probs.double().numpy(), emb.double().numpy()

    def track(self, audio: np.ndarray, rate: int = SAMPLE_RATE) -> Tuple[np.ndarray, np.ndarray]:
        """A whole track ``(C, T)`` at ``rate``: :meth:`taggram` of its 16 kHz mono."""
        with torch.no_grad():
            mono = to_musicnn_rate(torch.from_numpy(np.asarray(audio, np.float32)).unsqueeze(0), rate)[0]
        return self.taggram(mono.numpy())


@lru_cache(maxsize=2)
def load_tagger(name: str) -> MusicnnTagger:
    """The shipped tagger ``name`` (loaded once per process)."""
    return MusicnnTagger.load(name)
