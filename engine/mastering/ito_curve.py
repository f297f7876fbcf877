"""The AF / naturalness trade of ITO (`refmaster eval --ito-curve`).

The ITO-Master paper finds that ITO buys a closer match to the reference (AF) at some cost in
naturalness (FAD). :func:`ito_curve` measures that trade here: on the same seeded pairs of different
songs as `refmaster eval`, the white-box master after 0 (style transfer only), 10, 25, 50 and 100
ITO steps (each count a separate run, as `master --ito-steps N` makes it: the best step within N,
stopping on patience), each scored by its AF distance to the reference (median over pairs) and,
over all pairs together, by FAD_musicnn against the real songs of the same split or folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from engine.errors import UsageError
from engine.mastering.evaluation import real_pairs, score
from engine.mastering.ito import release_memory
from engine.mastering.job import MasterSettings, master
from engine.mastering.naturalness import FadCollector
from engine.model.dataset import list_songs
from engine.model.networks import MasteringModel

CURVE_STEPS = (0, 10, 25, 50, 100)


def ito_curve(model: MasteringModel, data_dir: Optional[Path], pairs: int = 12, seconds: float = 10.0, seed: int = 0,
              steps: Optional[Sequence[int]] = None, ito_lr: Optional[float] = None, drv_weight: Optional[float] = None,
              corpus: Optional[Path] = None, split: str = "test", progress: bool = True) -> dict:
    """AF and FAD_musicnn of the master after each step count in ``steps`` (default :data:`CURVE_STEPS`;
    see the module docstring)."""
    steps = CURVE_STEPS if steps is None else tuple(steps)
    if model.kind != "white-box":
        raise UsageError("the ITO curve is measured on the white-box model")
    if corpus is not None:
        from engine.model.corpus import load_manifest, split_files

        files = split_files(corpus, split)
        song_of = {Path(f["file"]).name: f["song"] for f in load_manifest(corpus)["files"]}
        todo = real_pairs(None, pairs, seconds, seed, files=files, song_of=song_of)
    else:
        files = list_songs(data_dir)
        todo = real_pairs(data_dir, pairs, seconds, seed)
    extra = {} if drv_weight is None else {"drv_weight": drv_weight}
    if ito_lr is not None:
        extra["lr"] = ito_lr
    collector = FadCollector()
    rows = []
    bar = tqdm(total=len(todo) * len(steps), desc="ito-curve", unit="run", disable=not progress)
    for pr in todo:
        for k in steps:
            t0 = time.time()
            r = master(model, pr.input, pr.reference, MasterSettings(ito=k > 0, ito_steps=max(k, 1), **extra))
            took = time.time() - t0
            collector.add(str(k), r.output)
            release_memory()
            rows.append({"steps": k, "input": pr.input_name, "reference": pr.reference_name, "seconds": took,
                         "steps_run": r.ito.steps_run if r.ito else 0, "best_step": r.ito.best_step if r.ito else 0,
                         "af": score(r.output, pr.reference)["af"]})
            bar.update(1)
    bar.close()
    fad = collector.distances(files)
    curve = []
    for k in steps:
        mine = [row for row in rows if row["steps"] == k]
        curve.append({"steps": k, "af": float(np.median([row["af"] for row in mine])), "fad_musicnn": fad[str(k)],
                      "seconds": float(np.median([row["seconds"] for row in mine])),
                      "best_step": float(np.median([row["best_step"] for row in mine]))})
    return {"pairs": len(todo), "seconds_per_excerpt": seconds, "seed": seed, "curve": curve, "rows": rows,
            "source": f"corpus {corpus} ({split} split)" if corpus is not None else str(data_dir)}
