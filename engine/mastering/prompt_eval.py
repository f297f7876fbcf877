"""Do prompts move the master the way the ITO-Master paper reports? (`refmaster eval-prompts`)

The paper prompts ITO with "Classic Music", "Metal Music" and "Hip-Hop Music" and reports how three
features of the master move: classical gets the highest spectral centroid and crest factor, hip-hop
the lowest centroid and crest and the highest RMS. :func:`evaluate_prompts` repeats that on real
songs: each song (an excerpt from its middle) is mastered towards the next song without ITO (the
"before"), then once more with each prompt (the nudge phase with the tagger objective of
:mod:`engine.mastering.prompts`); it records the tagger's probability of the prompted tag before
and after and the three features (:func:`prompt_features`), and checks, per song, each of the
paper's five claims about the three prompted masters.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from engine.io.audio import load_audio
from engine.mastering.job import MasterSettings, master
from engine.mastering.prompts import tag_probabilities
from engine.model.networks import MasteringModel
from engine.params import SAMPLE_RATE

PAPER_PROMPTS = ("classical", "metal", "hip-hop")
_FRAME = 2048


def prompt_features(y: np.ndarray) -> Dict[str, float]:
    """The paper's three features of ``(2, T)`` audio: spectral centroid (Hz; the median over
    2048-sample Hann frames of the mid signal's magnitude-weighted mean frequency, silent frames
    left out), crest factor (dB, sample peak over RMS of both channels) and RMS (dBFS)."""
    y = np.asarray(y, dtype=np.float64)
    mid = y.mean(0)
    frames = mid[: len(mid) // _FRAME * _FRAME].reshape(-1, _FRAME) * np.hanning(_FRAME)
    mag = np.abs(np.fft.rfft(frames, axis=1))
    freqs = np.fft.rfftfreq(_FRAME, 1.0 / SAMPLE_RATE)
    energy = mag.sum(1)
    live = energy > 1e-9 * max(energy.max(), 1e-30)
    centroid = float(np.median((mag[live] * freqs).sum(1) / energy[live])) if live.any() else math.nan
    rms = float(np.sqrt(np.mean(y ** 2)))
    return {"centroid_hz": centroid, "crest_db": 20 * math.log10(np.abs(y).max() / max(rms, 1e-12)),
            "rms_db": 20 * math.log10(max(rms, 1e-12))}


#: The paper's claims about the three prompted masters of one song: (name, prompt, feature, highest?).
PAPER_CLAIMS = (
    ("classical: highest centroid", "classical", "centroid_hz", True),
    ("classical: highest crest", "classical", "crest_db", True),
    ("hip-hop: lowest centroid", "hip-hop", "centroid_hz", False),
    ("hip-hop: lowest crest", "hip-hop", "crest_db", False),
    ("hip-hop: highest RMS", "hip-hop", "rms_db", True),
)


def check_claims(after: Dict[str, Dict[str, float]]) -> Dict[str, bool]:
    """Each of :data:`PAPER_CLAIMS` on ``{prompt: prompt_features(master)}`` of one song."""
    out = {}
    for name, prompt, feature, highest in PAPER_CLAIMS:
        others = [after[p][feature] for p in after if p != prompt]
        mine = after[prompt][feature]
        out[name] = bool(all(mine > o for o in others) if highest else all(mine < o for o in others))
    return out


def _middle(path: Path, seconds: float) -> np.ndarray:
    a = load_audio(path).audio
    n = int(seconds * SAMPLE_RATE)
    s = max(0, a.shape[1] // 2 - n // 2)
    return a[:, s : s + n]


def evaluate_prompts(model: MasteringModel, files: Sequence[Path], prompts: Sequence[str] = PAPER_PROMPTS,
                     seconds: float = 10.0, steps: int = 50,
                     on_master: Optional[Callable[[str, str, np.ndarray], None]] = None, progress: bool = True) -> dict:
    """Each song before and after each prompt (see the module docstring). ``on_master(song, prompt or
    "before", audio)`` sees every master (plots, listening)."""
    if len(files) < 2:
        raise FileNotFoundError("need at least two songs (each is mastered towards the next)")
    audio = [(Path(f).name, _middle(Path(f), seconds)) for f in files]
    songs: List[dict] = []
    bar = tqdm(total=len(audio) * (1 + len(prompts)), desc="eval-prompts", unit="master", disable=not progress)
    for i, (name, x) in enumerate(audio):
        ref = audio[(i + 1) % len(audio)][1]
        before = master(model, x, ref, MasterSettings(ito=False)).output
        bar.update(1)
        if on_master:
            on_master(name, "before", before)
        p_before = tag_probabilities(torch.from_numpy(before).unsqueeze(0), prompts)
        row = {"song": name, "reference": audio[(i + 1) % len(audio)][0], "before": prompt_features(before),
               "p_before": p_before, "after": {}, "p_after": {}}
        for prompt in prompts:
            out = master(model, x, ref, MasterSettings(ito=False, nudge=prompt, nudge_steps=steps)).output
            if on_master:
                on_master(name, prompt, out)
            bar.update(1)
            row["after"][prompt] = prompt_features(out)
            row["p_after"][prompt] = tag_probabilities(torch.from_numpy(out).unsqueeze(0), [prompt])[prompt]
        row["probability_up"] = {p: row["p_after"][p] > row["p_before"][p] for p in prompts}
        if set(PAPER_PROMPTS) <= set(prompts):
            row["claims"] = check_claims({p: row["after"][p] for p in PAPER_PROMPTS})
        songs.append(row)
    bar.close()
    result = {"songs": songs, "seconds": seconds, "steps": steps, "prompts": list(prompts),
              "probability_up": {p: int(sum(r["probability_up"][p] for r in songs)) for p in prompts}}
    if songs and "claims" in songs[0]:
        result["claims"] = {c[0]: int(sum(r["claims"][c[0]] for r in songs)) for c in PAPER_CLAIMS}
    return result
