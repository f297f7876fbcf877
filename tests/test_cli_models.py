"""`refmaster master` with --ito-ref, --model black-box and --weights: what each option changes.

Short synthesised tracks (2 s, the whole track is ITO's one excerpt) and a couple of ITO steps;
expected values are recomputed here from the engine's parts (f_norm, Φ, Ψ, the chain, the AF
objective, pyloudnorm) on the decoded files, not read back from the command's report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
import torch

from bridge.cli import main
from engine import params as P
from engine.io.audio import load_audio
from engine.model.networks import MasteringModel, default_weights
from engine.model.synth import synth_song

pytestmark = pytest.mark.skipif(not (default_weights("white-box").exists() and default_weights("black-box").exists()),
                                reason="shipped weights missing (train with `refmaster train`)")
SR = 44100


def lufs(audio: np.ndarray) -> float:
    """BS.1770 integrated loudness of (2, T) audio, straight from pyloudnorm."""
    return float(pyloudnorm.Meter(SR).integrated_loudness(np.asarray(audio, np.float64).T))


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tracks(tmp_path_factory):
    """in.wav (2 s + 123 frames), ref.wav (loud) and other.wav (another song, 12 dB quieter)."""
    d = tmp_path_factory.mktemp("tracks")
    x = synth_song(21, 2.0)
    x = np.concatenate([x, x[:, :123]], axis=1)
    ref = synth_song(22, 2.0) * 1.4
    other = synth_song(23, 2.0) * 0.25
    for name, a in (("in.wav", x), ("ref.wav", ref), ("other.wav", other)):
        sf.write(d / name, np.clip(a, -1, 1).T, SR, subtype="PCM_24")
    return d


def _excerpts(x_loaded: np.ndarray):
    """f_norm(x) and the excerpt batch ITO works on, as `engine.mastering.job.master` makes them."""
    from engine.mastering.ito import choose_excerpts, excerpt_batch
    from engine.model.fxnorm import fx_normalize, load_stats

    x_norm = fx_normalize(x_loaded, load_stats())
    return x_norm, excerpt_batch(x_norm, choose_excerpts(x_norm, 2.5, 3))


# ------------------------------------------------------------------ --ito-ref

def test_ito_ref_sets_the_ito_target_and_the_loudness(capsys, tracks, tmp_path):
    from engine.analysis.features import audio_features, drv_db
    from engine.dsp.chain import render_chain
    from engine.mastering.ito import DRV_WEIGHT, FrozenWhiteBox, af_objective

    out = tmp_path / "m.wav"
    code, stdout, err = run(capsys, "master", tracks / "in.wav", "--ref", tracks / "ref.wav", "--ito-ref",
                            tracks / "other.wav", "-o", out, "--ito-steps", "2", "--presets", tmp_path / "p",
                            "--quiet", "--json")
    assert code == 0, err
    r = json.loads(stdout)
    ref, other = load_audio(tracks / "ref.wav").audio, load_audio(tracks / "other.wav").audio
    assert lufs(ref) - lufs(other) > 10.0  # the two targets are far apart
    # the loudness match aims at OTHER: the written master is at OTHER's loudness, not REF's
    y = load_audio(out).audio
    assert r["loudness_match"]["target_lufs"] == pytest.approx(lufs(other), abs=1e-6)
    assert lufs(y) == pytest.approx(lufs(other), abs=0.5)
    assert abs(lufs(y) - lufs(ref)) > 9.0
    # ITO's objective is the AF(+DRV) loss against OTHER: its step-0 value, recomputed here
    model = MasteringModel.load(default_weights("white-box"))
    x_norm, xb = _excerpts(load_audio(tracks / "in.wav").audio)
    with torch.no_grad():
        theta0 = FrozenWhiteBox(model, xb).theta(model.embed(torch.from_numpy(ref).unsqueeze(0)))
        y0 = render_chain(xb, theta0, check_params=False)

        def loss_against(target):
            t = torch.from_numpy(target).unsqueeze(0)
            return float(af_objective(None, drv_weight=DRV_WEIGHT, ref_features=audio_features(t),
                                      ref_drv=drv_db(target))(y0))

        want, wrong = loss_against(other), loss_against(ref)
    assert abs(want - wrong) > 0.05 * want  # the two objectives are distinguishable
    assert r["ito"]["losses"][0] == pytest.approx(want, rel=1e-3)
    assert r["ito"]["steps_run"] <= 2


# ------------------------------------------------------------------ --model black-box

def test_black_box_master_is_the_black_box_render_and_saves_no_preset(capsys, tracks, tmp_path):
    from engine.analysis.features import audio_features, drv_db
    from engine.mastering.ito import af_objective

    presets = tmp_path / "p"
    out = tmp_path / "bb.wav"
    code, stdout, err = run(capsys, "master", tracks / "in.wav", "--ref", tracks / "ref.wav", "-o", out,
                            "--model", "black-box", "--no-ito", "--presets", presets, "--quiet", "--json")
    assert code == 0, err
    r = json.loads(stdout)
    assert r["model"] == "black-box"
    # no Θ: nothing to show, no loudness/dynamics match (they set Θ's gain and limiter), no preset
    assert r["params"] is None and r["preset"] is None
    assert r["loudness_match"] is None and r["dynamics_match"] is None
    assert not list(presets.rglob("*.json"))
    # the file is the input's length and is the black-box converter's output on f_norm(input), z = Φ(ref)
    x = load_audio(tracks / "in.wav")
    assert sf.info(out).frames == x.source_frames == 2 * SR + 123
    y = load_audio(out).audio
    bb = MasteringModel.load(default_weights("black-box"))
    ref = load_audio(tracks / "ref.wav").audio
    x_norm, _ = _excerpts(x.audio)
    with torch.no_grad():
        want = bb.converter(torch.from_numpy(x_norm).unsqueeze(0), bb.embed(torch.from_numpy(ref).unsqueeze(0)))[0][0]
    want = want.numpy()
    assert float(np.abs(y - want).max()) < 2e-5
    # ... which is neither the input nor f_norm(input) unchanged
    assert float(np.abs(y - x.audio).max()) > 1e-2
    assert float(np.abs(y - x_norm).max()) > 2e-4

    # with ITO (2 steps): still the black-box model, ITO ran on its output, still no preset
    code, stdout, err = run(capsys, "master", tracks / "in.wav", "--ref", tracks / "ref.wav", "-o", out,
                            "--model", "black-box", "--ito-steps", "2", "--presets", presets, "--quiet", "--json")
    assert code == 0, err
    r = json.loads(stdout)
    assert r["model"] == "black-box" and r["preset"] is None and r["params"] is None
    assert 1 <= r["ito"]["steps_run"] <= 2 and r["ito"]["moved"] == []
    with torch.no_grad():
        _, xb = _excerpts(x.audio)
        t = torch.from_numpy(ref).unsqueeze(0)
        y0 = bb.converter(xb, bb.embed(t))[0]
        loss0 = float(af_objective(None, ref_features=audio_features(t), ref_drv=drv_db(ref))(y0))
    assert r["ito"]["losses"][0] == pytest.approx(loss0, rel=1e-3)
    assert sf.info(out).frames == x.source_frames
    assert not list(presets.rglob("*.json"))


# ------------------------------------------------------------------ --weights

HIGH_SHELF = P.PARAM_KEYS.index("eq.high_shelf_gain")


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory):
    """The shipped white-box model with Ψ's high-shelf output pushed up, saved as a weights file."""
    m = MasteringModel.load(default_weights("white-box"))
    with torch.no_grad():
        m.converter.head.bias[HIGH_SHELF] += 3.0
    path = tmp_path_factory.mktemp("weights") / "perturbed.safetensors"
    m.save(path, meta=dict(m.meta, steps=4242))
    return path


def _predicted_theta(model: MasteringModel, x_loaded: np.ndarray, ref: np.ndarray) -> torch.Tensor:
    from engine.mastering.ito import FrozenWhiteBox

    _, xb = _excerpts(x_loaded)
    with torch.no_grad():
        return FrozenWhiteBox(model, xb).theta(model.embed(torch.from_numpy(ref).unsqueeze(0)))


def test_weights_file_is_the_model_that_masters(capsys, tracks, tmp_path, perturbed):
    common = ("--ref", tracks / "ref.wav", "--no-ito", "--no-loudness-match", "--no-dynamics-match",
              "--quiet", "--json")
    code, s_default, err = run(capsys, "master", tracks / "in.wav", "-o", tmp_path / "a.wav",
                               "--presets", tmp_path / "pa", *common)
    assert code == 0, err
    code, s_weights, err = run(capsys, "master", tracks / "in.wav", "-o", tmp_path / "b.wav",
                               "--presets", tmp_path / "pb", "--weights", perturbed, *common)
    assert code == 0, err
    ra, rb = json.loads(s_default), json.loads(s_weights)
    ga = ra["params"]["params"]["eq"]["high_shelf_gain"]
    gb = rb["params"]["params"]["eq"]["high_shelf_gain"]
    assert gb - ga > 2.0  # dB: the perturbed Ψ asks for much more high shelf
    # each run's Θ is its own model's prediction (recomputed here), not the other's
    x = load_audio(tracks / "in.wav").audio
    ref = load_audio(tracks / "ref.wav").audio
    for report, weights in ((ra, default_weights("white-box")), (rb, perturbed)):
        th = _predicted_theta(MasteringModel.load(weights), x, ref)
        got = P.ChainParams.from_dict(report["params"]).to_tensors(torch.float64)[0]
        assert torch.allclose(got, th.double(), atol=1e-3), weights
    # the audio follows: the perturbed master has more energy above 8 kHz
    ya, yb = load_audio(tmp_path / "a.wav").audio, load_audio(tmp_path / "b.wav").audio

    def air_db(y):
        spec = np.abs(np.fft.rfft(y.mean(0).astype(np.float64))) ** 2
        f = np.fft.rfftfreq(y.shape[1], 1 / SR)
        return 10 * math.log10(spec[f > 8000].sum() / spec.sum())

    assert air_db(yb) - air_db(ya) > 1.0
    # and the preset records which model made it (the weights' meta)
    preset = json.loads(Path(rb["preset"]).read_text())
    assert preset["model_version"] == "white-box/4242-steps"
