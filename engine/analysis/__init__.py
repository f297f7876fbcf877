"""What the engine measures: audio features (AF, bark spectra, loudness, DRV, `analyze` in
bounded memory), streaming loudness and true-peak meters (meters.py) and the training losses.
May import engine.params, engine.errors and engine.dsp."""
