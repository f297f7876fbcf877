"""The Torch port of musicnn against the original (tests/data/musicnn_golden.json: tag probabilities
and penultimate embeddings that musicnn 0.1.0's own code, librosa 0.8.1 and TensorFlow 2.15 produced
on the clips of tools/musicnn_clips.py; the command is in the file)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tools/ is not an installed package
    sys.path.insert(0, str(REPO))

from engine.model import musicnn as M  # noqa: E402
from tools.musicnn_clips import golden_clips  # noqa: E402

GOLDEN = json.loads((REPO / "tests" / "data" / "musicnn_golden.json").read_text())
TOLERANCE = 1e-4          # tag probabilities (the bound)
EMBEDDING_TOLERANCE = 1e-3  # penultimate activations (of order 1)


@pytest.fixture(scope="module")
def clips():
    return golden_clips()


@pytest.mark.parametrize("model", list(M.MODELS))
def test_tag_probabilities_and_embeddings_equal_the_originals(model, clips):
    """Every clip (16 kHz mono, and 44.1 kHz stereo through the resampler), every 3 s patch."""
    tagger = M.load_tagger(model)
    assert set(GOLDEN["clips"]) == set(clips)
    for name, (rate, audio) in clips.items():
        probs, emb = tagger.taggram(audio) if rate == M.MUSICNN_RATE else tagger.track(audio, rate)
        want = GOLDEN["clips"][name][model]
        assert probs.shape == np.shape(want["taggram"]) == (2, 50), name
        assert np.abs(probs - np.array(want["taggram"])).max() <= TOLERANCE, name
        assert np.abs(emb - np.array(want["penultimate"])).max() <= EMBEDDING_TOLERANCE, name


def test_the_differentiable_float32_path_equals_the_original_and_has_gradients(clips):
    """What ITO uses: float32 throughout, 44.1 kHz stereo in, gradients back to the samples."""
    tagger = M.load_tagger("MTT_musicnn")
    rate, audio = clips["stereo44k"]
    x = torch.from_numpy(audio).unsqueeze(0).requires_grad_(True)
    probs, _ = tagger(M.patches(M.log_mel(M.to_musicnn_rate(x, rate))[0]))
    assert np.abs(probs.detach().numpy() - np.array(GOLDEN["clips"]["stereo44k"]["MTT_musicnn"]["taggram"])).max() <= TOLERANCE
    probs[:, tagger.index("drums")].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_the_taggers_tell_the_clips_apart(clips):
    """Not only equal to the original: the piano clip reads as piano, the drum loop as drums."""
    mtt = M.load_tagger("MTT_musicnn")
    top = {name: mtt.labels[int(np.argmax(mtt.taggram(a)[0].mean(0)))] for name, (r, a) in clips.items() if r == M.MUSICNN_RATE}
    assert top["piano"] == "piano" and top["drums"] == "drums"


def test_shipped_weights_say_where_they_come_from():
    for model, (filename, labels) in M.MODELS.items():
        t = M.load_tagger(model)
        assert t.meta["model"] == model and t.meta["licence"] == "ISC" and len(t.meta["wheel_sha256"]) == 64
        assert t.meta["labels"] == labels
        assert (M.WEIGHTS_DIR / filename).stat().st_size < 4_000_000
    assert "ISC" in (M.WEIGHTS_DIR / "MUSICNN_LICENSE.md").read_text()


def test_bad_input_is_one_line():
    from engine.errors import RefmasterError

    with pytest.raises(RefmasterError, match="musicnn needs more than"):
        M.log_mel(torch.zeros(1, 100))
    with pytest.raises(RefmasterError, match="unknown tagger 'VGG'; choose from MSD_musicnn, MTT_musicnn"):
        M.MusicnnTagger.load("VGG")
