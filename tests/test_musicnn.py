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


# ------------------------------------------------------------------------------ prompts

def test_prompt_words_parse_next_to_the_nudge_words():
    from engine.mastering.nudge import NUDGES, parse_nudges
    from engine.mastering.prompts import SYNONYMS, vocabulary

    assert parse_nudges("metal, brighter") == ["metal", "brighter"]
    assert parse_nudges("Hip-Hop Music") == ["hip-hop"]        # the paper's prompts, without case
    assert parse_nudges("Classical music; Metal Music") == ["classical", "metal"]
    assert parse_nudges("rap + hip hop") == ["hip-hop"]        # synonyms, each tag once
    assert parse_nudges("edm") == ["electronic", "dance"]
    vocab = vocabulary()
    for model, (_, labels) in M.MODELS.items():               # every tag of both vocabularies
        for label in labels:
            assert parse_nudges(label) == [label.lower()]
            assert vocab[label.lower()][0] in M.MODELS
    assert vocab["metal"] == ("MSD_musicnn", M.MSD_LABELS.index("metal"))
    assert vocab["classical"] == ("MTT_musicnn", M.MTT_LABELS.index("classical"))
    assert all(t in vocab for tags in SYNONYMS.values() for t in tags)
    assert not set(NUDGES) & set(vocab)


def test_an_unknown_word_is_one_line_listing_the_vocabulary():
    from engine.errors import RefmasterError
    from engine.mastering.nudge import parse_nudges

    with pytest.raises(RefmasterError) as e:
        parse_nudges("metal, polka")
    msg = str(e.value)
    assert "\n" not in msg and "'polka'" in msg and "'metal'" not in msg
    assert "nudges: brighter, darker" in msg and "hip-hop" in msg and "classical" in msg and "rap = hip-hop" in msg


def test_master_refuses_an_unknown_prompt_before_any_work(tmp_path):
    import subprocess

    import soundfile as sf

    from engine.model.synth import synth_song

    for name, seed in (("in.wav", 1), ("ref.wav", 2)):
        sf.write(tmp_path / name, synth_song(seed, 2.0).T, 44100)
    r = subprocess.run([sys.executable, "-m", "bridge.cli", "master", str(tmp_path / "in.wav"), "--ref",
                        str(tmp_path / "ref.wav"), "-o", str(tmp_path / "out.wav"), "--nudge", "brighter",
                        "--prompt", "hip-hop, polka"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "'polka'" in r.stderr and "tags:" in r.stderr
    assert "'hip-hop'" not in r.stderr and not (tmp_path / "out.wav").exists()


@pytest.fixture(scope="module")
def excerpt():
    """1.5 s of a synthesised song, ``(1, 2, T)``: one ITO excerpt (they are 2.5 s in `master`)."""
    from engine.model.synth import synth_song

    return torch.from_numpy(synth_song(5, 1.5)).unsqueeze(0)


def test_the_prompt_objective_is_the_taggers_loss_plus_the_anchor(excerpt):
    from engine.mastering.nudge import nudge_objective
    from engine.mastering.prompts import PROMPT_WEIGHT, prompt_loss

    objective = nudge_objective(excerpt, ["hip-hop"])
    with torch.no_grad():
        tag = prompt_loss(excerpt, ["hip-hop"])
        assert float(objective(excerpt)) == pytest.approx(PROMPT_WEIGHT * float(tag), rel=1e-5)  # anchor 0 here
        louder = excerpt * 2.0
        assert float(objective(louder)) > PROMPT_WEIGHT * float(prompt_loss(louder, ["hip-hop"])) + 1e-3  # anchored
        # with a feature word, the anchor aims at the changed features: not zero at the start
        both = nudge_objective(excerpt, ["hip-hop", "brighter"])
        assert float(both(excerpt)) > float(objective(excerpt)) + 1e-3
    assert 0 < float(tag) < 20


def test_prompt_ito_raises_the_probability_of_the_prompted_tag(excerpt):
    """A few ITO steps on Θ with the prompt objective: the tagger hears more of the tag."""
    from engine import params as P
    from engine.dsp.chain import render_chain
    from engine.mastering.ito import optimize_params
    from engine.mastering.nudge import nudge_objective
    from engine.mastering.prompts import tag_probabilities

    theta0 = P.ChainParams.default().to_tensors()[0]
    with torch.no_grad():
        start = render_chain(excerpt, theta0, check_params=False)
    r = optimize_params(excerpt, theta0, nudge_objective(start, ["metal"]), steps=4, lr=0.05, patience=4)
    with torch.no_grad():
        end = render_chain(excerpt, r.theta, check_params=False)
    assert min(r.losses) < r.losses[0]
    before, after = tag_probabilities(start, ["metal"])["metal"], tag_probabilities(end, ["metal"])["metal"]
    assert after > before * 1.05, (before, after)
