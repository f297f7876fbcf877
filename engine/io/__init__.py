"""Files: audio decoding and writing with one-line errors (audio.py) and the one atomic write (atomic.py).
May import engine.params and engine.errors only."""
