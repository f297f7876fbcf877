"""The preset store: fingerprints, round trips, damaged files, migration, locking and atomicity."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bridge.cli import main
from engine import params as P
from engine.io.audio import load_audio
from presets import Preset, PresetError, PresetStore, fingerprint, fingerprint_bit_error, fingerprints_match
from presets.preset import SCHEMA_TAG, file_stem
from presets.store import FACTORY_DIR

REPO = Path(__file__).resolve().parents[1]


def chain(**vals) -> P.ChainParams:
    return P.ChainParams.default().with_values(**vals)


@pytest.fixture
def store(tmp_path):
    return PresetStore(tmp_path / "presets")


@pytest.fixture(scope="module")
def encodings(tmp_path_factory, songs):
    d = tmp_path_factory.mktemp("enc")
    a = songs[0]
    sf.write(d / "ref.wav", a.T, 44100, subtype="PCM_24")
    sf.write(d / "ref.flac", a.T, 44100, subtype="PCM_24")
    sf.write(d / "ref16.flac", a.T, 44100, subtype="PCM_16")
    sf.write(d / "ref.ogg", a.T, 44100, format="OGG", subtype="VORBIS")
    sf.write(d / "other.wav", songs[1].T, 44100, subtype="PCM_24")
    return d


def test_fingerprint_is_of_the_decoded_audio(encodings):
    fp = {f.name: fingerprint(load_audio(f).audio) for f in sorted(encodings.iterdir())}
    assert fp["ref.wav"] == fp["ref.flac"]                         # same music, lossless: same key
    assert fingerprints_match(fp["ref.wav"], fp["ref16.flac"])     # 16-bit re-encode
    assert fingerprints_match(fp["ref.wav"], fp["ref.ogg"])        # lossy re-encode: a few bits flip
    assert 0.0 < fingerprint_bit_error(fp["ref.wav"], fp["ref.ogg"]) < 0.15
    assert not fingerprints_match(fp["ref.wav"], fp["other.wav"])
    assert fingerprint_bit_error(fp["ref.wav"], fp["other.wav"]) > 0.35
    assert fp["ref.wav"].startswith("rmfp1:6000:") and len(fp["ref.wav"].split(":")[2]) == 1016


def test_fingerprint_refuses_bad_audio():
    from engine.errors import AudioError

    with pytest.raises(AudioError, match="too short"):
        fingerprint(np.zeros((2, 1000), np.float32))
    with pytest.raises(AudioError, match="NaN"):
        fingerprint(np.full((2, 44100), np.nan, np.float32))


def test_round_trip_keeps_everything(store):
    z = list(np.random.default_rng(0).standard_normal(64))
    pr = Preset.new("Ref One", chain(**{"gain.gain": 3.25, "eq.band1_freq": 4321.5}),
                    fingerprint="rmfp1:1000:" + "ab" * 508, reference="Ref One.flac", z_ref=z,
                    ito={"settings": {"steps": 100, "lr": 0.001, "loss": "af"}, "loss_history": [1.0, 0.5, 0.25]},
                    model_version="white-box/3", notes="bright")
    path = store.save(pr)
    assert path == store.directory / "Ref One.json"
    back = store.get("Ref One")
    assert back == pr
    assert back.chain.values["eq.band1_freq"] == pytest.approx(4321.5)
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA_TAG and data["chain"]["schema"] == P.SCHEMA_TAG
    assert set(data) == {"schema", "name", "reference", "chain", "z_ref", "ito", "model_version", "created",
                         "modified", "notes"}
    assert store.get("ref one").name == "Ref One"  # case-insensitive when unambiguous


def test_find_by_fingerprint_wav_and_flac(store, encodings):
    fp_wav = fingerprint(load_audio(encodings / "ref.wav").audio)
    store.save(Preset.new("ref", chain(**{"gain.gain": 2.0}), fingerprint=fp_wav, reference="ref.wav"))
    store.save(Preset.new("other", chain(), fingerprint=fingerprint(load_audio(encodings / "other.wav").audio)))
    for f in ("ref.flac", "ref16.flac", "ref.ogg"):
        hit = store.find_by_fingerprint(fingerprint(load_audio(encodings / f).audio))
        assert hit is not None and hit.name == "ref", f
    assert store.find_by_fingerprint(fingerprint(np.random.default_rng(1).standard_normal((2, 88200)).astype(np.float32))) is None
    # one preset per reference: a second name for the same music is refused
    with pytest.raises(PresetError, match="already holds this reference"):
        store.save(Preset.new("ref again", chain(), fingerprint=fp_wav))
    # saving over it, under its own name, is fine
    pr = store.get("ref")
    store.save(pr.updated(chain=chain(**{"gain.gain": 5.0})))
    assert store.get("ref").chain.values["gain.gain"] == 5.0
    assert store.get("ref").created == pr.created and store.get("ref").modified >= pr.modified


def test_damaged_and_foreign_files_are_reported_by_name(store, capsys):
    for i in range(3):
        store.save(Preset.new(f"p{i}", chain(**{"gain.gain": float(i)})))
    good = (store.directory / "p1.json").read_text()
    (store.directory / "p1.json").write_text(good[: len(good) // 2])          # truncated by hand
    (store.directory / "future.json").write_text(json.dumps({"schema": "refmaster.preset/9", "name": "f"}))
    (store.directory / "foreign.json").write_text(json.dumps({"hello": 1}))
    p2 = (store.directory / "p2.json").read_text()
    (store.directory / "badvalue.json").write_text(p2.replace('"name": "p2"', '"name": "bv"')
                                                   .replace('"gain": 2.0', '"gain": 99.0'))
    presets, problems = store.scan()
    names = {p.name for p in presets}
    assert {"p0", "p2"} <= names and "p1" not in names and "bv" not in names
    reasons = {pr.path.name: str(pr) for pr in problems}
    assert set(reasons) == {"p1.json", "future.json", "foreign.json", "badvalue.json"}
    assert "not valid JSON" in reasons["p1.json"] and "truncated" in reasons["p1.json"]
    assert "newer refmaster" in reasons["future.json"]
    assert "not a refmaster preset" in reasons["foreign.json"]
    assert "gain.gain" in reasons["badvalue.json"] and "outside" in reasons["badvalue.json"]
    code = main(["preset", "list", "--presets", str(store.directory)])
    out, err = capsys.readouterr()
    assert code == 0 and "p0" in out and "p2" in out and "Neutral" in out
    assert "p1.json" in err and "future.json" in err
    assert main(["preset", "show", "p1", "--presets", str(store.directory)]) == 2
    assert "p1.json" in capsys.readouterr().err


def test_migrates_a_bare_chain_file_and_imports_it(store, tmp_path, capsys):
    f = tmp_path / "my params.json"
    f.write_text(chain(**{"gain.gain": 4.0}).to_json())
    assert main(["preset", "import", str(f), "--presets", str(store.directory)]) == 0
    pr = store.get("my params")
    assert pr.chain.values["gain.gain"] == 4.0 and pr.fingerprint is None and pr.z_ref is None
    assert json.loads(pr.path.read_text())["schema"] == SCHEMA_TAG  # written in the current schema
    assert main(["preset", "import", str(f), "--presets", str(store.directory)]) == 2  # exists already
    assert "already exists" in capsys.readouterr().err


def test_factory_presets_load_render_and_are_read_only(store, capsys):
    from engine.dsp.chain import render_offline
    from engine.model.synth import synth_song

    factory = [p for p in store.list() if p.factory]
    assert len(factory) == len(list(FACTORY_DIR.glob("*.json"))) >= 4
    x = synth_song(2, 2.0)
    for p in factory:
        y = render_offline(x, p.chain)
        assert np.isfinite(y).all() and np.abs(y).max() < 1.2, p.name
    with pytest.raises(PresetError, match="factory"):
        store.delete("Neutral")
    with pytest.raises(PresetError, match="factory"):
        store.rename("Neutral", "Mine")
    # saving a factory preset writes a user copy that shadows it
    store.save(store.get("Neutral").updated(chain=chain(**{"gain.gain": 1.0})))
    assert not store.get("Neutral").factory and store.get("Neutral").chain.values["gain.gain"] == 1.0


def test_cli_show_diff_rename_delete_export(store, tmp_path, capsys):
    d = ["--presets", str(store.directory)]
    store.save(Preset.new("a", chain(**{"gain.gain": 1.0})))
    b = chain(**{"gain.gain": 2.5, "limiter.threshold": -3.0})
    store.save(Preset.new("b", P.ChainParams(b.values, {**b.switches, "imager": False})))
    assert main(["preset", "show", "a", *d]) == 0
    out = capsys.readouterr().out
    assert "gain.gain" in out and "preset     a" in out
    assert main(["preset", "diff", "a", "b", *d]) == 0
    out = capsys.readouterr().out
    assert "gain.gain" in out and "+1.5 dB" in out and "limiter.threshold" in out and "switch.imager" in out
    assert "eq.low_shelf_gain" not in out
    assert main(["preset", "rename", "a", "A / new", *d]) == 0
    assert not (store.directory / "a.json").exists() and (store.directory / "A _ new.json").exists()
    assert store.get("A / new").chain.values["gain.gain"] == 1.0
    assert main(["preset", "rename", "b", "A / new", *d]) == 2
    assert main(["preset", "export", "b", str(tmp_path / "b.json"), *d]) == 0
    assert Preset.from_file(tmp_path / "b.json").chain.switches["imager"] is False
    assert main(["preset", "delete", "b", *d]) == 0
    assert main(["preset", "show", "b", *d]) == 2
    assert "no preset called 'b'" in capsys.readouterr().err


def test_env_var_and_default_dir(monkeypatch, tmp_path):
    from presets import default_presets_dir

    monkeypatch.setenv("REFMASTER_PRESETS", str(tmp_path / "env"))
    assert PresetStore().directory == tmp_path / "env"
    monkeypatch.delenv("REFMASTER_PRESETS")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert default_presets_dir() == tmp_path / "xdg" / "refmaster" / "presets"


def test_names_map_to_safe_files():
    assert file_stem("a/b:c") == "a_b_c" and file_stem(".hidden") == "_hidden"
    with pytest.raises(PresetError):
        Preset.new("", chain())
    with pytest.raises(PresetError):
        Preset.new("x\ny", chain())


# ------------------------------------------------------------------ concurrency and crashes

_SAVER = r"""
import sys
from engine import params as P
from presets import Preset, PresetStore
store = PresetStore(sys.argv[1])
who, n = sys.argv[2], int(sys.argv[3])
for i in range(n):
    name = f"shared{i % 5}" if i % 2 else f"{who}{i % 3}"
    ch = P.ChainParams.default().with_values(**{"gain.gain": (i % 40) - 20.0, "eq.band0_gain": 1.0 if who == "a" else -1.0})
    store.save(Preset.new(name, ch, notes=f"{who} {i}"))
print("done", who, n)
"""


def test_1000_concurrent_saves_from_two_processes(tmp_path):
    d = tmp_path / "presets"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", _SAVER, str(d), who, "500"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for who in ("a", "b")]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    files = sorted(d.glob("*.json"))
    assert {f.stem for f in files} == {f"shared{i}" for i in range(5)} | {f"{w}{i}" for w in "ab" for i in range(3)}
    for f in files:
        data = json.loads(f.read_text())            # every file is valid JSON ...
        pr = Preset.from_dict(data, str(f))          # ... and a valid preset
        who, i = pr.notes.split()
        assert pr.chain.values["gain.gain"] == (int(i) % 40) - 20.0  # content is one whole write
    assert not list(d.glob(".*.tmp"))
    print(f"1000 saves from 2 processes: {time.perf_counter() - t0:.1f} s")


_SLOW_SAVER = r"""
import sys
from engine import params as P
from presets import Preset, PresetStore
store = PresetStore(sys.argv[1])
i = 0
print("ready", flush=True)
while True:
    i += 1
    z = [float(i)] * 200000   # about 2 MB of JSON: the write takes a while
    store.save(Preset.new("big", P.ChainParams.default().with_values(**{"gain.gain": float(i % 20)}),
                          z_ref=z, notes=str(i)))
"""


def test_kill_9_during_save_leaves_previous_version(tmp_path):
    d = tmp_path / "presets"
    store = PresetStore(d)
    store.save(Preset.new("big", chain(), z_ref=[0.0] * 200000, notes="0"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng = np.random.default_rng(0)
    saw_temp = 0
    for attempt in range(4):
        p = subprocess.Popen([sys.executable, "-c", _SLOW_SAVER, str(d)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready"
            time.sleep(float(rng.uniform(0.05, 0.4)))
            deadline = time.monotonic() + 5.0
            while not list(d.glob(".*.tmp")) and time.monotonic() < deadline:
                pass  # kill as soon as a write is under way
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)
        saw_temp += bool(list(d.glob(".*.tmp")))  # the kill interrupted a write
        pr = Preset.from_file(d / "big.json")       # parses: an old or a new version, never a mix
        i = int(pr.notes)
        assert pr.z_ref is not None and len(pr.z_ref) == 200000 and set(pr.z_ref) == {float(i)}
        assert pr.chain.values["gain.gain"] == float(i % 20)
    # the store still lists it, and the next save removes temp files a killed writer left
    assert saw_temp >= 1
    assert [p.name for p in store.list() if not p.factory] == ["big"]
    store.save(store.get("big").updated(notes="after"))
    assert not list(d.glob(".*.tmp"))
    print(f"kill -9 x4 during saves: file intact every time; {saw_temp}/4 kills interrupted a write (temp file left)")
