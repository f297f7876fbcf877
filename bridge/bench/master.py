"""`refmaster bench master`: the whole `master` command as a producer runs it, against matchering.

Per pair of real songs (``../shared/audio``; inputs of 2–4 minutes, references the other songs):

* refmaster: ``refmaster master INPUT --ref REF -o OUT --json`` with the defaults, in its own
  process: wall time from process start to the file written and the process gone, peak resident
  memory, and the time of each stage from the command's report (start-up, imports, decode and
  fingerprint, model load, f_norm, Φ, Ψ, ITO, each match, render, write, preset save, analysis);
* matchering (the optional ``eval`` extra) on the same pair in the same run, the same way, so the
  ratios compare two programs on one machine in one state (timings on a shared machine drift;
  ratios measured side by side do not, much);
* the quality of both masters: AF distance and |ΔLUFS| to the reference;
* with ``--contend``: refmaster again while a CPU burner (one process spinning at normal priority,
  bounded in time, stopped after the run) keeps one core busy: the slowdown against the idle run;
* the start-up of the commands that need no model (``--help``, ``params``, ``preset list``,
  ``osc addresses``): median wall time of 5;
* with ``--long MINUTES``: one master of a synthesised input that long (wall time, peak memory).

Children run with Python's default bytecode cache (in a folder of this run, as an installed
copy caches it next to its modules), after one unmeasured warm-up master of a short synthesised
pair that fills that cache and numba's. Peak memory is the child's own VmHWM, read as it exits
(getrusage would report the benchmark's own peak: Linux carries it into a child across exec).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from engine.params import SAMPLE_RATE

#: Inputs of the benchmark: songs this long (s). 115 s lets in the 2-minute sugar_plum_fairy (119.9 s).
INPUT_SECONDS = (115.0, 250.0)
#: A process that runs argv[2:] as a command (argv[1]: "refmaster" or "matchering") and writes its
#: peak resident memory (VmHWM, KiB) to the file named by argv[1] ... as it exits.
PEAK_CHILD = r"""
import atexit, os, sys
peak_file, what = sys.argv[1], sys.argv[2]
def _peak():
    try:
        kib = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]
    except (OSError, IndexError):
        import resource
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(peak_file, 'w') as f:
        f.write(str(kib))
atexit.register(_peak)
if what == 'refmaster':
    sys.argv = ['refmaster'] + sys.argv[3:]
    from bridge.cli import entry_point
    entry_point()
else:
    import matchering as mg
    mg.log(default_handler=lambda *a, **k: None)
    mg.process(target=sys.argv[3], reference=sys.argv[4], results=[mg.pcm24(sys.argv[5])])
"""
#: The CPU burner of --contend: spins at normal priority until the deadline (a bound if we die).
BURNER = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"
BURNER_MAX_S = 3600.0
#: Commands that need no model, and how often each is timed for the start-up figures.
STARTUP_COMMANDS = (("--help",), ("params",), ("preset", "list"), ("osc", "addresses"))
STARTUP_REPEAT = 5


def matchering_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matchering") is not None


def song_pairs(folder: Path, songs: Optional[Sequence[str]] = None, count: int = 3) -> Tuple[List[Tuple[Path, Path]], List[str]]:
    """``count`` (input, reference) pairs of different songs, inputs of :data:`INPUT_SECONDS`;
    and a line for each song left out. References: the other songs, longest first, taken in turn."""
    import soundfile as sf

    from engine.io.audio import READ_EXTENSIONS

    files = [folder / s for s in songs] if songs else sorted(p for p in folder.iterdir() if p.suffix.lower() in READ_EXTENSIONS)
    length, skipped = {}, []
    for p in files:
        try:
            length[p] = sf.info(str(p)).duration
        except (RuntimeError, OSError) as e:  # soundfile's errors: the line says which file and why
            skipped.append(f"{p.name}: cannot read ({e})")
    lo, hi = INPUT_SECONDS
    inputs = [p for p in length if lo <= length[p] <= hi]
    skipped += [f"{p.name}: {length[p]:.0f} s, not an input of {lo:.0f}–{hi:.0f} s (may still be a reference)"
                for p in length if p not in inputs]
    others = {i: sorted((p for p in length if p != i), key=lambda p: -length[p]) for i in inputs}
    pairs: List[Tuple[Path, Path]] = []
    for rank in range(max((len(v) for v in others.values()), default=0)):
        for i in inputs:
            if rank < len(others[i]) and len(pairs) < count:
                pairs.append((i, others[i][rank]))
    return pairs, skipped


def child_env(pycache: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a producer's Python caches bytecode
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def run_measured(what: str, args: Sequence[str], env: Dict[str, str], workdir: Path, timeout: float = 3600.0) -> dict:
    """Run refmaster (``what="refmaster"``, ``args`` its command line) or matchering
    (``args``: target, reference, output) in a child; wall time, peak memory, exit status, output."""
    peak = workdir / f"peak-{time.monotonic_ns()}"
    repo = Path(__file__).resolve().parents[2]
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", PEAK_CHILD, str(peak), what, *map(str, args)], cwd=str(repo), env=env,
                       capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    try:
        peak_mb = int(peak.read_text()) / 1024.0
        peak.unlink()
    except (OSError, ValueError):
        peak_mb = None
    return {"wall_s": wall, "peak_rss_mb": peak_mb, "rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr}


class Burner:
    """One core kept busy by another process for the duration of a ``with`` block."""

    def __init__(self, seconds: float = BURNER_MAX_S):
        self.seconds = seconds
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "Burner":
        self.proc = subprocess.Popen([sys.executable, "-c", BURNER, str(self.seconds)])
        time.sleep(0.5)  # running before the measured command starts
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def master_args(x: Path, ref: Path, out: Path, presets: Path, threads: Optional[int] = None) -> List[str]:
    extra = ["--threads", str(threads)] if threads else []
    return ["master", str(x), "--ref", str(ref), "-o", str(out), "--presets", str(presets), "--quiet", "--json", *extra]


def refmaster_run(x: Path, ref: Path, workdir: Path, env, threads: Optional[int] = None, contend: bool = False) -> dict:
    out, presets = workdir / "refmaster.wav", workdir / "presets"
    shutil.rmtree(presets, ignore_errors=True)  # every run saves a new preset, none updates an old one
    args = master_args(x, ref, out, presets, threads)
    if contend:
        with Burner():
            r = run_measured("refmaster", args, env, workdir)
    else:
        r = run_measured("refmaster", args, env, workdir)
    if r["rc"] != 0:
        raise RuntimeError(f"refmaster master {x.name} --ref {ref.name} failed ({r['rc']}): {r['stderr'].strip()[-400:]}")
    report = json.loads(r["stdout"])
    seconds = report["seconds"]
    accounted = sum(seconds.get(k, 0.0) for k in ("startup", "imports", "decode", "model_load", "total", "write",
                                                 "preset_save", "analysis"))
    seconds["outside"] = max(0.0, r["wall_s"] - accounted)  # interpreter start and exit
    return {"wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"], "stages_s": seconds, "threads": report.get("threads"),
            "output": out}


def matchering_run(x: Path, ref: Path, workdir: Path, env) -> dict:
    out = workdir / "matchering.wav"
    r = run_measured("matchering", [x, ref, out], env, workdir)
    if r["rc"] != 0:
        raise RuntimeError(f"matchering {x.name} -> {ref.name} failed ({r['rc']}): {r['stderr'].strip()[-400:]}")
    return {"wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"], "output": out}


def quality(master: Path, ref: Path) -> dict:
    """AF distance and |ΔLUFS| of a master to its reference (lower is better)."""
    from engine.analysis.features import af_distance, integrated_loudness
    from engine.io.audio import load_audio

    y, r = load_audio(master).audio, load_audio(ref).audio
    lufs = integrated_loudness(y)
    return {"af": af_distance(y, r), "lufs": lufs, "d_lufs": abs(lufs - integrated_loudness(r))}


def startup_times(env, workdir: Path, repeat: int = STARTUP_REPEAT) -> Dict[str, float]:
    """Median wall time of each command of :data:`STARTUP_COMMANDS` (a preset folder of this run)."""
    out = {}
    for cmd in STARTUP_COMMANDS:
        args = list(cmd) + (["--presets", str(workdir / "presets")] if cmd[0] == "preset" else [])
        walls = []
        for _ in range(repeat):
            r = run_measured("refmaster", args, env, workdir)
            if r["rc"] != 0:
                raise RuntimeError(f"refmaster {' '.join(cmd)} failed ({r['rc']}): {r['stderr'].strip()[-300:]}")
            walls.append(r["wall_s"])
        out[" ".join(cmd)] = statistics.median(walls)
    return out


def write_synth(path: Path, seconds: float, seed: int = 100, piece_seconds: float = 60.0, distinct: int = 4) -> None:
    """``seconds`` of synthesised music (``distinct`` songs cycled) as 24-bit wav, a piece at a time."""
    import soundfile as sf

    from engine.model.synth import synth_song

    pieces = [synth_song(seed + i, min(piece_seconds, seconds)) for i in range(distinct)]
    total, written, i = int(round(seconds * SAMPLE_RATE)), 0, 0
    with sf.SoundFile(str(path), "w", SAMPLE_RATE, 2, subtype="PCM_24", format="WAV") as f:
        while written < total:
            piece = pieces[i % distinct][:, : total - written]
            f.write(piece.T)
            written += piece.shape[1]
            i += 1


def _median(rows: List[dict], key: str) -> Optional[float]:
    v = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(v) if v else None


def bench_master(folder: Path, songs: Optional[Sequence[str]] = None, pairs: int = 3, contend: bool = False,
                 threads: Optional[int] = None, long_minutes: Optional[float] = None, startup: bool = True,
                 peer: bool = True, progress=None) -> dict:
    """The figures of `refmaster bench master` (see the module docstring)."""
    say = progress or (lambda line: None)
    result = {"cpu_cores": os.cpu_count(), "folder": str(folder), "pairs": [], "skipped": [], "threads": threads,
              "matchering": None}
    have_peer = peer and matchering_available()
    if not have_peer:
        result["matchering"] = "not run: " + ("--no-matchering" if not peer else
                                              "matchering is not installed (pip install 'refmaster[eval]')")
    with tempfile.TemporaryDirectory(prefix="refmaster-bench-master-") as tmp:
        workdir = Path(tmp)
        env = child_env(workdir / "pycache")
        say("warm-up: a short synthesised pair (fills the bytecode and numba caches; not measured)")
        write_synth(workdir / "warm-in.wav", 6.0, seed=3, distinct=1)
        write_synth(workdir / "warm-ref.wav", 6.0, seed=4, distinct=1)
        refmaster_run(workdir / "warm-in.wav", workdir / "warm-ref.wav", workdir, env, threads)
        if startup:
            say("start-up of the commands that need no model")
            result["startup_s"] = startup_times(env, workdir)
        if folder.is_dir():
            todo, result["skipped"] = song_pairs(folder, songs, pairs)
        else:
            todo, result["skipped"] = [], [f"{folder}: no such folder (real songs are not here)"]
        for x, ref in todo:
            row = {"input": x.name, "reference": ref.name}
            if have_peer:
                m = matchering_run(x, ref, workdir, env)
                row["matchering"] = {"wall_s": m["wall_s"], "peak_rss_mb": m["peak_rss_mb"], **quality(m["output"], ref)}
            r = refmaster_run(x, ref, workdir, env, threads)
            row["refmaster"] = {k: v for k, v in r.items() if k != "output"}
            row["refmaster"].update(quality(r["output"], ref))
            if have_peer:
                row["wall_ratio"] = r["wall_s"] / m["wall_s"]
                row["rss_ratio"] = r["peak_rss_mb"] / m["peak_rss_mb"] if r["peak_rss_mb"] and m["peak_rss_mb"] else None
            if contend:
                c = refmaster_run(x, ref, workdir, env, threads, contend=True)
                row["contended"] = {"wall_s": c["wall_s"], "peak_rss_mb": c["peak_rss_mb"], "threads": c["threads"],
                                    "stages_s": c["stages_s"]}
                row["contend_slowdown"] = c["wall_s"] / r["wall_s"]
            result["pairs"].append(row)
            say(format_pair(row))
        if long_minutes:
            say(f"{long_minutes:g} minutes of synthesised input")
            x = workdir / "long.wav"
            write_synth(x, long_minutes * 60.0)
            ref = todo[0][1] if todo else workdir / "warm-ref.wav"
            r = refmaster_run(x, ref, workdir, env, threads)
            x.unlink()
            result["long"] = {"minutes": long_minutes, "reference": ref.name, "wall_s": r["wall_s"],
                              "peak_rss_mb": r["peak_rss_mb"], "stages_s": r["stages_s"], "threads": r["threads"]}
    rows = result["pairs"]
    result["median"] = {
        "refmaster_wall_s": _median([p["refmaster"] for p in rows], "wall_s"),
        "refmaster_peak_rss_mb": _median([p["refmaster"] for p in rows], "peak_rss_mb"),
        "matchering_wall_s": _median([p["matchering"] for p in rows if "matchering" in p], "wall_s"),
        "matchering_peak_rss_mb": _median([p["matchering"] for p in rows if "matchering" in p], "peak_rss_mb"),
        "wall_ratio": _median(rows, "wall_ratio"), "rss_ratio": _median(rows, "rss_ratio"),
        "contend_slowdown": _median(rows, "contend_slowdown"),
        "refmaster_af": _median([p["refmaster"] for p in rows], "af"),
        "refmaster_d_lufs": _median([p["refmaster"] for p in rows], "d_lufs"),
    }
    if rows:
        keys = [k for k in rows[0]["refmaster"]["stages_s"]]
        result["median"]["stages_s"] = {k: statistics.median(p["refmaster"]["stages_s"].get(k, 0.0) for p in rows)
                                        for k in keys}
    return result


#: Stages in the order the command runs them, with the names the table prints.
STAGES = (("startup", "start-up"), ("imports", "imports"), ("decode", "decode+fingerprint"), ("model_load", "model load"),
          ("fx_norm", "f_norm"), ("embed", "Φ"), ("predict", "Ψ"), ("ito", "ITO"), ("tonal", "tonal match"),
          ("dynamics", "dynamics match"), ("loudness", "loudness match"), ("nudge", "nudge"), ("render", "render"),
          ("write", "write"), ("preset_save", "preset save"), ("analysis", "analysis"), ("outside", "interpreter"))


def _stages(s: dict) -> str:
    return ", ".join(f"{label} {s[k]:.1f}" for k, label in STAGES if k in s and s[k] >= 0.05)


def format_pair(row: dict) -> str:
    r = row["refmaster"]
    line = (f"{row['input']} -> {row['reference']}: refmaster {r['wall_s']:.1f} s, {r['peak_rss_mb']:.0f} MB, "
            f"AF {r['af']:.4f}, ΔLUFS {r['d_lufs']:.2f}")
    if "matchering" in row:
        m = row["matchering"]
        line += (f"; matchering {m['wall_s']:.1f} s, {m['peak_rss_mb']:.0f} MB, AF {m['af']:.4f}, ΔLUFS {m['d_lufs']:.2f}"
                 f"; ratio {row['wall_ratio']:.2f}× time, {row['rss_ratio']:.2f}× memory")
    if "contend_slowdown" in row:
        line += f"; one core busy: {row['contended']['wall_s']:.1f} s ({row['contend_slowdown']:.2f}×)"
    return line + "\n    stages (s): " + _stages(r["stages_s"])


def format_master_bench(r: dict) -> str:
    lines = [f"bench master: {len(r['pairs'])} pair(s) of real songs from {r['folder']}, {r['cpu_cores']} CPU cores, "
             f"threads {'auto' if not r['threads'] else r['threads']}"]
    lines += [f"  skipped {s}" for s in r["skipped"]]
    if r["matchering"]:
        lines.append(f"  matchering {r['matchering']}")
    lines += ["  " + format_pair(p).replace("\n", "\n  ") for p in r["pairs"]]
    m = r["median"]
    if r["pairs"]:
        lines.append(f"median: refmaster {m['refmaster_wall_s']:.1f} s, {m['refmaster_peak_rss_mb']:.0f} MB peak, "
                     f"AF {m['refmaster_af']:.4f}, ΔLUFS {m['refmaster_d_lufs']:.2f}")
        if m["matchering_wall_s"] is not None:
            lines.append(f"        matchering {m['matchering_wall_s']:.1f} s, {m['matchering_peak_rss_mb']:.0f} MB peak; "
                         f"ratios {m['wall_ratio']:.2f}× time, {m['rss_ratio']:.2f}× memory")
        if m["contend_slowdown"] is not None:
            lines.append(f"        one core busy (--contend): {m['contend_slowdown']:.2f}× slower")
        lines.append("        stages (s): " + _stages(m["stages_s"]))
    if "startup_s" in r:
        lines.append("start-up, median of 5: " + ", ".join(f"`refmaster {k}` {v:.2f} s" for k, v in r["startup_s"].items()))
    if "long" in r:
        g = r["long"]
        lines.append(f"{g['minutes']:g} min synthesised input -> {g['reference']}: {g['wall_s']:.1f} s, "
                     f"{g['peak_rss_mb']:.0f} MB peak\n    stages (s): {_stages(g['stages_s'])}")
    return "\n".join(lines)


def cmd_bench_master(args) -> int:
    from bridge.cli.options import DEFAULT_MUSIC
    from engine.runtime import check_threads

    threads = check_threads(args.threads)
    songs = [s.strip() for s in args.songs.split(",") if s.strip()] if args.songs else None
    r = bench_master(Path(args.data) if args.data else DEFAULT_MUSIC, songs, args.pairs, args.contend, threads,
                     args.long, startup=not args.no_startup, peer=not args.no_matchering,
                     progress=None if args.json else (lambda line: print(line, file=sys.stderr, flush=True)))
    print(json.dumps(r, indent=2, default=str) if args.json else format_master_bench(r))
    return 0


def register(bsub) -> dict:
    from bridge.cli.options import add_threads_option

    b = bsub.add_parser("master", help="the whole `master` command on real songs against matchering: time, memory, stages")
    b.add_argument("--songs", help="comma-separated file names in the folder (default: every song there)")
    b.add_argument("--data", help="folder of real songs (default ../shared/audio)")
    b.add_argument("--pairs", type=int, default=3, help="how many (input, reference) pairs")
    b.add_argument("--contend", action="store_true", help="also run each pair with one core kept busy by a CPU burner")
    b.add_argument("--long", type=float, metavar="MINUTES", help="also master a synthesised input this long")
    b.add_argument("--no-startup", action="store_true", help="skip the start-up timing of the model-free commands")
    b.add_argument("--no-matchering", action="store_true", help="skip the matchering peer")
    add_threads_option(b)
    b.add_argument("--json", action="store_true")
    return {"master": cmd_bench_master}
