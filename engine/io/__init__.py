"""Files: audio decoding and writing with one-line errors (audio.py), reading audio in blocks
(reader.py) with streaming resampling (resample.py), the one JSON reader with limits and strict
JSON out (jsonfile.py), the one atomic write with its output checks (atomic.py), and long tracks in bounded
memory: a decoded input kept on disk, a master written in blocks (stream.py).
May import engine.params and engine.errors only."""
