"""Preset store (one JSON file per reference track) and factory presets."""
