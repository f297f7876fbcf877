"""refmaster's Torch engine: the 46-parameter schema (params.py), errors, the CPU thread choice (runtime.py) and
the sample rates the chain runs at (rates.py) at the root, then rooms:
dsp/ (the chain), analysis/ (features, losses), model/ (Φ, Ψ, data, training), mastering/ (ITO, the job, evaluation), io/ (files).

Nothing in here imports from ``bridge``, ``export`` or ``presets`` (tests/test_architecture.py).
"""

__version__ = "0.1.0"
