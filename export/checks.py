"""The export's acceptance measurements (`refmaster export-check`), as library functions.

* :func:`exactness`: ONNX streaming vs the offline Torch render, per block configuration.
* :func:`pedalboard_fidelity`: the pedalboard chain before and after calibration vs Torch.
* :func:`render_memory`: peak memory of a streaming render (:func:`export.render.render_command`,
  what `refmaster render --params` runs) on a long synthesised file.
* :func:`bench_render`: real-time factor and p99 block time per backend and block size.

Random Θ are draws of the training manipulation f (:func:`engine.model.manipulation.random_manipulation`)
with every module switched on, so every module is exercised.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import soundfile as sf
import torch

from engine import params as P
from engine.io.audio import load_audio
from engine.model.manipulation import random_manipulation
from engine.model.synth import synth_song
from engine.params import SAMPLE_RATE
from export.calibrate import calibrate, excerpt, fidelity, torch_render
from export.factory import make_chain
from export.onnx_stream import OnnxStreamingChain
from export.pedalboard_chain import PedalboardStreamingChain
from export.torch_stream import TorchSegmentChain

#: Block configurations of the exactness check: fixed sizes, and sizes drawn at random.
BLOCK_CONFIGS: Sequence[str] = ("32", "64", "128", "256", "512", "1024", "2048", "4096", "random")


def random_thetas(n: int, seed: int = 0) -> List[P.ChainParams]:
    """``n`` draws of f's parameters, every module on."""
    g = torch.Generator().manual_seed(seed)
    params, _ = random_manipulation(g, n)
    return [P.ChainParams.from_tensors(params[i], torch.ones(len(P.MODULES), dtype=torch.bool)) for i in range(n)]


def block_sizes(config: str, total: int, seed: int = 0) -> Iterable[int]:
    """Block sizes covering ``total`` samples: fixed, or log-uniform in 1…4096 for "random"."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < total:
        n = int(np.exp(rng.uniform(0.0, np.log(4096.0)))) if config == "random" else int(config)
        n = min(n, total - done)
        yield n
        done += n


def stream(chain, audio: np.ndarray, config: str, seed: int = 0) -> np.ndarray:
    """Stream ``audio`` through ``chain`` (flushed) and return the latency-compensated output."""
    chain.reset()
    x = np.concatenate([audio, np.zeros((2, chain.latency), np.float32)], axis=1)
    outs, pos = [], 0
    for n in block_sizes(config, x.shape[1], seed):
        outs.append(chain.process(x[:, pos:pos + n]))
        pos += n
    return np.concatenate(outs, axis=1)[:, chain.latency:]


def long_enough(files: Sequence[Path], seconds: float) -> List[Path]:
    """The files that hold at least ``seconds`` of audio (all of them if none does)."""

    keep = [f for f in files if sf.info(str(f)).duration >= seconds]
    return keep or list(files)


def load_excerpt(path, seconds: float, offset_s: float = 30.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``seconds`` of a song from ``offset_s`` (or from where it still fits), at ``sample_rate``
    (decoded at the file's rate and resampled: the check's material, not an audio path)."""
    from engine.io.audio import resample

    loaded = load_audio(path, rate=None)
    x = resample(loaded.audio, loaded.rate, sample_rate)
    n = int(seconds * sample_rate)
    start = max(0, min(int(offset_s * sample_rate), x.shape[1] - n))
    return np.ascontiguousarray(x[:, start:start + n])


def exactness(songs: Dict[str, np.ndarray], thetas: Sequence[P.ChainParams], configs: Sequence[str] = BLOCK_CONFIGS,
              rotate: bool = False, progress: Optional[Callable[[str], None]] = None,
              sample_rate: int = SAMPLE_RATE) -> List[dict]:
    """Max |ONNX stream − Torch render| for Θ ``i`` on song ``i mod len(songs)`` (audio at ``sample_rate``).

    ``rotate=False``: every Θ with every block configuration; ``rotate=True``: Θ ``i`` with
    configuration ``i mod len(configs)`` only (the quick version the test runs).
    Returns one row per (Θ, configuration).
    """

    names = sorted(songs)
    chain = OnnxStreamingChain(sample_rate=sample_rate)
    rows = []
    for i, theta in enumerate(thetas):
        song = names[i % len(names)]
        x = songs[song]
        ref = torch_render(x, theta, sample_rate)
        chain.set_params(theta)
        for j, config in enumerate(configs):
            if rotate and j != i % len(configs):
                continue
            t0 = time.perf_counter()
            y = stream(chain, x, config, seed=i)
            rows.append({"theta": i, "song": song, "blocks": config, "max_abs_diff": float(np.abs(y - ref).max()),
                         "peak": float(np.abs(ref).max()), "seconds": x.shape[1] / sample_rate,
                         "wall_s": time.perf_counter() - t0})
            if progress:
                progress(f"theta {i:2d} {song[:28]:28s} blocks {config:>6s}: max |diff| {rows[-1]['max_abs_diff']:.2e}")
    return rows


def pedalboard_fidelity(songs: Dict[str, np.ndarray], thetas: Sequence[P.ChainParams], evaluations: int = 200,
                        calibration_seconds: float = 20.0,
                        progress: Optional[Callable[[str], None]] = None, sample_rate: int = SAMPLE_RATE) -> List[dict]:
    """For every song × Θ: fidelity of the pedalboard chain to the Torch render, uncalibrated and
    after calibrating on that song (the same excerpt the figures are measured on), at ``sample_rate``."""

    sr = sample_rate
    rows = []
    for song, audio in sorted(songs.items()):
        x = excerpt(audio, calibration_seconds, sr)
        for i, theta in enumerate(thetas):
            ref = torch_render(x, theta, sr)
            before = fidelity(PedalboardStreamingChain(theta, sample_rate=sr).render(x), ref, sr)
            result = calibrate(theta, x, seconds=calibration_seconds, max_evaluations=evaluations, source=song,
                               sample_rate=sr)
            after = fidelity(PedalboardStreamingChain(theta, settings=result.settings, sample_rate=sr).render(x), ref, sr)
            rows.append({"song": song, "theta": i, "before": before, "after": after,
                         "search_loudness_gap_lu": result.settings.info["loudness_gap_lu"],
                         "evaluations": result.evaluations, "calibration_s": result.seconds})
            if progress:
                progress(f"{song[:28]:28s} theta {i}: loudness {before['loudness_lu']:+.2f} -> {after['loudness_lu']:+.2f} LU, "
                         f"bark {before['bark_mid_db_rms']:.2f} -> {after['bark_mid_db_rms']:.2f} dB, "
                         f"crest {before['crest_db']:+.2f} -> {after['crest_db']:+.2f} dB, "
                         f"trim step {result.settings.info['loudness_gap_lu']:+.2f} LU "
                         f"({result.evaluations} evaluations, {result.seconds:.0f} s)")
    return rows


def torch_segments(songs: Dict[str, np.ndarray], thetas: Sequence[P.ChainParams],
                   progress: Optional[Callable[[str], None]] = None) -> List[dict]:
    """Max |segmented Torch stream − whole-file Torch render| (`render --backend torch`)."""

    rows = []
    for song, x in sorted(songs.items()):
        for i, theta in enumerate(thetas):
            chain = TorchSegmentChain(theta)
            y = stream(chain, x, "65536")
            d = float(np.abs(y - torch_render(x, theta)).max())
            rows.append({"song": song, "theta": i, "max_abs_diff": d, "segments": -(-x.shape[1] // chain.segment),
                         "seconds": x.shape[1] / SAMPLE_RATE})
            if progress:
                progress(f"{song[:28]:28s} theta {i}: {rows[-1]['segments']} segments, max |diff| {d:.2e}")
    return rows


def write_long_synth(path, minutes: float, distinct: int = 4, seed: int = 100, piece_seconds: float = 60.0) -> float:
    """Write ``minutes`` of synthesised music (``distinct`` songs of ``piece_seconds``, cycled)
    as 24-bit wav, a piece at a time; returns the length in seconds."""


    pieces = [synth_song(seed + i, piece_seconds) for i in range(distinct)]
    total = int(round(minutes * 60 * SAMPLE_RATE))
    written = 0
    with sf.SoundFile(str(path), "w", SAMPLE_RATE, 2, subtype="PCM_24", format="WAV") as f:
        i = 0
        while written < total:
            piece = pieces[i % distinct][:, :total - written]
            f.write(piece.T)
            written += piece.shape[1]
            i += 1
    return written / SAMPLE_RATE


#: Runs a render (:func:`export.render.render_command`: the arguments of `refmaster render INPUT
#: --params FILE ...`) in a child process and prints its peak resident memory in KiB last. VmHWM
#: (from /proc) belongs to the process's own memory map; getrusage's ru_maxrss would not do:
#: Linux carries the parent's peak over into a child across exec.
PEAK_MEMORY_CHILD = (
    "import sys\n"
    "from export.render import render_command\n"
    "rc = render_command(sys.argv[1:])\n"
    "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')]\n"
    "print(hwm[0] if hwm else -1)\n"
    "sys.exit(rc)\n"
)


def run_with_peak_memory(argv: Sequence[str], cwd=None, timeout: Optional[float] = None):
    """Run ``render INPUT --params FILE [--backend B] [--block N] -o OUT`` (``argv``, as for
    `refmaster`) in a child process; returns ``(completed process, peak MiB)``."""
    proc = subprocess.run([sys.executable, "-c", PEAK_MEMORY_CHILD, *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    peak = int(lines[-1]) / 1024.0 if proc.returncode == 0 and lines else float("nan")
    return proc, peak


def render_memory(minutes: float = 60.0, backend: str = "onnx", block: int = 512, folder=None,
                  params_file=None) -> dict:
    """Peak resident memory of a streaming render (a child process) on a long synthesised file."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src, out = Path(tmp) / "long.wav", Path(tmp) / "long_master.wav"
        t0 = time.perf_counter()
        seconds = write_long_synth(src, minutes)
        synth_s = time.perf_counter() - t0
        if params_file is None:
            params_file = Path(tmp) / "params.json"
            params_file.write_text(random_thetas(1, seed=7)[0].to_json())
        t0 = time.perf_counter()
        proc, peak_mb = run_with_peak_memory(["render", src, "--params", params_file, "--backend", backend,
                                              "--block", block, "-o", out])
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"render failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")

        frames = sf.info(str(out)).frames
        return {"minutes": seconds / 60.0, "backend": backend, "block": block, "peak_rss_mb": peak_mb,
                "render_wall_s": wall, "synth_s": synth_s, "input_mb": src.stat().st_size / 2 ** 20,
                "output_frames": frames, "input_frames": int(round(seconds * SAMPLE_RATE)),
                "stdout": "\n".join(proc.stdout.strip().splitlines()[:-1])}


def bench_render(audio: np.ndarray, theta: P.ChainParams, backends: Sequence[str] = ("onnx", "pedalboard", "torch"),
                 blocks: Sequence[int] = (64, 512, 4096), warmup_s: float = 1.0) -> List[dict]:
    """Real-time factor and block times on one thread.

    ONNX and pedalboard stream ``audio`` in fixed blocks (after ``warmup_s`` of warm-up audio);
    the p99 block time is compared with the block's duration. Torch is the offline render of
    the whole excerpt (its streaming form renders 24 s segments, so a per-block time means
    nothing): one row with its real-time factor.
    """

    torch.set_num_threads(1)
    seconds = audio.shape[1] / SAMPLE_RATE
    rows = []
    for backend in backends:
        if backend == "torch":
            torch_render(audio[:, :SAMPLE_RATE], theta)  # warm-up (numba compiles torchcomp's loop)
            t0 = time.perf_counter()
            torch_render(audio, theta)
            wall = time.perf_counter() - t0
            rows.append({"backend": "torch", "block": None, "rtf": seconds / wall, "mean_us": None, "p99_us": None,
                         "block_us": None, "wall_s": wall})
            continue
        chain = make_chain(backend, theta, threads=1)
        for block in blocks:
            chain.reset()
            warm = int(warmup_s * SAMPLE_RATE) // block * block
            for i in range(0, warm, block):
                chain.process(audio[:, i:i + block])
            chain.reset()
            times = []
            for i in range(0, audio.shape[1] - block + 1, block):
                x = audio[:, i:i + block]
                t0 = time.perf_counter()
                chain.process(x)
                times.append(time.perf_counter() - t0)
            t = np.array(times)
            rows.append({"backend": backend, "block": block, "rtf": len(t) * block / SAMPLE_RATE / t.sum(),
                         "mean_us": 1e6 * t.mean(), "p99_us": 1e6 * np.percentile(t, 99),
                         "block_us": 1e6 * block / SAMPLE_RATE, "wall_s": float(t.sum())})
    return rows


def format_bench(rows: List[dict], source: str) -> str:
    lines = [f"render benchmark: {source}, one thread, {os.cpu_count()} CPU cores "
             f"(load average {os.getloadavg()[0]:.1f})",
             f"  {'backend':10s} {'block':>6s} {'real time':>10s} {'mean/block':>11s} {'p99/block':>10s} "
             f"{'block length':>12s} {'p99 / length':>12s}"]
    for r in rows:
        if r["block"] is None:
            lines.append(f"  {r['backend']:10s} {'whole':>6s} {r['rtf']:9.0f}x {'':>11s} {'':>10s} {'':>12s} {'':>12s}"
                         f"   (offline render of the whole excerpt)")
            continue
        lines.append(f"  {r['backend']:10s} {r['block']:6d} {r['rtf']:9.0f}x {r['mean_us']:9.0f}us {r['p99_us']:8.0f}us "
                     f"{r['block_us']:10.0f}us {r['p99_us'] / r['block_us']:12.3f}")
    return "\n".join(lines)
