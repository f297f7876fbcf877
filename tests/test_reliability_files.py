"""Files and commands as a careless or hostile user meets them (issue 10, items 6–11).

Each refusal is checked the same way (:func:`refused`): exit status 2, exactly one line on
stderr (the file descriptor, so a native decoder's own lines count too), no traceback, and
nothing lost: the input's hash, the previous preset and the folder's listing are unchanged,
and no temporary file is left behind.
"""

import hashlib
import json
import math
import os
import shutil
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
from engine.errors import RefmasterError
from presets import Preset, PresetError, PresetStore
from presets.fingerprint import FP_VERSION

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def listing(folder) -> dict:
    """Every file below ``folder`` (hidden ones too) with its hash."""
    return {str(p.relative_to(folder)): sha(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def run(capfd, *argv):
    code = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def refused(capfd, *argv, needle: str = "") -> str:
    """Run a command that must be refused; return its one error line."""
    code, out, err = run(capfd, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("refmaster: error: "), err
    assert "Traceback" not in err
    assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


@pytest.fixture
def wav(tmp_path, song):
    f = tmp_path / "song.wav"
    sf.write(f, song[:, : 3 * 44100].T, 44100, subtype="PCM_24")
    return f


@pytest.fixture
def ref_wav(tmp_path):
    from engine.model.synth import synth_song

    f = tmp_path / "ref.wav"
    sf.write(f, synth_song(21, 2.0).T, 44100, subtype="PCM_24")
    return f


@pytest.fixture
def params_file(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(P.ChainParams.default().with_values(**{"gain.gain": 2.0}).to_json())
    return f


@pytest.fixture
def no_work(monkeypatch):
    """Any of the commands' heavy steps fails the test: outputs must be checked before them."""
    import bridge.cli.master
    import engine.io.reader
    import engine.model.synth
    import export.factory
    import export.render  # noqa: F401  (binds the real names it imports before they are patched)

    def work(*a, **k):
        raise AssertionError("the work started before the output was checked")

    monkeypatch.setattr(export.factory, "make_chain", work)
    monkeypatch.setattr(bridge.cli.master, "load_audio", work)
    monkeypatch.setattr(engine.model.synth, "synth_song_with_info", work)
    monkeypatch.setattr(engine.io.reader, "AudioReader", work)


# ------------------------------------------------------------------ 6. an output that is an input

def _alias(kind: str, target: Path) -> Path:
    if kind == "same":
        return target
    if kind == "dotted":
        return target.parent / "." / target.name
    alias = target.parent / f"{kind}-{target.name}"
    (os.symlink if kind == "symlink" else os.link)(target, alias)
    return alias


@pytest.mark.parametrize("kind", ["same", "dotted", "symlink", "hardlink"])
def test_render_refuses_to_write_over_its_input(capfd, tmp_path, wav, params_file, no_work, kind):
    before, folder = sha(wav), listing(tmp_path)
    out = _alias(kind, wav)
    folder = listing(tmp_path)
    refused(capfd, "render", wav, "--params", params_file, "-o", out, needle="would destroy the input")
    assert sha(wav) == before and listing(tmp_path) == folder


@pytest.mark.parametrize("kind", ["same", "hardlink"])
def test_master_refuses_to_write_over_its_input_or_reference(capfd, tmp_path, wav, ref_wav, no_work, kind):
    presets = tmp_path / "presets"
    PresetStore(presets).save(Preset.new("old", P.ChainParams.default()))
    hashes = {p: sha(p) for p in (wav, ref_wav)}
    for target in (wav, ref_wav):
        out = _alias(kind, target)
        folder = listing(tmp_path)
        refused(capfd, "master", wav, "--ref", ref_wav, "-o", out, "--presets", presets, "--no-ito", "--quiet",
                needle="would destroy the input")
        assert listing(tmp_path) == folder
    assert {p: sha(p) for p in hashes} == hashes


def test_plots_and_exports_refuse_an_input_too(capfd, tmp_path, wav, params_file, no_work):
    before = sha(wav)
    png = tmp_path / "song.png"
    os.link(wav, png)   # a hard link with a plot's name
    refused(capfd, "analyze", wav, "--plot", png, needle="would destroy the input")
    onnx = tmp_path / "p.onnx"
    os.link(params_file, onnx)
    refused(capfd, "export", params_file, "--onnx", onnx, needle="would destroy the input")
    assert sha(wav) == before and sha(png) == before


# ------------------------------------------------------------------ 7. damaged presets and JSON files

def _preset_text(**chain_values) -> str:
    return Preset.new("x", P.ChainParams.default().with_values(**chain_values)).to_json()


#: name -> (file text, what the one line says)
DAMAGE = {
    "deep": ("[" * 100_000 + "]" * 100_000, "nested 100000 levels deep"),
    "deep-in-notes": (_preset_text().replace('"notes": ""', '"notes": ' + "[" * 5000 + "]" * 5000), "nested"),
    "bigint": (_preset_text(**{"gain.gain": 3.0}).replace('"gain": 3.0', '"gain": ' + "9" * 400), "integer of 400 digits"),
    "huge-float": (_preset_text(**{"gain.gain": 3.0}).replace('"gain": 3.0', '"gain": 1e400'), "inf"),
    "schema-digits": (json.dumps({"schema": "refmaster.preset/" + "9" * 5000}), "not a refmaster preset (schema"),
    "name-is-a-list": (_preset_text().replace('"name": "x"', '"name": [1, 2]'), "non-empty string"),
    "chain-is-a-number": (json.dumps({**json.loads(_preset_text()), "chain": 7}), "expected a JSON object"),
    "z-ref-of-strings": (json.dumps({**json.loads(_preset_text()), "z_ref": ["a"]}), "z_ref[0]"),
    "fingerprint-digits": (json.dumps({**json.loads(_preset_text()), "reference": {"file": None, "fingerprint":
                           f"{FP_VERSION}:" + "9" * 5000 + ":00"}}), "fingerprint"),
}


@pytest.fixture
def damaged_store(tmp_path):
    store = PresetStore(tmp_path / "presets")
    store.save(Preset.new("good", P.ChainParams.default().with_values(**{"gain.gain": 4.0})))
    return store


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_one_damaged_preset_is_skipped_with_one_line_and_breaks_nothing(capfd, damaged_store, tmp_path, wav,
                                                                         damage):
    text, needle = DAMAGE[damage]
    bad = damaged_store.directory / "damaged.json"
    bad.write_text(text)
    good_before = sha(damaged_store.directory / "good.json")
    code, out, err = run(capfd, "preset", "list", "--presets", damaged_store.directory)
    warnings = [line for line in err.splitlines() if line.strip()]
    assert code == 0 and "good" in out, err
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: skipped {bad}") and needle in warnings[0], err
    assert run(capfd, "preset", "show", "good", "--presets", damaged_store.directory)[0] == 0
    refused(capfd, "preset", "show", "damaged", "--presets", damaged_store.directory, needle=needle)
    code, out, err = run(capfd, "render", wav, "--preset", "good", "--presets", damaged_store.directory,
                         "-o", tmp_path / "out.wav")
    assert code == 0 and (tmp_path / "out.wav").exists(), err
    # importing the damaged file, or rendering with it as a parameter file: one line each
    refused(capfd, "preset", "import", bad, "--name", "again", "--presets", damaged_store.directory, needle=needle)
    assert not (damaged_store.directory / "again.json").exists()
    assert sha(damaged_store.directory / "good.json") == good_before
    assert not list(damaged_store.directory.glob(".*.tmp"))


@pytest.mark.parametrize("text,needle", [
    ("[" * 100_000 + "]" * 100_000, "nested 100000 levels deep"),
    (P.ChainParams.default().to_json().replace('"gain": 0.0', '"gain": ' + "9" * 400), "integer of 400 digits"),
    (P.ChainParams.default().to_json().replace('"gain": 0.0', '"gain": 1e400'), "gain.gain"),
    (P.ChainParams.default().to_json().replace('"gain": 0.0', '"gain": [0.0]'), "gain.gain"),
])
def test_parameter_and_dialect_files_are_read_within_limits(capfd, tmp_path, wav, text, needle):
    f = tmp_path / "bad.json"
    f.write_text(text)
    refused(capfd, "render", wav, "--params", f, "-o", tmp_path / "o.wav", needle=needle)
    refused(capfd, "export", f, "--onnx", tmp_path / "o.onnx", needle=needle)
    assert not (tmp_path / "o.wav").exists() and not (tmp_path / "o.onnx").exists()
    if "levels" in needle or "digits" in needle:   # a dialect map is read by the same reader
        refused(capfd, "osc", "dialect", f, needle=needle)


@pytest.mark.parametrize("variables", [[1, 2], [[1]], 3, "track"])
def test_a_dialect_map_with_wrong_types_is_one_line(capfd, tmp_path, variables):
    from bridge.osc.dialects import DIALECT_DIR

    data = json.loads((DIALECT_DIR / "reaper.json").read_text())
    data["variables"] = variables
    f = tmp_path / "mine.json"
    f.write_text(json.dumps(data))
    refused(capfd, "osc", "dialect", f, needle="'variables' must be an object")


@pytest.mark.parametrize("schema", [None, "refmaster.chain/2", "refmaster.chain/" + "1" * 5000, 7])
def test_render_checks_the_parameter_schema_string(capfd, tmp_path, wav, schema):
    data = P.ChainParams.default().to_dict()
    if schema is None:
        del data["schema"]
    else:
        data["schema"] = schema
    f = tmp_path / "p.json"
    f.write_text(json.dumps(data))
    line = refused(capfd, "render", wav, "--params", f, "-o", tmp_path / "o.wav", needle="schema")
    assert P.SCHEMA_TAG in line and len(line) < 300


def test_fuzzed_preset_fields_are_one_preset_error_each(tmp_path):
    """Every field of a preset, replaced by each of a set of wrong values, is a PresetError (never
    another exception), and the store lists the good preset beside all of those files at once."""
    base = Preset.new("good", P.ChainParams.default(), reference="r.wav", z_ref=[0.1, 0.2], model_version="m",
                      ito={"settings": {"steps": 3}, "loss_history": [1.0, 0.5]}, notes="n").to_dict()
    wrong = [None, True, -1, 1e308, "x", [], {}, [[]], {"a": {}}, 10 ** 19, [None], ["x"], "\ud800", "a\u202eb",
             "9" * 5000, float("nan"), f"{FP_VERSION}:\u00b2:00", f"{FP_VERSION}:{'9' * 5000}:00"]

    def paths(d, pre=()):
        yield pre
        items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
        for k, v in items:
            yield from paths(v, pre + (k,))

    folder = tmp_path / "presets"
    folder.mkdir()
    n = 0
    for path in paths(base):
        for value in wrong:
            d = json.loads(json.dumps(base))
            if path:
                t = d
                for k in path[:-1]:
                    t = t[k]
                t[path[-1]] = value
            else:
                d = value
            try:
                Preset.from_dict(d, "f")
            except PresetError:
                pass
            if n % 7 == 0:
                (folder / f"f{n}.json").write_text(json.dumps(d, allow_nan=True), encoding="utf-8", errors="surrogatepass")
            n += 1
    assert n > 1000
    PresetStore(folder).save(Preset.new("good", P.ChainParams.default()))
    presets, problems = PresetStore(folder, factory_dir=None).scan()
    assert "good" in [p.name for p in presets] and len(presets) + len(problems) == len(list(folder.glob("*.json")))


def test_master_masters_and_saves_its_preset_beside_a_damaged_one(capfd, damaged_store, tmp_path, wav, ref_wav):
    bad = damaged_store.directory / "damaged.json"
    bad.write_text(DAMAGE["bigint"][0])
    before = sha(bad)
    code, out, err = run(capfd, "master", wav, "--ref", ref_wav, "-o", tmp_path / "m.wav", "--presets",
                         damaged_store.directory, "--no-ito", "--quiet")
    assert code == 0 and "Traceback" not in err, err
    assert damaged_store.get("ref").reference == "ref.wav" and sha(bad) == before


def test_serve_saves_the_session_on_exit_beside_a_damaged_preset(tmp_path, wav):
    from pythonosc.udp_client import SimpleUDPClient

    store = PresetStore(tmp_path / "presets")
    store.save(Preset.new("live", P.ChainParams.default()))
    (store.directory / "damaged.json").write_text("[" * 100_000 + "]" * 100_000)
    record = tmp_path / "rec.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "serve", "--input", str(wav), "--preset", "live",
                             "--presets", str(store.directory), "--jack", "off", "-o", str(tmp_path / "live.wav"),
                             "--record", str(record), "--osc-port", "0"],
                            cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        while port is None:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            if line.startswith("listening: osc.udp://"):
                port = int(line.split("osc.udp://")[1].split("/")[0].rsplit(":", 1)[1])
        SimpleUDPClient("127.0.0.1", port).send_message("/refmaster/param/gain/gain", 5.5)
        deadline = time.monotonic() + 20
        while "gain.gain" not in (record.read_text() if record.exists() else ""):   # applied and recorded
            assert time.monotonic() < deadline, "the change was not applied"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "saved preset 'live'" in out, (out, err)
    assert store.get("live").chain.values["gain.gain"] == 5.5


# ------------------------------------------------------------------ 8. unwritable outputs, before any work

def _unwritable(kind: str, tmp_path: Path, name: str) -> Path:
    if kind == "proc":
        return Path("/proc") / name
    if kind == "folder":
        d = tmp_path / name
        d.mkdir()
        return d
    if kind == "missing-folder":
        return tmp_path / "no-such-folder" / name
    if kind == "read-only-folder":
        if IS_ROOT:
            pytest.skip("root writes into read-only folders (/proc and /sys stand for them here)")
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d / name
    if kind == "immutable-file":
        f = tmp_path / name
        f.write_bytes(b"previous")
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(f)], capture_output=True).returncode:
            pytest.skip("chattr +i is not allowed here")
        return f
    raise ValueError(kind)


#: command -> (the name of the file it writes, its arguments for that output)
COMMANDS = {
    "render": ("out.wav", lambda o, wav, ref, params, presets: ["render", wav, "--params", params, "-o", o]),
    "synth": ("out.wav", lambda o, wav, ref, params, presets: ["synth", "--seconds", "1", "-o", o]),
    "master": ("out.wav", lambda o, wav, ref, params, presets: ["master", wav, "--ref", ref, "-o", o,
                                                                "--presets", presets, "--no-ito", "--quiet"]),
    "master-plot": ("out.png", lambda o, wav, ref, params, presets: ["master", wav, "--ref", ref, "-o", wav.parent / "m.wav",
                                                                     "--plot", o, "--presets", presets, "--no-ito"]),
    "analyze-plot": ("out.png", lambda o, wav, ref, params, presets: ["analyze", wav, "--plot", o]),
    "preset-export": ("out.json", lambda o, wav, ref, params, presets: ["preset", "export", "kept", o,
                                                                        "--presets", presets]),
    "export-onnx": ("out.onnx", lambda o, wav, ref, params, presets: ["export", params, "--onnx", o]),
}


@pytest.mark.parametrize("kind", ["proc", "folder", "missing-folder", "read-only-folder", "immutable-file"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unwritable_output_is_refused_before_any_work(capfd, tmp_path, wav, ref_wav, params_file, no_work,
                                                         kind, command):
    if command == "preset-export" and kind == "folder":
        pytest.skip("`preset export NAME FOLDER` writes into the folder")
    presets = tmp_path / "presets"
    PresetStore(presets).save(Preset.new("kept", P.ChainParams.default()))
    kept = sha(presets / "kept.json")
    name, argv = COMMANDS[command]
    out = _unwritable(kind, tmp_path, name)
    folder = listing(tmp_path)
    try:
        refused(capfd, *argv(out, wav, ref_wav, params_file, presets))
    finally:
        if kind == "immutable-file":
            subprocess.run(["chattr", "-i", str(out)], capture_output=True)
    assert listing(tmp_path) == folder and sha(presets / "kept.json") == kept


def test_master_refuses_a_presets_folder_it_could_not_save_to_before_any_work(capfd, tmp_path, wav, ref_wav,
                                                                            no_work):
    refused(capfd, "master", wav, "--ref", ref_wav, "-o", tmp_path / "m.wav", "--presets", "/proc/refmaster-presets",
            "--no-ito", "--quiet", needle="presets cannot be saved")
    assert not (tmp_path / "m.wav").exists()


def test_check_output_explains_each_case(tmp_path):
    from engine.io.atomic import check_output

    f = tmp_path / "a.wav"
    f.write_bytes(b"x")
    assert check_output(tmp_path / "new.wav", (f,)) == tmp_path / "new.wav"
    for target, inputs, needle in ((f, (f,), "is the input"), (tmp_path, (), "is a folder"),
                                   (tmp_path / "nope" / "a.wav", (), "does not exist"),
                                   (Path("/proc/a.wav"), (), "cannot write"),
                                   (tmp_path / ("é" * 130 + ".wav"), (), "cannot write")):
        with pytest.raises(RefmasterError, match=needle):
            check_output(target, inputs)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ 9. analysis of any length in bounded memory

#: Analyses each file in turn in one process and prints the process's peak memory after each.
PEAKS_CHILD = ("import sys\nfrom bridge.cli import main\n"
               "def hwm():\n    return int([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])\n"
               "peaks = []\nfor f in sys.argv[1:]:\n    assert main(['analyze', f, '--json']) == 0\n    peaks.append(hwm())\n"
               "print('PEAKS_KIB', *peaks, file=sys.stderr)\n")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc")
def test_analyze_memory_does_not_grow_with_the_file(tmp_path):
    """A 30 s file, then a 120 s one, in one process: the second may not raise the peak by 45 MB
    (decoded whole it raises it by about 110 MB). 60 minutes, measured for the note: under 1 GB."""
    from engine.model.synth import synth_song

    piece = synth_song(5, 6.0)
    files = []
    for seconds in (30, 120):
        f = tmp_path / f"{seconds}s.wav"
        with sf.SoundFile(str(f), "w", 44100, 2, subtype="PCM_24") as out:
            for _ in range(seconds // 6):
                out.write(piece.T)
        files.append(f)
    p = subprocess.run([sys.executable, "-c", PEAKS_CHILD, *map(str, files)], capture_output=True, text=True,
                       cwd=str(REPO), timeout=600)
    assert p.returncode == 0, p.stderr
    small, big = (int(v) / 1024 for v in p.stderr.split("PEAKS_KIB")[1].split())
    assert big - small < 45, (small, big)


@pytest.mark.parametrize("rate", [44100, 48000])
def test_analyze_of_a_file_in_blocks_is_the_whole_signal_definitions(capfd, tmp_path, song, rate):
    """`refmaster analyze` (read and measured in blocks) reports what the definitions give on the
    whole decoded signal: the figures of the in-memory analysis before it streamed."""
    from engine.analysis import features as F
    from engine.io.audio import load_audio, resample

    x = song if rate == 44100 else resample(song, 44100, rate)
    f = tmp_path / "s.flac"
    sf.write(f, x.T, rate, subtype="PCM_24")
    code, out, err = run(capfd, "analyze", f, "--json")
    assert code == 0, err
    r = json.loads(out)
    a = load_audio(f).audio.astype(np.float64)
    import torch

    with torch.no_grad():
        feats = F.audio_features(torch.from_numpy(a)[None])
        bark = (20 / math.log(10)) * F.bark_spectrum(torch.from_numpy(a)[None])[0].numpy()
    tol = 1e-6 if rate == 44100 else 1e-3    # 48 kHz: the streaming resampler, to float32 rounding
    assert r["loudness_lufs"] == pytest.approx(F.integrated_loudness(a), abs=tol)
    assert r["true_peak_dbtp"] == pytest.approx(F.true_peak_db(a), abs=tol)
    assert r["sample_peak_dbfs"] == pytest.approx(F.sample_peak_db(a), abs=tol)
    assert r["rms_dbfs"] == pytest.approx(20 * math.log10(math.sqrt(np.mean(a ** 2))), abs=tol)
    assert r["crest_db"] == pytest.approx(float(feats["crest"][0].mean()), abs=tol)
    assert r["width"] == pytest.approx(float(feats["width"][0]), abs=tol)
    assert r["imbalance"] == pytest.approx(float(feats["imbalance"][0]), abs=tol)
    np.testing.assert_allclose(r["bark_mid_db"], bark[0] - bark[0].mean(), atol=tol * 10)
    np.testing.assert_allclose(r["bark_side_db"], bark[1] - bark[0].mean(), atol=tol * 10)
    assert r["drv_db"] == pytest.approx(F.drv_db(a), abs=tol * 10)
    assert r["duration_s"] == pytest.approx(8.0, abs=1e-4) and r["source_sample_rate"] == rate


def test_analysis_in_blocks_of_any_size_and_of_short_signals_is_the_definitions(song):
    from engine.analysis import features as F

    whole = F.analyze(song)
    a = F.Analysis()
    for i in range(0, song.shape[1], 12_345):
        a.add(song[:, i:i + 12_345])
    blocks = a.result()
    for k in ("loudness_lufs", "true_peak_dbtp", "crest_db", "width", "drv_db"):
        assert blocks[k] == pytest.approx(whole[k], abs=1e-9), k
    short = song[:, : int(0.3 * 44100)]      # shorter than a loudness gating block, a bark frame, 4 onsets
    r = F.analyze(short)
    assert r["loudness_lufs"] == pytest.approx(F.integrated_loudness(short), abs=1e-6)
    assert math.isnan(r["drv_db"]) and r["duration_s"] == pytest.approx(0.3)


# ------------------------------------------------------------------ 10. SIGTERM during a render

def test_sigterm_during_render_leaves_the_previous_output_and_no_temporary_file(tmp_path, params_file):
    from export.checks import write_long_synth

    src = tmp_path / "long.wav"
    write_long_synth(src, 1.0, distinct=1, piece_seconds=10.0)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "master.wav"
    out.write_bytes(b"the previous master")
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "render", str(src), "--params", str(params_file),
                             "--backend", "torch", "-o", str(out)], cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not [p for p in out_dir.iterdir() if p.name.startswith(".")]:   # the temporary file is being written
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGTERM
    assert sorted(p.name for p in out_dir.iterdir()) == ["master.wav"]
    assert out.read_bytes() == b"the previous master"


# ------------------------------------------------------------------ 11. the smaller ones

@pytest.mark.parametrize("name,needle", [
    ("\U0001f600" * 120, "bytes long"),                  # 120 characters, 480 bytes: File name too long
    ("x" * 121, "longer than 120"),
    ("invoice\u202egnp.exe", "bidirectional"),          # shows as "invoiceexe.png"
    ("a\u2066b", "bidirectional"),
    ("line\u2028break", "line breaks"),
])
def test_preset_names_refuse_bidi_controls_and_overlong_names_with_one_line(capfd, damaged_store, name, needle):
    before = listing(damaged_store.directory)
    line = refused(capfd, "preset", "rename", "good", name, "--presets", damaged_store.directory, needle=needle)
    assert "\u202e" not in line and "\u2066" not in line
    assert listing(damaged_store.directory) == before
    with pytest.raises(PresetError, match=needle):
        Preset.new(name, P.ChainParams.default())


def test_a_long_name_that_fits_the_file_system_is_kept(capfd, damaged_store):
    name = "\U0001f600" * 50   # 200 bytes: the longest file name a preset gets
    code, out, err = run(capfd, "preset", "rename", "good", name, "--presets", damaged_store.directory)
    assert code == 0, err
    assert damaged_store.get(name).chain.values["gain.gain"] == 4.0


@pytest.mark.parametrize("seconds", ["nan", "1e-9", "inf", "-1", "0"])
def test_synth_seconds_nan_or_tiny_is_one_line(capfd, tmp_path, seconds):
    refused(capfd, "synth", "--seconds", seconds, "-o", tmp_path / "s.wav", needle="--seconds")
    assert not list(tmp_path.iterdir())


def test_random_bytes_named_mp3_are_one_line_and_no_decoder_chatter(capfd, tmp_path, params_file):
    f = tmp_path / "noise.mp3"
    f.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    line = refused(capfd, "analyze", f, needle="cannot decode audio")
    assert "does not exist" not in line and "pipe" not in line
    refused(capfd, "render", f, "--params", params_file, "-o", tmp_path / "o.wav", needle="cannot decode audio")
    # the decoder's lines are the only ones held back: a successful read says nothing either
    from engine.io.audio import decoder_messages

    with decoder_messages() as said:
        os.write(2, b"Note: Illegal Audio-MPEG-Header 0x00000000 at offset 1.\nsomething else\n")
    assert said == ["Note: Illegal Audio-MPEG-Header 0x00000000 at offset 1."]
    assert capfd.readouterr().err == "something else\n"


def test_analyze_json_is_strict_for_a_dc_only_file(capfd, tmp_path):
    f = tmp_path / "dc.wav"
    sf.write(f, np.full((2 * 44100, 2), 0.25, np.float32), 44100)
    code, out, err = run(capfd, "analyze", f, "--json")
    assert code == 0, err

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    r = json.loads(out, parse_constant=no_constants)
    assert r["drv_db"] is None and r["duration_s"] == pytest.approx(2.0)


def test_created_files_honour_the_umask(tmp_path):
    """An output and a preset made under umask 027 are 0640, not mkstemp's 0600."""
    script = ("import os, sys\nos.umask(0o027)\nsys.path.insert(0, sys.argv[1])\n"
              "import numpy as np\nfrom engine.io.audio import write_audio\nfrom engine import params as P\n"
              "from presets import Preset, PresetStore\n"
              "write_audio(sys.argv[2] + '/o.wav', np.zeros((2, 100), np.float32))\n"
              "PresetStore(sys.argv[2] + '/presets').save(Preset.new('p', P.ChainParams.default()))\n")
    subprocess.run([sys.executable, "-c", script, str(REPO), str(tmp_path)], check=True, timeout=120)
    assert (tmp_path / "o.wav").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "presets" / "p.json").stat().st_mode & 0o777 == 0o640
