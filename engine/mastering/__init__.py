"""From a track and a reference to a master: ITO (ito.py), nudges, the loudness and dynamics matches, the tonal-balance match (tonal.py),
the input read in windows and rendered in segments (track.py), the job
(job.py: normalise, embed, predict, ITO, match, nudge, render), prompts (prompts.py: musicnn tags as nudge words),
evaluation, FAD_musicnn (naturalness.py) and the ITO curve. May import the rest of engine/."""
