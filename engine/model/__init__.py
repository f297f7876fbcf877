"""The learned part: front end, Φ and Ψ (networks.py), the manipulation f, f_norm, the synthesiser, the corpus,
the dataset and training, and musicnn (musicnn.py: two pretrained music taggers, ported). May import engine.params, engine.errors, engine.io, engine.dsp and engine.analysis."""
