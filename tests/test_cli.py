import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bridge.cli import main
from engine import params as P

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def wav(tmp_path, song):
    f = tmp_path / "song.wav"
    sf.write(f, song.T, 44100, subtype="PCM_24")
    return f


@pytest.fixture
def params_file(tmp_path):
    f = tmp_path / "p.json"
    cp = P.ChainParams.default().with_values(**{"gain.gain": 4.0, "limiter.threshold": -3.0, "eq.band1_gain": 3.0})
    f.write_text(cp.to_json())
    return f


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_params_lists_46(capsys):
    code, out, _ = run(capsys, "params")
    assert code == 0
    assert len(re.findall(r"^\s+\d+\s+\w+\.\w+", out, re.M)) == 46
    code, out, _ = run(capsys, "params", "--json")
    rows = json.loads(out)
    assert len(rows) == 46 and rows[42]["key"] == "imager.width"


def test_analyze_table_and_json(capsys, wav, tmp_path):
    code, out, _ = run(capsys, "analyze", wav)
    assert code == 0 and "LUFS" in out and "DRV" in out and "bark balance" in out
    code, out, _ = run(capsys, "analyze", wav, "--json", "--plot", tmp_path / "a.png")
    r = json.loads(out)
    assert code == 0 and r["duration_s"] == pytest.approx(8.0) and (tmp_path / "a.png").stat().st_size > 1000
    # the table shows the same measurements as the JSON
    code, table, _ = run(capsys, "analyze", wav)
    assert re.search(rf"loudness\s+{r['loudness_lufs']:.1f} LUFS", table)
    assert re.search(rf"true peak\s+{r['true_peak_dbtp']:.1f} dBTP", table)
    assert re.search(rf"DRV\s+{r['drv_db']:.2f} dB", table)


def test_analyze_measures_a_known_signal(capsys, tmp_path):
    """A 997 Hz sine, 0.25 left and 0.125 right: every figure follows from the definitions
    (BS.1770: a 997 Hz sine's K-weighted power is its power; width = side/mid energy with
    mid = L + R, side = L − R; imbalance = (E_R − E_L) / (E_R + E_L))."""
    t = np.arange(44100 * 4) / 44100
    s = np.sin(2 * np.pi * 997 * t)
    f = tmp_path / "sine.wav"
    sf.write(f, np.stack([0.25 * s, 0.125 * s]).T, 44100, subtype="FLOAT")
    code, out, err = run(capsys, "analyze", f, "--json")
    assert code == 0, err
    r = json.loads(out)
    power = 0.25 ** 2 / 2 + 0.125 ** 2 / 2
    assert r["loudness_lufs"] == pytest.approx(10 * np.log10(power), abs=0.1)
    assert r["sample_peak_dbfs"] == pytest.approx(20 * np.log10(0.25), abs=0.01)
    assert r["true_peak_dbtp"] == pytest.approx(20 * np.log10(0.25), abs=0.05)
    assert r["rms_dbfs"] == pytest.approx(10 * np.log10(power / 2), abs=0.01)
    assert r["crest_db"] == pytest.approx(10 * np.log10(2), abs=0.05)
    assert r["width"] == pytest.approx((0.125 / 0.375) ** 2, rel=1e-3)
    assert r["imbalance"] == pytest.approx(-0.6, abs=1e-3)
    # the balance is relative: the mid band holding 997 Hz is the loudest
    centres = np.array(r["bark_centres_hz"])
    assert int(np.argmax(r["bark_mid_db"])) == int(np.argmin(np.abs(np.log(centres / 997))))


def test_render_writes_same_length_24_bit(capsys, wav, params_file, tmp_path):
    out = tmp_path / "m.wav"
    code, stdout, _ = run(capsys, "render", wav, "--params", params_file, "-o", out)
    assert code == 0 and "LUFS" in stdout
    info = sf.info(out)
    assert info.frames == sf.info(wav).frames and info.subtype == "PCM_24"
    a, _ = sf.read(wav)
    b, _ = sf.read(out)
    assert not np.allclose(a, b)


def test_render_keeps_source_rate(capsys, tmp_path, song, params_file):
    from engine.io.audio import resample

    src = tmp_path / "s48.wav"
    sf.write(src, resample(song, 44100, 48000).T, 48000)
    out = tmp_path / "o.flac"
    assert run(capsys, "render", src, "--params", params_file, "-o", out)[0] == 0
    assert sf.info(out).samplerate == 48000 and sf.info(out).frames == sf.info(src).frames


def make_bad(kind, tmp_path, song):
    f = tmp_path / f"{kind}.wav"
    if kind == "missing":
        return tmp_path / "nope.wav"
    if kind == "empty":
        f.write_bytes(b"")
    elif kind == "corrupt":
        f.write_bytes(b"RIFF" + os.urandom(3000))
    elif kind == "short":
        sf.write(f, song[:, :4410].T, 44100)
    elif kind == "silent":
        sf.write(f, np.zeros((44100, 2)), 44100)
    elif kind == "six":
        sf.write(f, np.tile(song[:1, :44100].T, (1, 6)), 44100)
    elif kind == "nan":
        x = song[:, :44100].T.copy()
        x[5] = np.nan
        sf.write(f, x, 44100, subtype="FLOAT")
    return f


BAD = ["missing", "empty", "corrupt", "short", "silent", "six", "nan"]


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize("command", ["analyze", "render"])
def test_bad_audio_one_line_nonzero(capsys, tmp_path, song, params_file, kind, command):
    bad = make_bad(kind, tmp_path, song)
    argv = [command, bad] + (["--params", params_file, "-o", tmp_path / "out.wav"] if command == "render" else [])
    code, out, err = run(capsys, *argv)
    assert code != 0
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("refmaster: error:") and "Traceback" not in err
    assert not (tmp_path / "out.wav").exists()


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d["params"]["gain"].update(gain=99), "gain.gain"),
    (lambda d: d["params"]["eq"].pop("band2_q"), "eq.band2_q"),
    (lambda d: d["params"]["limiter"].update(attack="fast"), "limiter.attack"),
])
def test_render_bad_params_named(capsys, tmp_path, wav, edit, needle):
    d = json.loads(P.ChainParams.default().to_json())
    edit(d)
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(d))
    code, _, err = run(capsys, "render", wav, "--params", f, "-o", tmp_path / "o.wav")
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_render_nan_and_garbage_params(capsys, tmp_path, wav):
    f = tmp_path / "nan.json"
    f.write_text(P.ChainParams.default().to_json().replace('"width": 0.5', '"width": NaN'))
    code, _, err = run(capsys, "render", wav, "--params", f, "-o", tmp_path / "o.wav")
    assert code == 2 and "imager.width" in err
    f.write_text("{not json")
    code, _, err = run(capsys, "render", wav, "--params", f, "-o", tmp_path / "o.wav")
    assert code == 2 and "not valid JSON" in err


def test_console_script_runs():
    exe = shutil.which("refmaster") or str(Path(sys.executable).with_name("refmaster"))
    r = subprocess.run([exe, "params", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 46


def test_ci_runs_exactly_the_readme_commands():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S)
    setup, tests = blocks[0].strip(), blocks[1].strip()
    assert setup in ci and tests in ci
