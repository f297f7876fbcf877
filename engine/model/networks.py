"""The networks: reference encoder Φ, white-box converter Ψ, black-box converter.

ITO-Master's shape, scaled for a CPU (SPEC.md, "Models"; sizes in :class:`ModelConfig`):
* :class:`ReferenceEncoder` (Φ): stereo audio of any length -> z_ref (2048-d). The spectral
  front end (:mod:`engine.model.frontend`), a stack of dilated residual 1-D convolutions over time,
  mean+std pooling over time (variable length), a linear map to the embedding.
* :class:`WhiteBoxConverter` (Ψ): a TCN over the input's front-end frames with FiLM conditioning
  on z_ref in every block; the outputs are averaged over time and squashed by a sigmoid into the
  46 normalised parameters, which :func:`engine.dsp.chain.render_chain` renders. Its output bias
  starts at the neutral defaults, so an untrained converter is (almost) a bypass.
* :class:`BlackBoxConverter`: a waveform TCN with FiLM on z_ref in every block. Scaled for a
  CPU the Demucs/Conv-TasNet way: a learned strided encoder (8x, 64 channels) turns the
  waveform into a latent sequence at 5.5 kHz, the dilated TCN runs there (receptive field
  about 0.19 s, enough for compressor-like behaviour), and a learned transposed convolution
  writes the output waveform, added to the input (so it starts as identity). A TCN of the
  paper's size at 44.1 kHz costs about 20x more here. It has no parameters to show; it is the
  paper's other arm.

:class:`MasteringModel` bundles Φ with one converter, and saves/loads both (safetensors + a JSON
config) without any network access.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from engine import params as P
from engine.dsp.chain import render_chain
from engine.errors import RefmasterError
from engine.io.atomic import atomic_path
from engine.model.frontend import FEATURES, spectral_features

MODEL_KINDS = ("white-box", "black-box")
#: Where the shipped weights live (see MODEL_CARD.md there).
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"  # engine/weights


def default_weights(kind: str) -> Path:
    """Path of the shipped weights for ``kind`` ("white-box" or "black-box")."""
    return WEIGHTS_DIR / f"{kind}.safetensors"


def load_model(kind: str, weights=None) -> "MasteringModel":
    """The shipped model of ``kind`` (or the weights file given), loaded without network access."""
    return MasteringModel.load(Path(weights) if weights else default_weights(kind))


@dataclass
class ModelConfig:
    kind: str = "white-box"
    embed_dim: int = 2048
    enc_channels: int = 256
    enc_blocks: int = 4
    conv_channels: int = 128      # white-box TCN width
    conv_blocks: int = 6
    wave_channels: int = 64       # black-box TCN width
    wave_blocks: int = 9
    wave_stride: int = 8          # black-box encoder/decoder stride

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class FiLM(nn.Module):
    """Feature-wise affine conditioning: ``h * (1 + γ(z)) + β(z)``, starting as identity."""

    def __init__(self, embed_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(embed_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(z).unsqueeze(-1).chunk(2, dim=1)
        return h * (1.0 + gamma) + beta


class ResBlock(nn.Module):
    """Dilated 1-D convolution, GELU, optional FiLM, residual; 'same' padding (non-causal)."""

    def __init__(self, channels: int, kernel: int, dilation: int, embed_dim: Optional[int] = None):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)
        self.mix = nn.Conv1d(channels, channels, 1)
        self.film = FiLM(embed_dim, channels) if embed_dim else None
        nn.init.zeros_(self.mix.bias)
        with torch.no_grad():
            self.mix.weight.mul_(0.5)

    def forward(self, h: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        u = F.gelu(self.conv(h))
        if self.film is not None:
            u = self.film(u, z)
        return h + self.mix(u)


class ReferenceEncoder(nn.Module):
    """Φ: ``(B, 2, T)`` audio -> ``(B, embed_dim)`` z_ref."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.enc_channels
        self.inp = nn.Conv1d(FEATURES, c, 1)
        self.blocks = nn.ModuleList([ResBlock(c, 3, 2 ** i) for i in range(cfg.enc_blocks)])
        self.out = nn.Linear(2 * c, cfg.embed_dim)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.embed_features(spectral_features(audio))

    def embed_features(self, feats: torch.Tensor) -> torch.Tensor:
        h = self.inp(feats)
        for b in self.blocks:
            h = b(h)
        stats = torch.cat([h.mean(-1), h.std(-1, unbiased=False) if h.shape[-1] > 1 else torch.zeros_like(h[..., 0])], 1)
        return self.out(stats)


def _neutral_logits() -> torch.Tensor:
    """Logits whose sigmoid is each parameter's default (kept inside 2%…98%)."""
    n = P.normalize_tensor(P.default_tensor(torch.float64)).clamp(0.02, 0.98)
    return torch.log(n / (1 - n)).float()


class WhiteBoxConverter(nn.Module):
    """Ψ: (input audio, z_ref) -> 46 normalised parameters (and, via the chain, audio)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.conv_channels
        self.inp = nn.Conv1d(FEATURES, c, 1)
        self.blocks = nn.ModuleList([ResBlock(c, 3, 2 ** i, cfg.embed_dim) for i in range(cfg.conv_blocks)])
        self.head = nn.Conv1d(c, P.NUM_PARAMS, 1)
        nn.init.normal_(self.head.weight, std=1e-3)
        with torch.no_grad():
            self.head.bias.copy_(_neutral_logits())

    def predict_normalized(self, audio: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``(B, 2, T)``, ``(B, E)`` -> ``(B, 46)`` in (0, 1)."""
        return self.predict_from_features(spectral_features(audio), z)

    def predict_from_features(self, feats: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = self.inp(feats)
        for b in self.blocks:
            h = b(h, z)
        return torch.sigmoid(self.head(h).mean(-1))

    def forward(self, audio: torch.Tensor, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(rendered audio (B, 2, T), real-unit parameters (B, 46))``."""
        theta = P.denormalize_tensor(self.predict_normalized(audio, z))
        return render_chain(audio, theta, check_params=False), theta


class BlackBoxConverter(nn.Module):
    """Waveform TCN conditioned on z_ref: ``(B, 2, T)``, ``(B, E)`` -> ``(B, 2, T)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c, st = cfg.wave_channels, cfg.wave_stride
        self.stride = st
        self.encoder = nn.Conv1d(2, c, 2 * st, stride=st)
        self.blocks = nn.ModuleList([ResBlock(c, 3, 2 ** i, cfg.embed_dim) for i in range(cfg.wave_blocks)])
        self.decoder = nn.ConvTranspose1d(c, 2, 2 * st, stride=st)
        nn.init.zeros_(self.decoder.weight)
        nn.init.zeros_(self.decoder.bias)

    def receptive_field(self) -> int:
        """In samples at 44.1 kHz."""
        return self.stride * (1 + sum(b.conv.dilation[0] * 2 for b in self.blocks)) + 2 * self.stride

    def forward(self, audio: torch.Tensor, z: torch.Tensor) -> Tuple[torch.Tensor, None]:
        T = audio.shape[-1]
        h = self.encoder(F.pad(audio, (self.stride // 2, 2 * self.stride)))
        for b in self.blocks:
            h = b(h, z)
        return audio + self.decoder(h)[..., self.stride // 2 : self.stride // 2 + T], None


class MasteringModel(nn.Module):
    """Φ plus one converter: ``model(x_in, reference) -> (y, θ or None)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {cfg.kind!r}")
        self.cfg = cfg
        self.encoder = ReferenceEncoder(cfg)
        self.converter = WhiteBoxConverter(cfg) if cfg.kind == "white-box" else BlackBoxConverter(cfg)

    @property
    def kind(self) -> str:
        return self.cfg.kind

    def embed(self, reference: torch.Tensor) -> torch.Tensor:
        return self.encoder(reference)

    def forward(self, x_in: torch.Tensor, reference: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None):
        if z is None:
            z = self.embed(reference)
        return self.converter(x_in, z)

    def num_parameters(self) -> Dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())
        return {"encoder": count(self.encoder), "converter": count(self.converter), "total": count(self)}

    # -- persistence (safetensors + JSON config, no pickle, no network)
    def save(self, path: Path, meta: Optional[dict] = None, dtype: torch.dtype = torch.float32) -> None:
        """Weights + config + ``meta`` as one safetensors file. ``dtype=torch.float16`` halves the
        file (the shipped weights: both models must fit in 40 MB); :meth:`load` always returns float32."""

        path = Path(path)
        tensors = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
                   for k, v in self.state_dict().items()}
        info = {"config": self.cfg.to_json(), "meta": json.dumps(meta or {})}
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata=info)

    @classmethod
    def load(cls, path: Path, device="cpu") -> "MasteringModel":
        path = Path(path)
        if not path.exists():
            raise RefmasterError(f"{path}: model weights not found")
        try:
            with safe_open(str(path), framework="pt") as f:
                info = f.metadata() or {}
            cfg = ModelConfig(**json.loads(info["config"]))
            model = cls(cfg)
            model.load_state_dict(load_file(str(path), device=str(device)))
        except (OSError, KeyError, ValueError, RuntimeError, TypeError, SafetensorError) as e:
            raise RefmasterError(f"{path}: not a usable refmaster model ({str(e).splitlines()[0][:120]})") from None
        model.meta = json.loads(info.get("meta", "{}"))
        return model.to(device).eval()
