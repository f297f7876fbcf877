"""Argument declarations and defaults that several commands share (declared once here)."""

from __future__ import annotations

from pathlib import Path

#: The real music beside a checkout (tests, benchmarks and evaluation use it where it exists).
DEFAULT_MUSIC = Path(__file__).resolve().parents[3] / "shared" / "audio"


def add_presets_option(p) -> None:
    p.add_argument("--presets", metavar="DIR",
                   help="preset folder (default: $REFMASTER_PRESETS or the user data folder)")


def add_json_option(p, what: str = "machine-readable output") -> None:
    p.add_argument("--json", action="store_true", help=what)


def add_threads_option(p) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for the Torch work (default: the cores other processes leave free; "
                        "engine.runtime)")
