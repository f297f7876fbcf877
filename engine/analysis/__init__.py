"""What the engine measures: audio features (AF, bark spectra, loudness, DRV) and the training losses.
May import engine.params, engine.errors and engine.dsp."""
