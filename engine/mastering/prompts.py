"""Genre and mood prompts: "hip-hop", "metal", "classical music" as an ITO objective through musicnn.

The ITO-Master paper steers ITO with text through CLAP; no CLAP model can be had here, but musicnn
(:mod:`engine.model.musicnn`, two pretrained taggers) can: a prompt is any tag of its two
vocabularies (MagnaTagATune's and the Million Song Dataset's 50 each, matched without case and
without a trailing "music", so the paper's "Metal Music" works) or one of :data:`SYNONYMS`. A tag
that both vocabularies have ("rock", "metal", "electronic", …) is read from ``MSD_musicnn`` (last.fm
tags of the larger collection); running both would double the cost of every ITO step.

The objective (:func:`prompt_loss`, added to the nudge objective in
:func:`engine.mastering.nudge.nudge_objective`): for each optimised excerpt, the 44.1 kHz stereo
output is taken to musicnn's 16 kHz mono and log-mel input (differentiably), and the loss is the
mean over excerpts and prompted tags of ``−log p(tag)`` (``softplus(−logit)``), times
:data:`PROMPT_WEIGHT`. What keeps the master anchored is the nudge's Audio Feature term: the
distance of the output's RMS, crest factor, width, balance and bark spectrum to those of the master
before the prompt (or to the changed ones, when feature words such as "brighter" come along), with
the nudge weights. The tagger pulls the sound towards the genre; every dB it moves costs in the
anchor term, so it moves only where the tag gains more than the anchor loses. And ITO moves the
embedding z_ref through the frozen Ψ (or Θ within its ranges), so the result is always one of the
chain's masters, never a re-synthesis.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from engine.model.musicnn import MODELS, load_tagger, log_mel, patches, to_musicnn_rate
from engine.params import SAMPLE_RATE

#: Weight of the tagger term against the nudge's Audio Feature (anchor) term.
PROMPT_WEIGHT = 1.0

#: Words that are not tags but mean some: word -> tags (keys of :func:`vocabulary`).
SYNONYMS: Dict[str, Tuple[str, ...]] = {
    "hip hop": ("hip-hop",), "hiphop": ("hip-hop",), "rap": ("hip-hop",),
    "r&b": ("rnb",), "r'n'b": ("rnb",),
    "edm": ("electronic", "dance"),
    "orchestral": ("classical", "strings"),
    "chill out": ("chillout",),
    "heavy": ("heavy metal",),
}


def _key(label: str) -> str:
    return label.lower()


#: The tagger that answers for a tag both vocabularies have.
PREFERRED_TAGGER = "MSD_musicnn"


@lru_cache(maxsize=1)
def vocabulary() -> Dict[str, Tuple[str, int]]:
    """``{tag: (tagger name, output index)}`` over both taggers, tags in lower case."""
    vocab: Dict[str, Tuple[str, int]] = {}
    for model in sorted(MODELS, key=lambda m: m == PREFERRED_TAGGER):  # the preferred one last: it overrides
        for i, label in enumerate(MODELS[model][1]):
            vocab[_key(label)] = (model, i)
    return vocab


def resolve(word: str) -> List[str]:
    """The tags a prompt word asks for (``[]`` when it is not a prompt word)."""
    w = re.sub(r"\s+", " ", word.strip().lower())
    vocab = vocabulary()
    for candidate in (w, re.sub(r" music$", "", w)):
        if candidate in vocab:
            return [candidate]
        if candidate in SYNONYMS:
            return list(SYNONYMS[candidate])
    return []


def describe_vocabulary() -> str:
    """One line: every tag, then the synonyms."""
    return (f"tags: {', '.join(sorted(vocabulary()))}; synonyms: "
            + ", ".join(f"{w} = {'+'.join(t)}" for w, t in SYNONYMS.items()))


def tagger_logits(y: torch.Tensor, models: Sequence[str]) -> Dict[str, torch.Tensor]:
    """``(K, 2, n)`` audio at the chain's rate -> ``{tagger: (K, 50) logits}``, differentiable
    (each excerpt is one patch: 2.5 s excerpts are 157 frames, musicnn's patches 187)."""
    spec = log_mel(to_musicnn_rate(y.float(), SAMPLE_RATE))
    return {m: load_tagger(m).net(spec)[0] for m in models}


def prompt_loss(y: torch.Tensor, tags: Sequence[str]) -> torch.Tensor:
    """Mean over excerpts and tags of ``−log p(tag)`` (``softplus(−logit)``: no overflow at p ≈ 0)."""
    vocab = vocabulary()
    pairs = [vocab[t] for t in tags]
    logits = tagger_logits(y, sorted({m for m, _ in pairs}))
    return torch.stack([F.softplus(-logits[m][:, i]) for m, i in pairs], dim=1).mean()


@torch.no_grad()
def tag_probabilities(audio: torch.Tensor, tags: Sequence[str]) -> Dict[str, float]:
    """``{tag: p}`` of ``(B, 2, T)`` audio at the chain's rate: the tag's probability averaged over the
    batch and its 3 s patches (musicnn's ``top_tags`` averages the same way)."""
    vocab = vocabulary()
    spec = log_mel(to_musicnn_rate(audio.float(), SAMPLE_RATE))
    chunks = torch.cat([patches(s) for s in spec])
    probs = {m: torch.sigmoid(load_tagger(m).net(chunks)[0]).mean(0) for m in sorted({vocab[t][0] for t in tags})}
    return {t: float(probs[vocab[t][0]][vocab[t][1]]) for t in tags}
