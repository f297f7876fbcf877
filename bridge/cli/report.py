"""Text tables and plots for the terminal and for producers' eyes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from engine.errors import UsageError
from engine.io.atomic import atomic_path, check_output
from engine.params import SAMPLE_RATE

#: What ``--plot`` can write (matplotlib picks the format by the extension).
PLOT_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")

ANALYSIS_ROWS = [
    ("loudness_lufs", "loudness", "LUFS", "{:.1f}"),
    ("true_peak_dbtp", "true peak", "dBTP", "{:.1f}"),
    ("sample_peak_dbfs", "sample peak", "dBFS", "{:.1f}"),
    ("rms_dbfs", "RMS", "dBFS", "{:.1f}"),
    ("crest_db", "crest factor", "dB", "{:.1f}"),
    ("width", "width (side/mid)", "", "{:.3f}"),
    ("imbalance", "imbalance (R-L)", "", "{:+.3f}"),
    ("drv_db", "DRV", "dB", "{:.2f}"),
]


def _fmt(fmt: str, v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a" if (v is None or math.isnan(v)) else ("-inf" if v < 0 else "inf")
    return fmt.format(v)


def analysis_table(results: Sequence[Dict[str, object]], names: Sequence[str]) -> str:
    """Side-by-side analysis of one or more signals, with a bark-balance bar chart of the first."""
    w0 = max(len(r[1]) for r in ANALYSIS_ROWS) + 2
    cols = [max(12, len(n) + 2) for n in names]
    lines = ["".ljust(w0) + "".join(n.rjust(c) for n, c in zip(names, cols))]
    for key, label, unit, fmt in ANALYSIS_ROWS:
        cells = "".join(f"{_fmt(fmt, r[key])} {unit}".rstrip().rjust(c) for r, c in zip(results, cols))
        lines.append(label.ljust(w0) + cells)
    lines.append(f"duration".ljust(w0) + "".join(f"{r['duration_s']:.1f} s".rjust(c) for r, c in zip(results, cols)))
    lines.append("")
    lines.append("bark balance, mid (dB relative to the mean band level)")
    lines.extend(bark_bars(results, names))
    return "\n".join(lines)


def check_plot_path(path, inputs=()) -> Path:
    """A ``--plot`` file checked before any work: a known format, not an input, writable."""
    p = Path(path)
    if p.suffix.lower() not in PLOT_FORMATS:
        raise UsageError(f"{p}: a plot is {', '.join(f.lstrip('.') for f in PLOT_FORMATS)} (by its extension)")
    return check_output(p, inputs, "plot")


def bark_bars(results: Sequence[Dict[str, object]], names: Sequence[str]) -> List[str]:
    centres = results[0]["bark_centres_hz"]
    out = []
    header = "  band      " + "".join(f"{n[:14]:>16}" for n in names)
    out.append(header)
    for i, c in enumerate(centres):
        label = f"{c:>7.0f} Hz" if c < 1000 else f"{c / 1000:>6.1f} kHz"
        cells = ""
        for r in results:
            v = r["bark_mid_db"][i]
            n = int(round(max(min(v, 24), -24) / 3))
            bar = ("█" * n).ljust(8) if n > 0 else ("░" * -n).rjust(8)
            cells += f" {bar}{v:+6.1f}"
        out.append(f"  {label} {cells}")
    return out


def plot_analysis(path, results: Sequence[Dict[str, object]], names: Sequence[str], title: Optional[str] = None) -> None:
    """Bark balance of mid and side for each signal, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for r, n in zip(results, names):
        axes[0].semilogx(r["bark_centres_hz"], r["bark_mid_db"], marker="o", ms=3, label=n)
        axes[1].semilogx(r["bark_centres_hz"], r["bark_side_db"], marker="o", ms=3, label=n)
    for ax, t in zip(axes, ("mid", "side")):
        ax.set_title(f"bark spectrum, {t} (dB re. mean mid band)")
        ax.set_xlabel("Hz")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def params_change_table(before, after, gain_reduction=None) -> str:
    """Θ in real units by module, with the value before ITO where it moved noticeably, a mark on
    any parameter pinned at a range limit, and the dynamics' gain reduction (dB, p95) when given."""
    from engine import params as P

    lines = [f"{'parameter':<34}{'value':>10}  {'unit':<5}{'before ITO':>12}  limit"]
    current = None
    pinned = P.pinned(after.values)
    for p in P.PARAMS:
        if p.module != current:
            current = p.module
            lines.append(f"{P.MODULE_TITLES[p.module]} ({p.module})")
        v = after.values[p.key]
        moved = ""
        if before is not None:
            b = before.values[p.key]
            if abs(p.to_normalized(v) - p.to_normalized(b)) > 0.01:
                moved = f"{_num(b)}"
        mark = f"  at {pinned[p.key]}" if p.key in pinned else ""
        lines.append(f"  {p.key:<32}{_num(v):>10}  {p.unit:<5}{moved:>12}{mark}".rstrip())
    if pinned:
        lines.append(f"{len(pinned)} parameter(s) at a range limit: {', '.join(sorted(pinned))}")
    if gain_reduction:
        parts = [f"{k.split('.')[-1]} {v:.1f}" for k, v in gain_reduction.items()]
        lines.append("gain reduction, dB (p95 over time): " + ", ".join(parts))
    return "\n".join(lines)


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def short_term_loudness(audio, sample_rate: int = SAMPLE_RATE, window: float = 3.0, hop: float = 1.0):
    """(times, LUFS) over 3 s windows every second (BS.1770 short-term loudness)."""
    import numpy as np
    import pyloudnorm

    meter = pyloudnorm.Meter(sample_rate)
    n, h = int(window * sample_rate), int(hop * sample_rate)
    times, values = [], []
    for s in range(0, max(1, audio.shape[1] - n + 1), h):
        seg = audio[:, s : s + n].astype(np.float64).T
        if seg.shape[0] < int(0.4 * sample_rate):
            break
        values.append(meter.integrated_loudness(seg))
        times.append((s + n / 2) / sample_rate)
    return np.array(times), np.array(values)


def plot_master(path, x, y, ref, analyses) -> None:
    """Input / master / reference: bark balance, short-term loudness, crest and width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = ["input", "master", "reference"]
    colours = ["#888888", "#d62728", "#1f77b4"]
    fig, ax = plt.subplots(2, 2, figsize=(12, 7))
    for a, n, c in zip(analyses, names, colours):
        level = np.array(a["bark_mid_db"])
        ax[0, 0].semilogx(a["bark_centres_hz"], level, "o-", ms=3, color=c, label=n)
    ax[0, 0].set_title("spectral balance (bark bands, mid; dB re. mean band)")
    ax[0, 0].set_xlabel("Hz")
    ax[0, 0].legend()
    for sig, n, c in zip((x, y, ref), names, colours):
        t, l = short_term_loudness(sig)
        ax[0, 1].plot(t, np.where(np.isfinite(l), l, np.nan), color=c, label=f"{n} ({_fmtl(l)})")
    ax[0, 1].set_title("short-term loudness (3 s windows)")
    ax[0, 1].set_xlabel("s")
    ax[0, 1].set_ylabel("LUFS")
    ax[0, 1].legend()
    crest = [a["crest_db"] for a in analyses]
    width = [a["width"] for a in analyses]
    ax[1, 0].bar(names, crest, color=colours)
    ax[1, 0].set_title("crest factor (dB): lower is denser")
    ax[1, 1].bar(names, width, color=colours)
    ax[1, 1].set_title("stereo width (side/mid energy)")
    for a in ax.flat:
        a.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _fmtl(values) -> str:
    import numpy as np

    v = values[np.isfinite(values)]
    return f"median {np.median(v):.1f} LUFS" if len(v) else "silent"
