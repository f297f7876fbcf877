"""ITO, nudges, `master`, `demo`, `eval` and the OSC ITO hook, with the shipped white-box model."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from bridge.cli import main
from engine import params as P
from engine.analysis.features import audio_features
from engine.mastering.ito import af_objective, choose_excerpts, excerpt_batch, optimize_embedding, optimize_params
from engine.mastering.job import MasterSettings, master
from engine.mastering.nudge import NUDGE_CHECKS, NUDGES, parse_nudges
from engine.mastering.tonal import BALANCE_KEYS
from engine.model.networks import MasteringModel, default_weights
from engine.model.synth import synth_song

pytestmark = pytest.mark.skipif(not default_weights("white-box").exists(),
                                reason="shipped white-box weights missing (train with `refmaster train`)")


@pytest.fixture(scope="module")
def model():
    return MasteringModel.load(default_weights("white-box"))


@pytest.fixture(scope="module")
def pair():
    return synth_song(21, 6.0), synth_song(22, 6.0) * 1.6


def test_excerpts_are_representative_and_disjoint():
    x = synth_song(4, 30.0)
    w = choose_excerpts(x, 2.5, 3)
    assert len(w) == 3 and all(n == int(2.5 * 44100) for _, n in w)
    starts = sorted(s for s, _ in w)
    assert all(b - a >= int(2.5 * 44100) for a, b in zip(starts, starts[1:]))
    assert all(0 <= s and s + n <= x.shape[1] for s, n in w)
    assert choose_excerpts(x[:, :44100 * 5], 2.5, 3) == [(0, 44100 * 5)]


def test_ito_keeps_the_best_step_and_stops_with_patience(model, pair):
    # A large step overshoots within a few updates, so the loss rises and patience must stop it.
    x, ref = pair
    xb = excerpt_batch(x, choose_excerpts(x, 2.0, 2))
    z0 = model.embed(torch.from_numpy(ref).unsqueeze(0)).detach()
    obj = af_objective(torch.from_numpy(ref).unsqueeze(0))
    r = optimize_embedding(model, xb, z0, obj, steps=30, lr=3.0, patience=3)
    assert len(r.losses) == r.steps_run + 1
    assert r.best_step == int(np.argmin(r.losses)) and min(r.losses) < 0.9 * r.losses[0]
    # stopped by patience: exactly 3 evaluations without improvement after the best, well before 30
    assert r.steps_run == r.best_step + 3 < 30
    assert r.losses[-1] > min(r.losses)
    # what it returns is the best step, not the last: re-evaluating gives the best loss
    from engine.mastering.ito import FrozenWhiteBox

    frozen = FrozenWhiteBox(model, xb)
    with torch.no_grad():
        y, th = frozen.render(r.z)
        again = float(obj(y))
    assert again == pytest.approx(r.losses[r.best_step], rel=1e-4)
    assert torch.allclose(th, r.theta, atol=1e-5)
    assert r.theta.shape == (46,) and len(r.moved()) == 5
    P.check_tensor(r.theta)


def test_default_objective_adds_the_dynamics_term(pair):
    from engine.analysis.features import drv_db, drv_torch, onset_table
    from engine.dsp.chain import render_chain

    x, ref = pair
    ref_t = torch.from_numpy(ref).unsqueeze(0)
    xb = excerpt_batch(x, [(0, 88200), (132300, 88200)])
    y = render_chain(xb, P.default_tensor())
    plain, with_drv = af_objective(ref_t, drv_weight=0.0), af_objective(ref_t, drv_weight=0.5)
    drv = float(drv_torch(y, onset_table(y.numpy())))
    assert np.isfinite(drv) and np.isfinite(drv_db(ref))
    want = float(plain(y)) + 0.5 * (drv - drv_db(ref)) ** 2
    assert float(with_drv(y)) == pytest.approx(want, rel=1e-5)
    # the term pulls the limiter: squashing the peaks moves DRV, and the gradient says which way
    th = P.ChainParams.default().with_values(**{"limiter.threshold": -12.0, "gain.gain": 6.0}).to_tensors()[0]
    th = th.clone().requires_grad_(True)
    dyn = af_objective(ref_t, weights={"rms": 0.0}, drv_weight=1.0)
    dyn(render_chain(xb, th)).backward()
    assert float(th.grad[P.PARAM_KEYS.index("limiter.threshold")]) != 0.0


def test_ito_on_theta_lowers_the_loss(model, pair):
    x, ref = pair
    xb = excerpt_batch(x, [(0, 88200)])
    th0 = P.default_tensor()
    r = optimize_params(xb, th0, af_objective(torch.from_numpy(ref).unsqueeze(0)), steps=25, lr=5e-2, patience=25)
    assert min(r.losses) < 0.9 * r.losses[0]


@pytest.fixture(scope="module")
def masters(model, pair):
    """The same pair mastered without ITO, with ITO, and with ITO but neither match (computed once)."""
    x, ref = pair
    return {"noito": master(model, x, ref, MasterSettings(ito=False)),
            "ito": master(model, x, ref, MasterSettings(ito_steps=20)),
            "ito-nomatch": master(model, x, ref, MasterSettings(ito_steps=20, match_loudness=False, match_dynamics=False))}


def test_master_output_and_ito_improves(masters, pair):
    from engine.analysis.features import af_distance

    x, ref = pair
    for r in masters.values():
        assert r.output.shape == x.shape and np.isfinite(r.output).all()
        assert r.chain is not None and len(r.z_ref) == 2048
    b = masters["ito"]
    assert min(b.ito.losses) < 0.97 * b.ito.losses[0]
    # the master itself (whole track, after the matches) is closer to the reference with ITO
    d_noito = af_distance(masters["noito"].output, ref)
    d_ito = af_distance(b.output, ref)
    print("AF no ITO / ITO", d_noito, d_ito)
    assert d_ito < 0.97 * d_noito, (d_ito, d_noito)


def test_master_renders_the_ito_result(model, masters):
    from engine.dsp.chain import render_chain

    for name in ("ito", "ito-nomatch"):
        r = masters[name]
        th = r.chain.to_tensors()[0]
        # ITO moved Θ, and the master keeps what it found: every parameter but those the matches set
        # (make-up gain, limiter threshold, and the EQ and width of the tonal-balance match)
        moved = (P.normalize_tensor(r.ito.theta.double()) - P.normalize_tensor(r.chain_before_ito.to_tensors()[0].double())).abs()
        assert float(moved.max()) > 1e-3
        keep = [i for i, k in enumerate(P.PARAM_KEYS) if k not in ("gain.gain", "limiter.threshold") + BALANCE_KEYS]
        assert torch.allclose(th[keep], r.ito.theta[keep].float(), atol=1e-5)
        if name == "ito-nomatch":
            assert torch.allclose(th, r.ito.theta.float(), atol=1e-5)
        # and the output is that Θ rendered on f_norm(input)
        with torch.no_grad():
            y = render_chain(torch.from_numpy(r.x_norm).unsqueeze(0), th, r.chain.to_tensors()[1])[0].numpy()
        assert np.abs(y - r.output).max() < 1e-4


def test_master_matches_the_reference_loudness_and_dynamics(masters, pair):
    from engine.analysis.features import drv_db, integrated_loudness

    x, ref = pair
    target = integrated_loudness(ref)
    unmatched = integrated_loudness(masters["ito-nomatch"].output)
    assert abs(unmatched - target) > 1.0  # the pair needs the match, or this test proves nothing
    for name in ("noito", "ito"):
        r = masters[name]
        assert abs(integrated_loudness(r.output) - target) < 0.2
        assert r.loudness is not None and r.loudness["after_lufs"] == pytest.approx(integrated_loudness(r.output), abs=0.05)
        d = r.dynamics
        assert d is not None and abs(d["after_drv_db"] - drv_db(ref)) <= abs(d["before_drv_db"] - drv_db(ref)) + 1e-9
    assert masters["ito-nomatch"].loudness is None and masters["ito-nomatch"].dynamics is None


def test_every_word_has_a_check_and_parsing_rejects_unknown():
    assert set(NUDGE_CHECKS) == set(NUDGES)
    assert parse_nudges("Brighter,  wider ; punchier") == ["brighter", "wider", "punchier"]
    from engine.errors import RefmasterError

    with pytest.raises(RefmasterError, match="sparkly"):
        parse_nudges("brighter, sparkly")


@pytest.mark.slow
def test_each_nudge_moves_its_feature_on_most_songs(model):
    songs = [synth_song(s, 3.0) for s in (31, 32, 33, 34, 35)]
    failures = {}
    for word, check in NUDGE_CHECKS.items():
        ok = 0
        for x in songs:
            r = master(model, x, None, MasterSettings(ito=False, nudge=word, nudge_steps=25),
                       z_start=model.embed(torch.from_numpy(x * 1.3).unsqueeze(0))[0].detach().numpy())
            before = audio_features(torch.from_numpy(_render(x, r.chain_before_ito)).unsqueeze(0))
            after = audio_features(torch.from_numpy(r.output).unsqueeze(0))
            ok += check(before, after) > 0
        if ok < 4:
            failures[word] = ok
    assert not failures, f"nudges that moved their feature on fewer than 4 of 5 songs: {failures}"


def _render(x, chain):
    from engine.dsp.chain import render_chain
    from engine.model.fxnorm import fx_normalize

    p, s = chain.to_tensors()
    with torch.no_grad():
        return render_chain(torch.from_numpy(fx_normalize(x)).unsqueeze(0), p, s)[0].numpy()


# ------------------------------------------------------------------ the command line

@pytest.fixture
def files(tmp_path, pair):
    x, ref = pair
    sf.write(tmp_path / "in.wav", x.T, 44100, subtype="PCM_24")
    sf.write(tmp_path / "ref.flac", ref.T, 44100, subtype="PCM_24")
    return tmp_path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_master_cli_writes_master_preset_plot_json(capsys, files):
    out = files / "m.wav"
    code, stdout, err = run(capsys, "master", files / "in.wav", "--ref", files / "ref.flac", "-o", out,
                            "--ito-steps", "8", "--presets", files / "presets", "--plot", files / "p.png", "--json")
    assert code == 0, err
    r = json.loads(stdout)
    assert sf.info(out).frames == sf.info(files / "in.wav").frames and sf.info(out).subtype == "PCM_24"
    assert Path(r["preset"]).exists() and (files / "p.png").stat().st_size > 10000
    assert r["ito"]["steps_run"] <= 8 and r["params"]["schema"] == P.SCHEMA_TAG
    # the preset holds the Θ of the master (after ITO and the matches), and that Θ renders the file
    from engine.dsp.chain import render_chain
    from engine.io.audio import load_audio
    from engine.model.fxnorm import fx_normalize
    from presets import PresetStore

    preset = PresetStore(files / "presets").get("ref")
    assert preset.chain.to_dict()["params"] == r["params"]["params"]
    th, sw = preset.chain.to_tensors()
    with torch.no_grad():
        y = render_chain(torch.from_numpy(fx_normalize(load_audio(files / "in.wav").audio)).unsqueeze(0), th, sw)[0]
    written, _ = sf.read(out, dtype="float32")
    assert np.abs(written.T - np.clip(y.numpy(), -1, 1)).max() < 1e-4
    # the preset is found again by the reference's audio, and can be the starting point
    code, _, err = run(capsys, "master", files / "in.wav", "--ref", files / "ref.flac", "-o", out, "--no-ito",
                       "--presets", files / "presets", "--from-preset")
    assert code == 0 and "starting from preset 'ref'" in err


def test_master_cli_nudge_and_baseline(capsys, files):
    code, out, err = run(capsys, "master", files / "in.wav", "--ref", files / "ref.flac", "-o", files / "n.wav",
                         "--no-ito", "--nudge", "brighter, wider", "--presets", files / "p")
    assert code == 0, err
    assert "nudge (brighter, wider)" in out
    code, out, err = run(capsys, "master", files / "in.wav", "--ref", files / "ref.flac", "-o", files / "t.wav",
                         "--ito-target", "params", "--ito-steps", "10", "--presets", files / "p")
    assert code == 0, err
    assert "ITO (params)" in out


def _bad(kind, tmp_path, good):
    f = tmp_path / f"bad-{kind}.wav"
    if kind == "missing":
        return tmp_path / "nope.wav"
    if kind == "corrupt":
        f.write_bytes(b"RIFF" + bytes(range(256)) * 8)
    elif kind == "silent":
        sf.write(f, np.zeros((44100 * 2, 2)), 44100)
    elif kind == "short":
        sf.write(f, good[:, : 44100 // 2].T, 44100)
    elif kind == "six":
        sf.write(f, np.tile(good[:1, :88200].T, (1, 6)), 44100)
    return f


@pytest.mark.parametrize("kind", ["missing", "corrupt", "silent", "short", "six"])
@pytest.mark.parametrize("which", ["input", "reference"])
def test_master_cli_bad_files_are_one_line(capsys, files, pair, kind, which):
    bad = _bad(kind, files, pair[0])
    good_in, good_ref = files / "in.wav", files / "ref.flac"
    args = (bad, good_ref) if which == "input" else (good_in, bad)
    code, out, err = run(capsys, "master", args[0], "--ref", args[1], "-o", files / "o.wav", "--presets", files / "p")
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("refmaster: error:")
    assert not (files / "o.wav").exists()


def test_master_cli_mono_one_second_identical_and_noise(capsys, files, pair):
    x = pair[0]
    sf.write(files / "mono.wav", x[0, : 44100 * 3], 44100)
    sf.write(files / "one.wav", x[:, :44100].T, 44100)
    sf.write(files / "noise.wav", 0.2 * np.random.default_rng(0).standard_normal((44100 * 4, 2)), 44100)
    for inp, ref in (("mono.wav", "ref.flac"), ("one.wav", "ref.flac"), ("in.wav", "in.wav"), ("in.wav", "noise.wav")):
        code, _, err = run(capsys, "master", files / inp, "--ref", files / ref, "-o", files / "o.wav",
                           "--ito-steps", "5", "--presets", files / f"p-{inp}-{ref}")
        assert code == 0, (inp, ref, err)
        y, _ = sf.read(files / "o.wav")
        assert np.isfinite(y).all() and y.shape[0] == sf.info(files / inp).frames


def test_ctrl_c_during_ito_leaves_no_output(capsys, files, monkeypatch):
    import engine.mastering.job as M

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(M, "optimize_embedding", interrupted)
    code, _, err = run(capsys, "master", files / "in.wav", "--ref", files / "ref.flac", "-o", files / "o.wav",
                       "--presets", files / "p")
    assert code == 130 and "interrupted" in err
    assert not (files / "o.wav").exists() and not list(files.glob(".o.wav*"))


def test_osc_ito_and_nudge_hooks(pair):
    from bridge.cli.serve import ito_handlers
    from bridge.osc.server import ItoRequest

    x, ref = pair
    run_ito, nudge = ito_handlers(None, x, ref)
    seen = []
    req = ItoRequest("run", 5, None, P.ChainParams.default(), None, x, ref, lambda s, l: seen.append((s, l)))
    res = run_ito(req)
    assert isinstance(res.chain, P.ChainParams) and len(res.z_ref) == 2048 and seen
    req2 = ItoRequest("nudge", 5, "wider", P.ChainParams.default(), None, x, ref, lambda s, l: None)
    assert nudge(req2).loss_history


def test_evaluate_nudges_reports_each_word_on_each_song(model, tmp_path):
    from engine.mastering.evaluation import evaluate_nudges

    for seed in (41, 42):
        sf.write(tmp_path / f"song{seed}.wav", synth_song(seed, 4.0).T, 44100)
    r = evaluate_nudges(model, tmp_path, songs=2, seconds=3.0, steps=6, words=["brighter", "wider"], progress=False)
    assert r["songs"] == ["song41.wav", "song42.wav"]
    assert set(r["moves"]) == {"brighter", "wider"}
    assert all(np.isfinite(v) for m in r["moves"].values() for v in m.values())
    assert r["right_way"]["brighter"] == sum(v > 0 for v in r["moves"]["brighter"].values())
    assert r["moves"]["brighter"]["song41.wav"] > 0.05  # dB above 4 kHz, after only 6 nudge steps
