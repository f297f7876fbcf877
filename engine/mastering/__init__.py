"""From a track and a reference to a master: ITO (ito.py), nudges, the loudness and dynamics matches, the job
(job.py: normalise, embed, predict, ITO, match, nudge, render) and evaluation. May import the rest of engine/."""
