"""Disk-to-disk streaming render through any :mod:`export.streaming` backend, in bounded memory.

:func:`render_file` reads the input in blocks (soundfile) and runs the chain block by block at
the file's own rate (any in :data:`engine.params.CHAIN_RATES`: 44.1, 48, 88.2, 96 kHz …, no
resampling), compensates the chain's latency (the first ``latency`` output samples are dropped
and the chain is flushed at the end) and writes 24-bit wav or flac at the input's rate and exact
length. Only a file outside those rates (8 or 16 kHz, 384 kHz) is resampled to 44.1 kHz on the
fly and back (:class:`engine.io.resample.StreamingResampler`, which equals the offline render's
``resample_poly``). Memory does not grow with the file: a 60-minute file is never in
memory whole (docs/export.md has the measured peak).

Input checks are those of :func:`engine.io.audio.load_audio`: a problem found in the header
(missing, empty, corrupt, more than two channels, truncated, too short) stops the render
before anything is written; one found while streaming (NaN samples, a truncated mp3, a file
that turns out silent) stops it and removes the partial output. The output is written to a
temporary file and renamed into place at the end, so it either appears complete or not at all.

Loudness before and after (BS.1770, as pyloudnorm) and the output's true peak are measured on
the fly (:mod:`engine.analysis.meters`); the input is read by :class:`engine.io.reader.AudioReader`.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import soundfile as sf
from tqdm import tqdm

from engine import params as P
from engine.analysis.meters import LoudnessMeter, TruePeakMeter
from engine.errors import AudioError, RefmasterError
from engine.io.atomic import atomic_path
from engine.io.audio import WRITE_EXTENSIONS
from engine.io.reader import AudioReader
from engine.io.resample import StreamingResampler
from engine.rates import chain_rate
from export.factory import make_chain
from export.streaming import BACKENDS, StreamingChain

#: Largest block read from or written to disk at once (samples at the file's rate).
IO_BLOCK = 1 << 16


@dataclass
class RenderReport:
    input: Path
    output: Path
    backend: str
    block: int
    source_rate: int
    source_frames: int
    seconds: float
    wall_seconds: float
    loudness_in: float
    loudness_out: float
    true_peak_db: float
    clipped: int

    @property
    def realtime_factor(self) -> float:
        return self.seconds / max(self.wall_seconds, 1e-9)


def render_file(input_path, output_path, chain: StreamingChain, block: int = 512, progress: bool = True) -> RenderReport:
    """Stream ``input_path`` through ``chain`` in blocks of ``block`` samples (at the rate the
    chain runs at: :func:`engine.rates.chain_rate` of the file's, set on ``chain``) into
    ``output_path`` (24-bit wav or flac, the input's rate and length). See the module docstring.

    ``progress``: show a tqdm bar on stderr (only when stderr is a terminal).
    """

    out = Path(output_path)
    ext = out.suffix.lower()
    if ext not in WRITE_EXTENSIONS:
        raise AudioError(f"{out}: output must be .wav or .flac")
    if out.parent and not out.parent.exists():
        raise AudioError(f"{out}: folder {out.parent} does not exist")
    if block < 1:
        raise AudioError(f"--block must be at least 1 sample, got {block}")
    reader = AudioReader(input_path)
    rate = reader.rate
    work = chain_rate(rate)   # the file's own rate wherever the chain runs at it
    if chain.sample_rate != work:
        chain.set_sample_rate(work)
    to_chain = StreamingResampler(rate, work) if rate != work else None
    from_chain = StreamingResampler(work, rate) if rate != work else None
    meter_in, meter_out, peak_out = LoudnessMeter(work), LoudnessMeter(work), TruePeakMeter()
    chain.reset()
    t0 = time.perf_counter()
    to_skip, written, clipped = chain.latency, 0, 0
    pending = np.zeros((2, 0), np.float32)   # input at the chain's rate waiting for a full block

    with atomic_path(out, suffix=ext) as tmp:
        with sf.SoundFile(str(tmp), "w", rate, 2, subtype="PCM_24", format="WAV" if ext == ".wav" else "FLAC") as writer:
            def write(chunks: List[np.ndarray], final: bool = False) -> None:
                """Chain output at its rate (latency not yet removed) -> meters -> file."""
                nonlocal to_skip, written, clipped
                yc = np.concatenate(chunks, axis=1) if chunks else np.zeros((2, 0), np.float32)
                k = min(to_skip, yc.shape[1])
                yc, to_skip = yc[:, k:], to_skip - k
                if yc.shape[1]:   # the Torch backend's first outputs are all latency
                    meter_out.add(yc)
                    peak_out.add(yc)
                y = yc if from_chain is None else from_chain.process(yc)
                if final and from_chain is not None:
                    y = np.concatenate([y, from_chain.flush()], axis=1)
                need = reader.frames_read - written   # never more than the input's length
                y = y[:, :need]
                if final:
                    y = np.pad(y, ((0, 0), (0, need - y.shape[1])))
                clipped += int(np.count_nonzero(np.abs(y) > 1.0))
                writer.write(np.clip(y, -1.0, 1.0).T)
                written += y.shape[1]

            def run_blocks(xc: np.ndarray) -> List[np.ndarray]:
                nonlocal pending
                data = np.concatenate([pending, xc], axis=1) if pending.shape[1] else xc
                n_full = data.shape[1] // block * block
                outs = [chain.process(data[:, i:i + block]) for i in range(0, n_full, block)]
                pending = data[:, n_full:]
                return outs

            with tqdm(total=round(reader.declared_frames / rate, 1), unit="s", desc=f"render ({chain.backend})",
                      disable=None if progress else True, leave=False,
                      bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]") as bar:
                while True:
                    x = reader.read(IO_BLOCK)
                    if x.shape[1] == 0:
                        break
                    xc = x if to_chain is None else to_chain.process(x)
                    meter_in.add(xc)
                    write(run_blocks(xc))
                    bar.update(x.shape[1] / rate)
                reader.finish()
                last: List[np.ndarray] = []
                if to_chain is not None:
                    tail = to_chain.flush()
                    meter_in.add(tail)
                    last += run_blocks(tail)
                if pending.shape[1]:
                    last.append(chain.process(pending))
                last.append(chain.flush())
                write(last, final=True)
    return RenderReport(Path(input_path), out, chain.backend, block, rate, reader.frames_read,
                        reader.frames_read / rate, time.perf_counter() - t0, meter_in.integrated(),
                        meter_out.integrated(), peak_out.db(), clipped)


def render_command(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m export.render render INPUT --params FILE [--backend B] [--block N] -o OUT``.

    :func:`render_file` with a parameter file, the way `refmaster render --params` runs it, from
    export/ alone: :func:`export.checks.run_with_peak_memory` runs this in a child process to
    measure the render's peak memory. Returns the exit status; a problem is one line on stderr.
    """


    ap = argparse.ArgumentParser(prog="python -m export.render", description=render_command.__doc__.split("\n")[0])
    ap.add_argument("command", choices=("render",), help="the one command (as `refmaster render`)")
    ap.add_argument("input")
    ap.add_argument("--params", required=True, metavar="FILE.json", help="chain parameters")
    ap.add_argument("--backend", choices=BACKENDS, default="torch")
    ap.add_argument("--block", type=int, default=512, metavar="N", help="samples per block")
    ap.add_argument("-o", "--output", required=True, metavar="OUT", help=".wav or .flac (24-bit)")
    args = ap.parse_args(argv)
    try:
        chain = make_chain(args.backend, P.ChainParams.load(args.params))
        r = render_file(args.input, args.output, chain, block=args.block)
    except RefmasterError as e:
        print(f"refmaster: error: {e}", file=sys.stderr)
        return 2
    print(f"rendered {r.input.name} -> {r.output}  ({r.seconds:.1f} s, {r.source_rate} Hz, 24-bit; "
          f"{r.backend} backend, {r.block}-sample blocks, {r.realtime_factor:.0f}x real time)")
    return 0


if __name__ == "__main__":
    sys.exit(render_command())
