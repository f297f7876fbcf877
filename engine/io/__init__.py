"""Files: audio decoding and writing with one-line errors (audio.py), reading audio in blocks
(reader.py) with streaming resampling (resample.py), the one JSON reader with limits and strict
JSON out (jsonfile.py), and the one atomic write with its output checks (atomic.py).
May import engine.params and engine.errors only."""
