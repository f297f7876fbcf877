"""`refmaster corpus build|show`: the real training corpus (engine/model/corpus.py)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DEFAULT_CORPUS = Path("corpus")


def cmd_corpus(args) -> int:
    from engine.model.corpus import build_corpus, load_manifest

    out = Path(args.out or DEFAULT_CORPUS)
    if args.action == "show":
        m = load_manifest(out)
    else:
        t0 = time.time()
        m = build_corpus(out, debs=Path(args.debs) if args.debs else None,
                         progress=lambda msg: print(f"corpus: {msg}", file=sys.stderr, flush=True))
        m = dict(m, build_seconds=round(time.time() - t0, 1))
    if args.json:
        print(json.dumps({k: v for k, v in m.items() if k != "files"}, indent=2))
        return 0
    print(f"corpus {out}: {len(m['files'])} files, {m['hours']:.2f} h"
          + (f" (built in {m['build_seconds']:.0f} s)" if "build_seconds" in m else ""))
    for name, p in m["packages"].items():
        print(f"  {name:<24} {p['version']:<14} {p['files']:>4} files  {p['licence']}")
    for s, v in m["splits"].items():
        print(f"  {s:<10} {v['songs']:>4} songs {v['files']:>4} files {v['hours']:6.2f} h")
    if m.get("skipped"):
        print(f"  skipped (shorter than 20 s or undecodable): {len(m['skipped'])} files")
    return 0


def register(sub) -> dict:
    p = sub.add_parser("corpus", help="build the real training corpus from Debian music packages (split by song)")
    p.add_argument("action", choices=["build", "show"])
    p.add_argument("--out", help=f"corpus folder (default: ./{DEFAULT_CORPUS})")
    p.add_argument("--debs", help="use the .deb files in this folder instead of downloading them")
    p.add_argument("--json", action="store_true")
    return {"corpus": cmd_corpus}
