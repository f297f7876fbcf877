"""Start-up, threads and the benchmark's own machinery (issue 14), asserted without timing anything.

Speed targets live in `refmaster bench master` (README, "Measured"), not here: a timed unit test
on a shared machine fails for the wrong reasons. What can be asserted is what makes the speed:
the commands that need no model never import torch or scipy; `--threads N` is the thread count
torch and numba run with; the automatic choice counts the cores other processes keep busy (and
not our own work); the benchmark measures a child's own peak memory and keeps a core busy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine import runtime
from engine.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
#: What a model-free command must not load (torch alone is 2–5 s of a 0.5 s budget).
HEAVY = ("torch", "scipy", "numba", "torchcomp", "matplotlib", "onnx", "onnxruntime", "pedalboard", "pyloudnorm")
PROBE = r"""
import json, sys
from bridge.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
print("\nPROBE" + json.dumps({"rc": rc, "loaded": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def _probe(*argv: str) -> dict:
    p = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    return json.loads(p.stdout.rsplit("PROBE", 1)[1])


@pytest.mark.parametrize("argv", [("--help",), ("params",), ("params", "--json"), ("preset", "list"),
                                  ("osc", "addresses"), ("osc", "dialect"), ("bench", "--help")])
def test_model_free_commands_start_without_torch(argv, tmp_path):
    if argv[0] == "preset":
        argv = argv + ("--presets", str(tmp_path))
    r = _probe(*argv)
    assert r["rc"] == 0
    assert r["loaded"] == [], f"`refmaster {' '.join(argv)}` imported {r['loaded']}"


def test_free_threads_leave_the_busy_cores_to_the_others():
    assert runtime.free_threads(2, 0.05) == 2          # idle
    assert runtime.free_threads(2, 1.0) == 1           # one core kept busy: one thread
    assert runtime.free_threads(2, 0.7) == 1
    assert runtime.free_threads(2, 0.3) == 1           # a quarter of a core taken slows every operation
    assert runtime.free_threads(2, 0.2) == 2           # a little background load does not count
    assert runtime.free_threads(4, 1.1) == 3
    assert runtime.free_threads(2, 5.0) == 1           # never below one
    assert runtime.free_threads(8, None) == 8          # not measurable: every core


@pytest.mark.parametrize("niced", [False, True])
def test_busy_elsewhere_is_the_machines_busy_time_less_our_own(monkeypatch, niced):
    hz = runtime._ticks_per_second()
    monkeypatch.setattr(runtime, "_niced", lambda: niced)
    a = runtime.CpuSnapshot(wall=10.0, busy=1000, niced=500, own_cpu=3.0)
    # over 2 s: 3 cores' worth of un-niced busy time (2 s of it ours: 1 core), 1 core's worth niced
    b = runtime.CpuSnapshot(wall=12.0, busy=1000 + int(6 * hz), niced=500 + int(2 * hz), own_cpu=5.0)
    expect = (6 + (2 if niced else 0) - 2) / 2
    assert runtime.busy_elsewhere(a, b) == pytest.approx(expect)
    assert runtime.busy_elsewhere(a, runtime.CpuSnapshot(12.0, None, None, 5.0)) is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc/stat")
def test_a_process_spinning_elsewhere_counts_as_a_busy_core():
    from bridge.bench.master import BURNER

    burner = subprocess.Popen([sys.executable, "-c", BURNER, "30"])
    try:
        time.sleep(0.3)
        start = runtime.CpuSnapshot.take()
        time.sleep(1.0)
        busy = runtime.busy_elsewhere(start)
    finally:
        burner.kill()
        burner.wait()
    assert busy is not None and busy >= 0.7, f"a spinning process showed as {busy} cores busy"


def test_threads_option_is_checked_before_any_work(capsys, tmp_path):
    from bridge.cli import main

    for bad in ("0", "-2", "100000"):
        code = main(["master", str(tmp_path / "missing.wav"), "--ref", str(tmp_path / "r.wav"),
                     "-o", str(tmp_path / "o.wav"), "--threads", bad])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("refmaster: error: --threads") and "\n" not in err
    with pytest.raises(UsageError):
        runtime.check_threads(True)
    assert runtime.choose_threads(3).threads == 3


def test_set_threads_sizes_torch_and_numba():
    import numba
    import torch

    before_t, before_n = torch.get_num_threads(), numba.get_num_threads()
    try:
        runtime.set_threads(1)
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1
        if runtime.available_cores() >= 2 and numba.config.NUMBA_NUM_THREADS >= 2:
            runtime.set_threads(2)
            assert torch.get_num_threads() == 2 and numba.get_num_threads() == 2
    finally:
        torch.set_num_threads(before_t)
        numba.set_num_threads(before_n)


def test_master_threads_option_is_the_thread_count_it_masters_with(tmp_path, capsys, monkeypatch):
    """--threads N is torch's thread count, and the three analyses of the report run on that many
    threads (without the bark balance, which only a plot shows)."""
    import concurrent.futures

    import torch

    from bridge.cli import main
    from engine.analysis import features
    from engine.model.synth import synth_song

    analysed, pools = [], []
    real_analyze, real_pool = features.analyze, concurrent.futures.ThreadPoolExecutor
    monkeypatch.setattr(features, "analyze", lambda a, rate=44100, spectrum=True:
                        analysed.append(spectrum) or real_analyze(a, rate, spectrum))
    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor",
                        lambda max_workers=None: pools.append(max_workers) or real_pool(max_workers))

    for name, seed in (("in.wav", 31), ("ref.wav", 32)):
        sf.write(tmp_path / name, np.clip(synth_song(seed, 2.0), -1, 1).T, 44100, subtype="PCM_24")
    before = torch.get_num_threads()
    try:
        code = main(["master", str(tmp_path / "in.wav"), "--ref", str(tmp_path / "ref.wav"), "-o", str(tmp_path / "o.wav"),
                     "--no-ito", "--json", "--quiet", "--presets", str(tmp_path / "p"), "--threads", "1"])
        out = capsys.readouterr().out
        assert code == 0
        assert torch.get_num_threads() == 1
        report = json.loads(out)
        assert report["threads"]["threads"] == 1 and report["threads"]["requested"] == 1
        assert analysed == [False, False, False] and pools[-1] == 1, (analysed, pools)   # the last pool: the analyses
        code = main(["master", str(tmp_path / "in.wav"), "--ref", str(tmp_path / "ref.wav"), "-o", str(tmp_path / "o.wav"),
                     "--no-ito", "--json", "--quiet", "--presets", str(tmp_path / "p"), "--threads", "2"])
        assert code == 0 and torch.get_num_threads() == 2 and pools[-1] == 2
        capsys.readouterr()
        for stage in ("imports", "decode", "model_load", "fx_norm", "embed", "render", "write", "preset_save", "analysis"):
            assert report["seconds"][stage] >= 0.0, stage
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_bench_measures_the_childs_own_peak_memory(tmp_path):
    """A child that holds 300 MB reports about 300 MB more than one that holds nothing, whatever
    this (test) process holds."""
    from bridge.bench.master import PEAK_CHILD, child_env, run_measured

    def peak(extra_mb: int) -> float:
        # the benchmark's child running `refmaster params`, after holding extra_mb
        f = tmp_path / f"peak{extra_mb}"
        code = f"import numpy as np; a = np.ones({extra_mb} * 2**20 // 8)"
        subprocess.run([sys.executable, "-c", code + "\n" + PEAK_CHILD, str(f), "refmaster", "params"], cwd=REPO,
                       check=True, capture_output=True, timeout=120)
        return int(f.read_text()) / 1024

    ballast = np.ones(400 * 2**20 // 8)  # this process: 400 MB more than the children
    measured = run_measured("refmaster", ["params"], child_env(tmp_path / "pyc"), tmp_path)
    small, big = peak(0), peak(300)
    del ballast
    assert measured["rc"] == 0 and measured["peak_rss_mb"] < 300, \
        f"the child reported {measured['peak_rss_mb']:.0f} MB: the parent's peak leaked into it"
    assert 280 < big - small < 340


def test_bench_pairs_are_different_songs_with_inputs_of_two_to_four_minutes(tmp_path):
    from bridge.bench.master import song_pairs

    for name, seconds in (("a.wav", 130), ("b.wav", 200), ("c.wav", 60), ("d.wav", 300)):
        sf.write(tmp_path / name, np.zeros((int(seconds * 100), 2), np.float32), 100)
    pairs, skipped = song_pairs(tmp_path, count=3)
    assert [(x.name, r.name) for x, r in pairs] == [("a.wav", "d.wav"), ("b.wav", "d.wav"), ("a.wav", "b.wav")]
    every = [(x.name, r.name) for x, r in song_pairs(tmp_path, count=100)[0]]
    assert every == [("a.wav", "d.wav"), ("b.wav", "d.wav"), ("a.wav", "b.wav"), ("b.wav", "a.wav"),
                     ("a.wav", "c.wav"), ("b.wav", "c.wav")]
    assert any(s.startswith("c.wav") for s in skipped) and any(s.startswith("d.wav") for s in skipped)
    assert song_pairs(tmp_path, ["c.wav", "d.wav"])[0] == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_bench_burner_keeps_a_core_busy_until_the_block_ends():
    from bridge.bench.master import Burner

    b = Burner()
    try:
        with b:
            states = []
            for _ in range(10):  # a spinning process is always runnable ("R"), a sleeping one is not
                with open(f"/proc/{b.proc.pid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
                time.sleep(0.05)
            assert states.count("R") >= 8, f"the burner was not running: states {states}"
        assert b.proc.poll() is not None, "the burner outlived its block"
    finally:
        if b.proc is not None and b.proc.poll() is None:
            b.proc.kill()
            b.proc.wait()


def test_the_compiled_compressor_loop_is_loaded_from_a_cache_in_the_next_process():
    """numba compiles torchcomp's recursion once; later processes load it (2.4 s of each `master` before)."""
    code = ("import torch\nfrom engine.dsp.chain import render_chain\nfrom engine import params as P\n"
            "from engine.dsp.dynamics import compressor_kernel\n"
            "render_chain(0.1 * torch.randn(1, 2, 4410), P.default_tensor())\n"
            "print('HITS', sum(compressor_kernel.stats.cache_hits.values()))")
    hits = []
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
        hits.append(int(p.stdout.rsplit("HITS", 1)[1]))
    assert hits[1] >= 1, f"the second process compiled again (cache hits {hits})"


def test_cascade_response_gradient_is_autograds_through_the_same_arithmetic():
    """The closed-form backward of sos_response (45 % of an ITO step was autograd through it)
    equals autograd's, for the EQ's six sections and for a crossover's low-pass (its zero sits
    exactly on Nyquist, where dividing by the numerator would give inf)."""
    import torch

    from engine.dsp import filters as F
    from engine.dsp.chain import eq_sections
    from engine.model.manipulation import random_manipulation

    g = torch.Generator().manual_seed(0)
    params, _ = random_manipulation(g, 3)
    low, _ = F.crossover_sections(torch.tensor([150.0, 400.0]), torch.tensor([3000.0, 6000.0]), 44100.0)
    n = 2 * F.IIR_TAIL
    for sos in (eq_sections(params.double()), low.double()):
        assert torch.equal(F.sos_response(sos, n), F._section_responses(sos, n)[2])   # forward unchanged
        w = torch.randn(sos.shape[0], F.IIR_TAIL, dtype=torch.float64, generator=g)
        grads = []
        for fn in (lambda s: F._section_responses(s, n)[2], lambda s: F.sos_response(s, n)):
            s = sos.clone().requires_grad_(True)
            (torch.fft.irfft(fn(s), n)[:, :F.IIR_TAIL] * w).sum().backward()
            grads.append(s.grad)
        assert torch.isfinite(grads[1]).all()
        assert float((grads[0] - grads[1]).abs().max()) <= 1e-9 * float(grads[0].abs().max())
    small = eq_sections(params[:1].double()).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: torch.view_as_real(F.sos_response(s, 64)), (small,))


# -- work done once, not again and again (same numbers, less time)

def test_loudness_match_renders_the_chain_before_the_gain_once(monkeypatch):
    """The full-track loudness match renders EQ, saturation and multiband once (they do not change)
    and only gain, imager and limiter per correction; the result is the whole chain's."""
    import torch

    from conftest import active_params
    from engine.dsp import chain as C
    from engine.mastering import matches as M
    from engine.model.synth import synth_song

    x = torch.from_numpy(synth_song(3, 6.0)).unsqueeze(0)
    theta = active_params()
    rendered = []
    real = C.render_chain

    def counting(audio, params, switches=None, *a, **k):
        on = torch.ones(len(C.P.MODULES), dtype=torch.bool) if switches is None else switches.reshape(-1).bool()
        rendered.append(bool(on[C.P.MODULES.index("multiband")]))
        return real(audio, params, switches, *a, **k)

    monkeypatch.setattr(M, "render_chain", counting)
    th, y, info = M.match_loudness(x, theta, -10.0)
    assert info["renders"] >= 3 and rendered.count(True) == 1, rendered
    with torch.no_grad():
        whole = real(x, th, check_params=False)
    assert float((y - whole).abs().max()) < 1e-5
    for gain in (-6.0, 3.0, 12.0):          # any gain (and limiter setting) after the pre-render
        t = theta.clone()
        t[C.P.PARAM_INDEX["gain.gain"]] = gain
        t[C.P.PARAM_INDEX["limiter.threshold"]] = -12.0
        with torch.no_grad():
            assert float((M.split_render(x, theta)(t) - real(x, t, check_params=False)).abs().max()) < 1e-5
    # a click at the very end: the limiter's look-ahead over the last samples reads the multiband's
    # ringing after the end, as in the whole chain (reading silence there is 2e-6 off)
    click = 0.01 * torch.randn(1, 2, 44100, generator=torch.Generator().manual_seed(0))
    click[..., -3] = 0.9
    t = theta.clone()
    t[C.P.PARAM_INDEX["limiter.threshold"]] = -20.0
    with torch.no_grad():
        assert float((M.split_render(click, t)(t) - real(click, t, check_params=False)).abs().max()) < 2e-7


def test_integrated_loudness_is_pyloudnorms():
    import pyloudnorm

    from engine.analysis.features import integrated_loudness
    from engine.model.synth import synth_song

    x = synth_song(4, 12.0).astype(np.float64)
    for n in (8000, 20000, 44100 * 3 + 17, x.shape[1]):
        a = x[:, :n]
        padded = np.pad(a, ((0, 0), (0, max(0, 17640 - n))))
        assert integrated_loudness(a) == pytest.approx(pyloudnorm.Meter(44100).integrated_loudness(padded.T), abs=1e-9)
    assert integrated_loudness(np.zeros((2, 44100))) == float("-inf")


def test_long_spectra_are_summed_in_chunks_to_the_same_power(monkeypatch):
    import torch

    from engine.analysis import features as F

    x = torch.randn(1, 2, 44100 * 20, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    chunked = F.spectrum_power(x)
    monkeypatch.setattr(F, "SPECTRUM_CHUNK_FRAMES", 10 ** 9)
    whole = F.spectrum_power(x)
    assert float(((chunked - whole).abs() / whole).max()) < 1e-12


def test_analysis_without_the_spectrum_reports_the_same_figures():
    from engine.analysis.features import analyze
    from engine.model.synth import synth_song

    x = synth_song(8, 6.0)
    full, brief = analyze(x), analyze(x, spectrum=False)
    assert "bark_mid_db" in full and "bark_mid_db" not in brief
    assert brief == {k: v for k, v in full.items() if k in brief}
    assert set(full) - set(brief) == {"bark_centres_hz", "bark_mid_db", "bark_side_db"}
    from engine.analysis.features import Analysis

    a = Analysis(spectrum=False)
    a.add(x)
    assert a._frames == 0 and a._ms.shape[1] == 0, "the spectrum was computed anyway"
