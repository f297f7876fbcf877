"""Preset store (one JSON file per reference track) and factory presets.

See :mod:`presets.store` for the file format, where presets live and the API that
``refmaster master``, ``serve`` and ``render --preset`` use.
"""

from presets.store import (
    ENV_VAR, FACTORY_DIR, SCHEMA_TAG, SCHEMA_VERSION, LoadProblem, Preset, PresetError, PresetStore,
    default_presets_dir, diff_presets, fingerprint, fingerprint_bit_error, fingerprint_file,
    fingerprints_match, short_fingerprint,
)

__all__ = ["ENV_VAR", "FACTORY_DIR", "SCHEMA_TAG", "SCHEMA_VERSION", "LoadProblem", "Preset", "PresetError",
           "PresetStore", "default_presets_dir", "diff_presets", "fingerprint", "fingerprint_bit_error",
           "fingerprint_file", "fingerprints_match", "short_fingerprint"]
