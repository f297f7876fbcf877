"""presets/: the preset record and its JSON form (preset.py), the reference fingerprint (fingerprint.py), the store (store.py).
It may import only engine/ (never bridge/ or export/); the store's API is in the docstring of :mod:`presets.store`."""

from presets.fingerprint import (fingerprint, fingerprint_bit_error, fingerprint_file, fingerprints_match,
                                 short_fingerprint)
from presets.preset import SCHEMA_TAG, SCHEMA_VERSION, Preset, PresetError, diff_presets
from presets.store import ENV_VAR, FACTORY_DIR, LoadProblem, PresetStore, default_presets_dir

__all__ = ["ENV_VAR", "FACTORY_DIR", "SCHEMA_TAG", "SCHEMA_VERSION", "LoadProblem", "Preset", "PresetError",
           "PresetStore", "default_presets_dir", "diff_presets", "fingerprint", "fingerprint_bit_error",
           "fingerprint_file", "fingerprints_match", "short_fingerprint"]
