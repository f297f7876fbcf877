"""refmaster's Torch engine: parameters, chain, features, models, ITO, training.

Nothing in here imports from ``bridge``, ``export`` or ``presets``.
"""

__version__ = "0.1.0"
