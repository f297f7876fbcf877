"""Long tracks in bounded memory: a decoded input kept on disk, and a master written in blocks.

Why: a 60-minute input is 1.27 GB as float32 stereo at 44.1 kHz, so `master` cannot hold it
(the issue's budget is 1.5 GB for everything). :class:`DecodedTrack` decodes it once, in blocks
(:class:`engine.io.reader.AudioReader`, with every check :func:`engine.io.audio.load_audio`
makes), to an anonymous temporary file (removed by the system however the process ends) that
any range can be read back from; :func:`write_blocks` writes a master block by block to a
temporary file renamed over the target at the end (:func:`engine.io.atomic.atomic_path`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from engine.errors import AudioError
from engine.io.atomic import atomic_path
from engine.io.audio import MIN_SECONDS, WRITE_EXTENSIONS, PathLike
from engine.params import SAMPLE_RATE

_FRAME_BYTES = 2 * 4   # stereo float32


def track_seconds(path: PathLike) -> Optional[float]:
    """The length a file's header declares (s), or None when it declares none or cannot be read
    (then the whole decode finds out)."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError, ValueError):
        return None
    return info.frames / info.samplerate if info.frames > 0 and info.samplerate > 0 else None


def array_reader(audio: np.ndarray) -> Callable[[int, int], np.ndarray]:
    """``read(start, n)`` over an in-memory ``(2, T)`` signal, with zeros outside it (the reading
    interface of :class:`Scratch` and :class:`DecodedTrack`)."""
    T = audio.shape[1]

    def read(start: int, n: int) -> np.ndarray:
        if 0 <= start and start + n <= T:
            return np.array(audio[:, start : start + n], dtype=np.float32)
        out = np.zeros((2, n), np.float32)
        a, b = max(start, 0), min(start + n, T)
        if b > a:
            out[:, a - start : b - start] = audio[:, a:b]
        return out

    return read


class Scratch:
    """Stereo float32 frames appended to an anonymous temporary file (removed by the system however
    the process ends), read back as any range: what does not fit in memory waits on disk."""

    def __init__(self):
        self._file = tempfile.TemporaryFile(prefix="refmaster-scratch-")
        self.frames = 0

    def append(self, x: np.ndarray) -> None:
        """Add ``(2, n)`` frames at the end."""
        self._file.write(np.ascontiguousarray(np.asarray(x, dtype=np.float32).T).tobytes())
        self.frames += x.shape[1]

    def read(self, start: int, n: int) -> np.ndarray:
        """Frames ``[start, start + n)`` as (2, n) float32; zeros where that is outside what was written."""
        out = np.zeros((2, n), np.float32)
        a, b = max(start, 0), min(start + n, self.frames)
        if b > a:
            self._file.flush()
            raw = os.pread(self._file.fileno(), (b - a) * _FRAME_BYTES, a * _FRAME_BYTES)
            out[:, a - start : b - start] = np.frombuffer(raw, np.float32).reshape(-1, 2).T
        return out

    def close(self) -> None:
        self._file.close()


class DecodedTrack:
    """An input decoded once to stereo float32 at 44.1 kHz in a temporary file.

    ``path``, ``source_rate``, ``source_channels``, ``source_frames`` and ``seconds`` as
    :class:`engine.io.audio.LoadedAudio` has them; ``frames`` at 44.1 kHz; :meth:`read` for
    any range. ``on_block(block)`` sees every decoded block (an analysis taken on the way).
    """

    def __init__(self, path: PathLike, min_seconds: float = MIN_SECONDS,
                 on_block: Optional[Callable[[np.ndarray], None]] = None, block: int = 1 << 18):
        from engine.io.reader import AudioReader

        reader = AudioReader(path, min_seconds=min_seconds)
        self.path = reader.path
        self.source_rate, self.source_channels = reader.rate, reader.channels
        self._store = Scratch()
        try:
            for x in reader.blocks(block):
                if on_block is not None:
                    on_block(x)
                self._store.append(x)
        except BaseException:
            self._store.close()
            raise
        self.source_frames = reader.frames_read

    @property
    def frames(self) -> int:
        return self._store.frames

    @property
    def seconds(self) -> float:
        return self.frames / SAMPLE_RATE

    def read(self, start: int, n: int) -> np.ndarray:
        """Samples ``[start, start + n)`` as (2, n) float32; zeros where that is outside the track."""
        return self._store.read(start, n)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> "DecodedTrack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_blocks(path: PathLike, blocks: Iterable[np.ndarray], sample_rate: int = SAMPLE_RATE) -> int:
    """Write ``(2, n)`` blocks as one 24-bit wav or flac, atomically; returns the samples clipped
    (as :func:`engine.io.audio.write_audio` does for a whole array)."""
    import soundfile as sf

    p = Path(path)
    ext = p.suffix.lower()
    if ext not in WRITE_EXTENSIONS:
        raise AudioError(f"{p}: can only write {' or '.join(WRITE_EXTENSIONS)} files")
    clipped = 0
    with atomic_path(p, suffix=ext) as tmp:
        with sf.SoundFile(str(tmp), "w", sample_rate, 2, subtype="PCM_24",
                          format="WAV" if ext == ".wav" else "FLAC") as f:
            for y in blocks:
                y = np.asarray(y, dtype=np.float32)
                if not np.isfinite(y).all():
                    raise AudioError(f"{p}: the master contains NaN or infinite samples")
                clipped += int(np.count_nonzero(np.abs(y) > 1.0))
                f.write(np.clip(y, -1.0, 1.0).T)
    return clipped
