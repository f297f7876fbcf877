"""Text tables and plots for the terminal and for producers' eyes."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

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
    fig.savefig(path, dpi=110)
    plt.close(fig)
