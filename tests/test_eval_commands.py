"""`refmaster eval`, `eval-synthetic`, `export-check exactness` and `fxnorm-stats` on tiny synthesised folders.

Each command's figures are checked against an independent computation (pyloudnorm, NumPy, a
block loop written here) or against its own per-row output, so a wrong pairing, a wrong
measure, a mean for a median or a misprinted figure fails.
"""

from __future__ import annotations

import itertools
import json
import math
import re

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
import torch

from bridge.cli import main
from engine.io.audio import load_audio
from engine.model.networks import default_weights
from engine.model.synth import synth_song

SR = 44100
needs_white_box = pytest.mark.skipif(not default_weights("white-box").exists(),
                                     reason="shipped white-box weights missing (train with `refmaster train`)")


def lufs(audio) -> float:
    return float(pyloudnorm.Meter(SR).integrated_loudness(np.asarray(audio, np.float64).T))


def side_mid(audio) -> float:
    x = np.asarray(audio, np.float64)
    m, s = x[0] + x[1], x[0] - x[1]
    return float(np.sum(s * s) / np.sum(m * m))


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _write_songs(folder, specs, seconds, ext="wav"):
    """specs: [(name, seed, gain, side gain)] -> files of synthesised songs, levels and widths apart."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, seed, gain, side in specs:
        x = synth_song(seed, seconds).astype(np.float64)
        m, s = 0.5 * (x[0] + x[1]), 0.5 * (x[0] - x[1]) * side
        y = gain * np.stack([m + s, m - s])
        sf.write(folder / f"{name}.{ext}", np.clip(y, -1, 1).T, SR, **({"subtype": "PCM_24"} if ext == "wav" else {}))
    return folder


@pytest.fixture(scope="module")
def songs3(tmp_path_factory):
    """Three 3 s songs of different loudness (all well below the shipped f_norm target) and width,
    and a file that is not audio."""
    d = _write_songs(tmp_path_factory.mktemp("songs3"),
                     [("alpha", 31, 0.45, 1.0), ("bravo", 32, 0.12, 2.0), ("charlie", 33, 0.3, 0.5)], 3.0)
    (d / "notes.txt").write_text("not a song")
    return d


def _where(excerpt: np.ndarray, song: np.ndarray) -> int:
    """Offset of ``excerpt`` inside ``song`` (exact samples), or -1."""
    n = excerpt.shape[1]
    for s in np.flatnonzero(song[0] == excerpt[0, 0]):
        if s + n <= song.shape[1] and np.array_equal(song[:, s:s + n], excerpt):
            return int(s)
    return -1


# ------------------------------------------------------------------ eval: pairing

def test_real_pairs_are_different_songs_taken_from_those_songs_and_seeded(songs3):
    from engine.mastering.evaluation import real_pairs

    audio = {f.name: load_audio(f).audio for f in songs3.glob("*.wav")}
    every = real_pairs(songs3, count=20, seconds=1.0, seed=3)
    # all ordered pairs of different songs, each once (there are only 3 x 2 of them)
    assert sorted((p.input_name, p.reference_name) for p in every) == \
        sorted(itertools.permutations(sorted(audio), 2))
    for p in every:
        assert p.input_name != p.reference_name
        # each excerpt is 1 s cut from the song it is named after
        assert p.input.shape == p.reference.shape == (2, SR)
        assert _where(p.input, audio[p.input_name]) >= 0
        assert _where(p.reference, audio[p.reference_name]) >= 0
    # deterministic for a seed: names and excerpts
    a, b = real_pairs(songs3, 4, 1.0, seed=3), real_pairs(songs3, 4, 1.0, seed=3)
    assert [(p.input_name, p.reference_name) for p in a] == [(p.input_name, p.reference_name) for p in b]
    assert all(np.array_equal(p.input, q.input) and np.array_equal(p.reference, q.reference) for p, q in zip(a, b))
    # ... and another seed draws other pairs or other excerpts
    c = real_pairs(songs3, 4, 1.0, seed=4)
    assert any((p.input_name, p.reference_name) != (q.input_name, q.reference_name)
               or not np.array_equal(p.input, q.input) for p, q in zip(a, c))


# ------------------------------------------------------------------ eval: scores and medians

def _same(a, b, **tol):
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == pytest.approx(b, **tol)


@needs_white_box
def test_eval_scores_are_the_measures_of_each_pair_and_the_table_holds_their_medians(capsys, songs3):
    from engine.mastering.evaluation import real_pairs, score

    argv = ("eval", songs3, "--pairs", "3", "--seconds", "1.5", "--seed", "7")
    code, out, err = run(capsys, *argv, "--systems", "input", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["pairs"] == 3 and r["seed"] == 7 and len(r["rows"]) == 3
    pairs = real_pairs(songs3, 3, 1.5, 7)
    rows = r["rows"]
    assert [(row["input"], row["reference"]) for row in rows] == [(p.input_name, p.reference_name) for p in pairs]
    assert all(row["input"] != row["reference"] and row["system"] == "input" for row in rows)
    # the `input` system is the unprocessed excerpt scored against the reference excerpt
    for row, p in zip(rows, pairs):
        want = score(p.input, p.reference)
        for k, v in want.items():
            assert _same(row[k], v, rel=1e-9, abs=1e-12), k
        # ... with ΔLUFS and Δwidth as pyloudnorm and plain side/mid energies give them
        assert row["d_lufs"] == pytest.approx(abs(lufs(p.input) - lufs(p.reference)), abs=1e-6)
        assert row["d_width"] == pytest.approx(abs(side_mid(p.input) - side_mid(p.reference)), rel=1e-6)
    assert max(row["d_lufs"] for row in rows) > 3.0  # the songs are levels apart
    # the summary holds the medians of the per-pair rows
    summary = r["summary"]["input"]
    for k in ("af", "d_drv", "d_lufs", "bark_db", "d_width", "seconds"):
        vals = [row[k] for row in rows]
        want = float(np.nanmedian(vals)) if not all(math.isnan(v) for v in vals) else math.nan
        assert _same(summary[k], want, rel=1e-12), k
    assert summary["drv_pairs"] == sum(math.isfinite(row["d_drv"]) for row in rows)
    assert len({row["d_lufs"] for row in rows}) == 3  # three different values: a median is not a mean here
    # the printed table (same seed, same pairs) shows those medians
    code, table, err = run(capsys, *argv, "--systems", "input")
    assert code == 0, err
    line = next(l for l in table.splitlines() if l.startswith("input "))
    printed = [float(v) for v in line.split()[1:]]
    for v, (k, digits) in zip(printed, (("af", 4), ("d_drv", 2), ("d_lufs", 2), ("bark_db", 2), ("d_width", 3))):
        if not math.isnan(summary[k]):
            assert v == pytest.approx(summary[k], abs=0.51 * 10 ** -digits), k
    assert "median over 3 pairs" in table
    # ours-noito (one pair: a master costs seconds) masters towards the reference: the loudness gap closes
    code, out, err = run(capsys, "eval", songs3, "--pairs", "1", "--seconds", "1.5", "--seed", "7",
                         "--systems", "input,ours-noito", "--json")
    assert code == 0, err
    one = {row["system"]: row for row in json.loads(out)["rows"]}
    assert (one["ours-noito"]["input"], one["ours-noito"]["reference"]) == (pairs[0].input_name, pairs[0].reference_name)
    assert one["input"]["d_lufs"] == pytest.approx(rows[0]["d_lufs"], abs=1e-9)
    assert one["ours-noito"]["d_lufs"] < 0.5 < one["input"]["d_lufs"]
    assert one["ours-noito"]["af"] < one["input"]["af"]
    # the white-box masters say which parameters ended at a range limit, and the summary counts them
    summary = json.loads(out)["summary"]["ours-noito"]
    assert isinstance(one["ours-noito"]["pinned"], list) and "pinned" not in one["input"]
    assert summary["pinned_masters"] == int(bool(one["ours-noito"]["pinned"]))


# ------------------------------------------------------------------ eval-synthetic

@needs_white_box
def test_eval_synthetic_figures_are_those_of_its_rows(capsys, tmp_path):
    from engine import params as P
    from engine.model.dataset import HELD_OUT

    # the held-out songs, by name (synthesised; 10.5 s: a reference excerpt is 10 s), and one that must not be used
    d = _write_songs(tmp_path / "data", [(HELD_OUT[0].rsplit(".", 1)[0], 41, 0.9, 1.0),
                                         (HELD_OUT[1].rsplit(".", 1)[0], 42, 0.5, 1.5)], 10.5,
                     ext=HELD_OUT[0].rsplit(".", 1)[1])
    _write_songs(d, [("training_song", 43, 1.0, 1.0)], 10.5)
    code, out, err = run(capsys, "eval-synthetic", "--model", "white-box", "--data", d, "--examples", "3",
                         "--pairs", "0", "--seed", "5", "--rows", "--json")
    assert code == 0, err
    r = json.loads(out)["white-box"]
    s, rows = r["synthetic"], r["synthetic_rows"]
    assert s["examples"] == len(rows) == 3 and s["seed"] == 5
    assert s["held_out"] == list(HELD_OUT)
    # songs in turn, only the held-out ones (sorted by file name)
    assert [row["song"] for row in rows] == [sorted(HELD_OUT)[i % 2] for i in range(3)]
    loss = np.array([row["loss"] for row in rows])
    base = np.array([row["unprocessed"] for row in rows])
    assert np.all(np.isfinite(loss)) and np.all(base > 0)
    assert s["median_loss"] == pytest.approx(float(np.median(loss)), rel=1e-12)
    assert s["median_unprocessed"] == pytest.approx(float(np.median(base)), rel=1e-12)
    assert s["ratio_of_medians"] == pytest.approx(float(np.median(loss) / np.median(base)), rel=1e-12)
    assert s["median_ratio"] == pytest.approx(float(np.median(loss / base)), rel=1e-12)
    assert s["improved_fraction"] == pytest.approx(float(np.mean(loss < base)), abs=1e-12)
    # per module: the mean normalised error over the examples where f2 switched the module on
    for j, m in enumerate(P.MODULES):
        on = [row for row in rows if row["switches"][j]]
        e = s["param_error_by_module"][m]
        assert e["examples"] == len(on)
        if on:
            want = np.mean([np.mean(row["param_error"][P.module_slice(m)]) for row in on])
            assert e["mean_abs_error_normalized"] == pytest.approx(float(want), rel=1e-9)
        else:
            assert e["mean_abs_error_normalized"] is None


# ------------------------------------------------------------------ export-check exactness

def test_export_check_exactness_prints_what_it_measured(capsys, tmp_path, monkeypatch):
    from engine.dsp.chain import render_chain
    from export import checks
    from export.onnx_stream import OnnxStreamingChain

    d = _write_songs(tmp_path / "songs", [("one", 51, 0.9, 1.0)], 1.3)
    seen = []
    real = checks.exactness

    def spy(*a, **k):
        rows = real(*a, **k)
        seen.extend(rows)
        return rows

    monkeypatch.setattr(checks, "exactness", spy)
    code, out, err = run(capsys, "export-check", "exactness", "--songs", d, "--seconds", "1", "--thetas", "1")
    assert code == 0, out + err
    assert {row["blocks"] for row in seen} == set(checks.BLOCK_CONFIGS) and len(seen) == len(checks.BLOCK_CONFIGS)
    printed = dict(re.findall(r"blocks\s+(\S+): max (\S+)", out))
    assert set(printed) == set(checks.BLOCK_CONFIGS)
    for config, text in printed.items():
        d_max = max(row["max_abs_diff"] for row in seen if row["blocks"] == config)
        assert text == f"{d_max:.2e}", config
        assert d_max < 1e-4
    assert "FAIL" not in out and out.count(" ok") == len(checks.BLOCK_CONFIGS)
    overall = float(re.search(r"overall max (\S+)", out).group(1))
    assert overall == pytest.approx(max(row["max_abs_diff"] for row in seen), rel=5e-3)

    # the figure for 512-sample blocks, measured here: 1 s from the end of the song (it is shorter
    # than the 30 s offset), the first random Θ, streamed by hand, latency removed, vs the Torch render
    x = load_audio(d / "one.wav").audio
    x = np.ascontiguousarray(x[:, x.shape[1] - SR:])
    theta = checks.random_thetas(1, 0)[0]
    p, s = theta.to_tensors()
    with torch.no_grad():
        ref = render_chain(torch.from_numpy(x).unsqueeze(0), p, s)[0].numpy()
    chain = OnnxStreamingChain(theta)
    L = chain.latency
    padded = np.concatenate([x, np.zeros((2, L), np.float32)], axis=1)
    y = np.concatenate([chain.process(padded[:, i:i + 512]) for i in range(0, padded.shape[1], 512)], axis=1)[:, L:]
    mine = float(np.abs(y - ref).max())
    assert 0 < mine < 1e-4
    assert float(printed["512"]) == pytest.approx(mine, rel=5e-3)


# ------------------------------------------------------------------ fxnorm-stats

def test_fxnorm_stats_of_a_folder_and_f_norm_with_them(capsys, songs3, tmp_path):
    from engine.model.fxnorm import STATS_PATH, compute_stats, fx_normalize, load_stats

    shipped = STATS_PATH.read_bytes()
    out = tmp_path / "stats.json"
    code, stdout, err = run(capsys, "fxnorm-stats", songs3, "-o", out)
    assert code == 0, err
    assert STATS_PATH.read_bytes() == shipped  # -o: the engine's own file is left alone
    stats = json.loads(out.read_text())
    files = sorted(songs3.glob("*.wav"))
    audio = {f.name: load_audio(f).audio for f in files}
    assert stats == compute_stats(audio)
    assert stats["songs"] == ["alpha.wav", "bravo.wav", "charlie.wav"]  # notes.txt is not a song
    # the figures, independently: mean loudness, geometric-mean side/mid ratio
    louds = [lufs(a) for a in audio.values()]
    assert stats["loudness_lufs"] == pytest.approx(float(np.mean(louds)), abs=1e-3)
    ratios = [side_mid(a) for a in audio.values()]
    assert stats["side_mid_ratio"] == pytest.approx(float(np.exp(np.mean(np.log(ratios)))), rel=1e-4)
    assert len(stats["spectrum_shape_db"]) == len(stats["band_centres_hz"]) == 31
    assert f"3 songs, target {stats['loudness_lufs']:.1f} LUFS" in stdout
    # f_norm with these statistics brings another song to their loudness and width
    ours, default = load_stats(out), load_stats()
    assert abs(ours["loudness_lufs"] - default["loudness_lufs"]) > 2.0  # not the shipped target
    x = synth_song(34, 3.0)
    y = fx_normalize(x, ours)
    assert lufs(y) == pytest.approx(stats["loudness_lufs"], abs=0.1)
    assert side_mid(y) == pytest.approx(stats["side_mid_ratio"], rel=0.02)


def test_eval_synthetic_on_too_short_held_out_songs_is_one_line(tmp_path, capsys):
    from engine.model.dataset import HELD_OUT

    for i, name in enumerate(HELD_OUT):
        sf.write(tmp_path / name, synth_song(70 + i, 6.0).T, 44100, format="OGG", subtype="VORBIS")
    code = main(["eval-synthetic", "--model", "white-box", "--data", str(tmp_path), "--examples", "2", "--pairs", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "shorter than the 10 s" in err[0]
