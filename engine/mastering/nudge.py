"""Nudges: "brighter, wider, punchier" as targets for the same ITO.

A nudge word is a change of the Audio Features *relative to the current output*: we take the
output's features, change the ones the word is about, and run ITO towards those target features
with a loss that anchors everything else (so "wider" does not also make it louder). Words
combine ("brighter, wider"). Genre and mood prompts ("hip-hop", "metal, brighter": any tag of
musicnn's two vocabularies, :mod:`engine.mastering.prompts`) go in the same list: they add the
tagger's ``−log p(tag)`` to the same objective, and the feature term, aimed at the current output's
features, is what keeps the master anchored.

Vocabulary (dB changes apply to the bark spectrum of mid and side):
=============  ==========================================================
brighter       +3 dB above 3 kHz (ramping in from 1.5 kHz)
darker         −3 dB above 3 kHz
more air       +4 dB above 10 kHz
warmer         +2 dB from 120 to 500 Hz, −1 dB above 5 kHz
less harsh     −3 dB from 2 to 6 kHz
wider          side/mid energy × 1.6
narrower       side/mid energy × 0.6
louder         +2 dB everywhere (RMS and spectrum)
quieter        −2 dB everywhere
punchier       crest factor +2 dB
smoother       crest factor −2 dB
=============  ==========================================================
"""

from __future__ import annotations

import math
import re
from typing import Callable, Dict, List

import torch

from engine.analysis.features import AudioFeatureLoss, audio_features, bark_band_centres
from engine.errors import RefmasterError
from engine.mastering.ito import join_excerpts
from engine.mastering.prompts import PROMPT_WEIGHT, describe_vocabulary, prompt_loss, resolve

_LN_DB = math.log(10.0) / 20.0  # dB -> natural-log magnitude


def _band_ramp(lo: float, hi: float, ramp_from: float = None) -> torch.Tensor:
    c = torch.tensor(bark_band_centres(), dtype=torch.float64)
    w = ((c >= lo) & (c <= hi)).double()
    if ramp_from is not None:
        w = torch.where((c >= ramp_from) & (c < lo), torch.log(c / ramp_from) / math.log(lo / ramp_from), w)
    return w


def _spectral(db: float, lo: float, hi: float, ramp_from: float = None):
    def apply(f: Dict[str, torch.Tensor]) -> None:
        shape = _band_ramp(lo, hi, ramp_from).to(f["bark"].dtype) * db * _LN_DB
        f["bark"] = f["bark"] + shape

    return apply


def _level(db: float):
    def apply(f: Dict[str, torch.Tensor]) -> None:
        f["bark"] = f["bark"] + db * _LN_DB
        f["rms"] = f["rms"] * 10 ** (db / 20)

    return apply


def _width(factor: float):
    def apply(f):
        f["width"] = f["width"] * factor

    return apply


def _crest(db: float):
    def apply(f):
        f["crest"] = f["crest"] + db

    return apply


def _combine(*fns):
    def apply(f):
        for fn in fns:
            fn(f)

    return apply


NUDGES: Dict[str, Callable[[Dict[str, torch.Tensor]], None]] = {
    "brighter": _spectral(3.0, 3000, 22050, ramp_from=1500),
    "darker": _spectral(-3.0, 3000, 22050, ramp_from=1500),
    "more air": _spectral(4.0, 10000, 22050, ramp_from=6000),
    "warmer": _combine(_spectral(2.0, 120, 500), _spectral(-1.0, 5000, 22050)),
    "less harsh": _spectral(-3.0, 2000, 6000),
    "wider": _width(1.6),
    "narrower": _width(0.6),
    "louder": _level(2.0),
    "quieter": _level(-2.0),
    "punchier": _crest(2.0),
    "smoother": _crest(-2.0),
}

#: Weights of the nudge loss: every feature matters, so the ones a word does not name stay put.
NUDGE_WEIGHTS = {"rms": 10.0, "crest": 0.05, "width": 20.0, "imbalance": 1.0, "bark": 1.0}


def parse_nudges(text: str) -> List[str]:
    """``"metal, brighter"`` -> ``["metal", "brighter"]``: nudge words and prompt tags (synonyms
    resolved to their tags, each word once); unknown words are one error line naming them and
    listing the whole vocabulary."""
    words = [re.sub(r"\s+", " ", w.strip().lower()) for w in re.split(r"[,;+]", text) if w.strip()]
    out: List[str] = []
    unknown = []
    for w in words:
        found = [w] if w in NUDGES else resolve(w)
        unknown += [] if found else [w]
        out += [f for f in found if f not in out]
    if unknown or not words:
        raise RefmasterError(f"unknown nudge or prompt {', '.join(repr(w) for w in unknown) or repr(text)}; "
                             f"nudges: {', '.join(NUDGES)}; {describe_vocabulary()}")
    return out


def nudge_targets(current: torch.Tensor, words: List[str]) -> Dict[str, torch.Tensor]:
    """Target features: the current output's ``(1, 2, T)`` features changed by each word."""
    with torch.no_grad():
        f = {k: v.clone() for k, v in audio_features(current).items()}
    for w in words:
        NUDGES[w](f)
    return f


def nudge_objective(current: torch.Tensor, words: List[str]):
    """An ITO objective pulling the output's features to :func:`nudge_targets` of the nudge words,
    plus :data:`~engine.mastering.prompts.PROMPT_WEIGHT` × the tagger's loss of the prompt tags."""

    tags = [w for w in words if w not in NUDGES]
    targets = nudge_targets(current, [w for w in words if w in NUDGES])
    loss = AudioFeatureLoss(NUDGE_WEIGHTS)

    def objective(y: torch.Tensor) -> torch.Tensor:
        total = loss(join_excerpts(y), ref_features=targets)[0]
        return total + PROMPT_WEIGHT * prompt_loss(y, tags) if tags else total

    return objective


# ------------------------------------------------------------------------------ did it move?

def _band_db(f: Dict[str, torch.Tensor], lo: float, hi: float = 22050.0) -> float:
    """Mean level (dB) of the mid channel's bark bands with centres in ``[lo, hi]``."""
    c = bark_band_centres()
    sel = torch.tensor((c >= lo) & (c <= hi))
    return float(f["bark"][0, 0, sel].mean()) / _LN_DB


#: For each word, how far the master moved the way the word asks (> 0: the right way), from the
#: Audio Features before and after, on the bands of the word's target (spectral words: mid, dB).
NUDGE_CHECKS: Dict[str, Callable[[Dict[str, torch.Tensor], Dict[str, torch.Tensor]], float]] = {
    "brighter": lambda a, b: _band_db(b, 4000) - _band_db(a, 4000),
    "darker": lambda a, b: _band_db(a, 4000) - _band_db(b, 4000),
    "more air": lambda a, b: _band_db(b, 12000) - _band_db(a, 12000),
    "warmer": lambda a, b: (_band_db(b, 120, 500) - _band_db(b, 5000)) - (_band_db(a, 120, 500) - _band_db(a, 5000)),
    "less harsh": lambda a, b: _band_db(a, 2000, 6000) - _band_db(b, 2000, 6000),
    "wider": lambda a, b: float(b["width"] - a["width"]),
    "narrower": lambda a, b: float(a["width"] - b["width"]),
    "louder": lambda a, b: float(b["rms"].mean() - a["rms"].mean()),
    "quieter": lambda a, b: float(a["rms"].mean() - b["rms"].mean()),
    "punchier": lambda a, b: float(b["crest"].mean() - a["crest"].mean()),
    "smoother": lambda a, b: float(a["crest"].mean() - b["crest"].mean()),
}
