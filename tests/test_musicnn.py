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


@pytest.mark.slow
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


@pytest.mark.slow
def test_osc_nudge_takes_a_prompt_and_refuses_an_unknown_word_in_one_line(tmp_path):
    """`/refmaster/nudge "hip-hop"` through the real serve handlers: the master moves; "polka" is an error reply."""
    import dataclasses

    from pythonosc.udp_client import SimpleUDPClient

    from bridge.cli.serve import ito_handlers
    from bridge.osc import space as A
    from bridge.osc.server import OscServer
    from bridge.osc.state import BridgeState
    from engine import params as P
    from engine.model.synth import synth_song
    from presets import Preset, PresetStore
    from test_osc_ito_engine import HOST, Collector, _reply_to

    wait = 600.0  # only a guard against a hang: a master with a prompt step takes seconds, minutes on a busy machine
    song, reference = synth_song(21, 2.0), synth_song(22, 2.0)
    store = PresetStore(tmp_path / "presets")
    preset = Preset.new("live", P.ChainParams.default())
    store.save(preset)
    state = BridgeState(preset.chain)
    _, run_nudge = ito_handlers(preset, song, reference)
    asked = []

    def nudge(req):
        asked.append(req.words)
        return run_nudge(dataclasses.replace(req, steps=2))

    sub = Collector()
    server = OscServer(state, HOST, 0, store=store, preset=preset, nudge_handler=nudge, song=song,
                       reference=reference, log=lambda m: None).start()
    client = SimpleUDPClient(HOST, server.address[1])
    try:
        client.send_message(A.SUBSCRIBE, [HOST, sub.port])
        sub.wait_for(lambda ms: any(a == A.DUMP_DONE for a, _ in ms), 10)
        before = state.snapshot()
        client.send_message(A.NUDGE, ["Hip-Hop Music"])
        kind, args = sub.wait_for(_reply_to(A.NUDGE), wait)
        assert kind == A.OK, args
        after = state.snapshot()
        assert any(abs(after.values[k] - before.values[k]) > 1e-6 for k in P.PARAM_KEYS)
        assert server.preset.ito["settings"]["nudge"] == "hip-hop"  # the tag, resolved, is what ITO ran on
        n = len(sub)
        client.send_message(A.NUDGE, ["metal, polka"])
        kind, args = sub.wait_for(lambda ms: _reply_to(A.NUDGE)(ms[n:]), wait)
        assert kind == A.ERROR and "'polka'" in args[-1] and "tags:" in args[-1] and "\n" not in args[-1]
        assert state.snapshot().values == after.values  # refused: nothing changed
        assert asked == ["Hip-Hop Music", "metal, polka"]
    finally:
        server.close()
        sub.close()


# ------------------------------------------------------------------------------ FAD_musicnn

def test_frechet_distance_is_the_distance_of_the_two_gaussians():
    from engine.mastering.naturalness import frechet_distance, statistics

    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    want = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)  # diagonal Σ: closed form
    assert frechet_distance((mu_a, np.diag(var_a), 0), (mu_b, np.diag(var_b), 0)) == pytest.approx(want, rel=1e-12)
    rng = np.random.default_rng(0)
    a = statistics([rng.standard_normal((40, 200))])             # fewer patches than dimensions: singular Σ
    b = statistics([rng.standard_normal((30, 200)) * 2 + 0.5])
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-4)     # of tr Σ ≈ 200
    assert np.isfinite(frechet_distance(a, b)) and frechet_distance(a, b) > frechet_distance(a, a) + 100
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-7)


def _songs_folder(path, seconds=7.0):
    import soundfile as sf

    from engine.model.synth import synth_song

    path.mkdir()
    for seed in (61, 62, 63):
        sf.write(path / f"song{seed}.wav", synth_song(seed, seconds).T, 44100)
    return path


def test_eval_shows_fad_musicnn_next_to_af(tmp_path, capsys):
    from bridge.cli import main
    from engine.mastering.evaluation import real_pairs
    from engine.mastering.naturalness import embeddings, frechet_distance, real_music_statistics, statistics
    from engine.model.dataset import list_songs

    folder = _songs_folder(tmp_path / "songs")
    argv = ["eval", str(folder), "--pairs", "2", "--seconds", "6.5", "--seed", "3", "--systems", "input"]
    assert main(argv + ["--fad", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    # the untouched inputs of the pairs against the folder's real songs, by the definition
    pairs = real_pairs(folder, 2, 6.5, 3)
    want = frechet_distance(statistics(embeddings(p.input) for p in pairs), real_music_statistics(list_songs(folder)))
    assert r["summary"]["input"]["fad_musicnn"] == pytest.approx(want, rel=1e-6)
    assert main(argv + ["--fad"]) == 0
    head, row = [l.split() for l in capsys.readouterr().out.splitlines()[1:3]]
    assert head[:3] == ["system", "AF", "FAD"] and float(row[2]) == pytest.approx(want, abs=0.006)
    assert main(argv[:3] + ["1", "--seconds", "4", "--fad"]) == 2   # one 3 s patch: refused before any work
    assert "at least two 3 s patches" in capsys.readouterr().err
    assert main(argv) == 0                               # a folder: FAD only when asked
    assert "FAD" not in capsys.readouterr().out.splitlines()[1]
    # the embeddings are MSD_musicnn's penultimate layer, as the original computes it
    rate, clip = golden_clips()["stereo44k"]
    got = embeddings(clip, rate)
    assert np.abs(got - np.array(GOLDEN["clips"]["stereo44k"]["MSD_musicnn"]["penultimate"])).max() <= EMBEDDING_TOLERANCE


@pytest.mark.slow
def test_eval_ito_curve_prints_af_and_fad_after_each_step_count(tmp_path, capsys, monkeypatch):
    import engine.mastering.ito_curve as curve
    from bridge.cli import main

    monkeypatch.setattr(curve, "CURVE_STEPS", (0, 2))    # the real curve is 0, 10, 25, 50, 100
    folder = _songs_folder(tmp_path / "songs")
    assert main(["eval", str(folder), "--ito-curve", "--pairs", "1", "--seconds", "6.5", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [c["steps"] for c in r["curve"]] == [0, 2] and len(r["rows"]) == 2
    none, two = r["rows"]
    assert none["steps_run"] == 0 and 1 <= two["steps_run"] <= 2
    assert all(np.isfinite(c["af"]) and np.isfinite(c["fad_musicnn"]) for c in r["curve"])
    assert r["curve"][0]["fad_musicnn"] != r["curve"][1]["fad_musicnn"]  # ITO changed the master


# ------------------------------------------------------------------------------ eval-prompts

def test_the_papers_three_features_by_their_definitions():
    from engine.mastering.prompt_eval import prompt_features

    t = np.arange(44100 * 2) / 44100
    tone = 0.5 * np.sin(2 * np.pi * 1000.0 * t)
    f = prompt_features(np.stack([tone, tone]))
    assert f["centroid_hz"] == pytest.approx(1000.0, rel=0.02)
    assert f["crest_db"] == pytest.approx(20 * np.log10(np.sqrt(2)), abs=0.01)   # a sine: peak/RMS = √2
    assert f["rms_db"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.01)
    bright = prompt_features(np.stack([tone, tone]) + 0.2 * np.sin(2 * np.pi * 6000.0 * t))
    assert bright["centroid_hz"] == pytest.approx((0.5 * 1000 + 0.2 * 6000) / 0.7, rel=0.02)  # magnitude-weighted


def test_the_papers_claims_are_checked_among_the_three_prompted_masters():
    from engine.mastering.prompt_eval import PAPER_CLAIMS, check_claims

    after = {"classical": {"centroid_hz": 3000, "crest_db": 14, "rms_db": -20},
             "metal": {"centroid_hz": 2500, "crest_db": 10, "rms_db": -14},
             "hip-hop": {"centroid_hz": 1500, "crest_db": 9, "rms_db": -12}}
    assert check_claims(after) == {c[0]: True for c in PAPER_CLAIMS}
    after["metal"]["rms_db"] = -11                     # metal louder than hip-hop: that claim fails, only that one
    assert [k for k, ok in check_claims(after).items() if not ok] == ["hip-hop: highest RMS"]


def test_eval_prompts_refuses_an_unknown_prompt_in_one_line(tmp_path, capsys):
    from bridge.cli import main

    folder = _songs_folder(tmp_path / "songs", 2.0)
    assert main(["eval-prompts", str(folder), "--prompts", "classical, polka"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'polka'" in err
