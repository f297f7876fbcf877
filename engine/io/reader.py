"""Reading an audio file in blocks, with the checks of :func:`engine.io.audio.load_audio`.

Why: a 60-minute file is 635 MB as float32 stereo, and an analysis or render that holds it
whole (plus float64 copies) does not fit in bounded memory. :class:`AudioReader` hands out
blocks: a problem found in the header (missing, empty, corrupt, more than two channels,
truncated, too short) is raised on opening, before any work; one found while reading (NaN
samples) or at the end (a truncated mp3, too short, silent) when it is found. What the native
decoders print is kept off the terminal (:func:`engine.io.audio.decoder_messages`).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import soundfile as sf

from engine.errors import AudioError
from engine.io.audio import (MIN_SECONDS, SILENCE_PEAK, PathLike, check_header, check_mp3_length, check_path,
                             decode_error, decoder_messages)
from engine.io.resample import StreamingResampler
from engine.params import SAMPLE_RATE

_SOUNDFILE_ERRORS = (sf.LibsndfileError, RuntimeError, OSError, ValueError)


class AudioReader:
    """Blocks of ``(2, n)`` float32 at the file's rate (mono duplicated), or at 44.1 kHz with
    :meth:`blocks`; ``rate``, ``channels``, ``format``, ``declared_frames`` from the header,
    ``frames_read`` and ``peak`` so far."""

    def __init__(self, path: PathLike, min_seconds: float = MIN_SECONDS):
        self.path = check_path(path)
        self.min_seconds = min_seconds
        with decoder_messages() as said:
            try:
                self.file = sf.SoundFile(str(self.path))
                failure = None
            except _SOUNDFILE_ERRORS as e:
                failure = e
        if failure is not None:
            raise decode_error(self.path, failure, said) from None
        self.rate, self.channels, self.format = self.file.samplerate, self.file.channels, self.file.format
        self.declared_frames = self.file.frames
        try:
            check_header(self.path, self.channels, self.format)
        except AudioError:
            self.file.close()
            raise
        if self.declared_frames < min_seconds * self.rate and self.format != "MP3":
            self.file.close()
            raise AudioError(f"{self.path}: is {self.declared_frames / self.rate:.2f} s long; "
                             f"at least {min_seconds:g} s is needed")
        self.frames_read = 0
        self.peak = 0.0

    @property
    def seconds(self) -> float:
        return self.frames_read / self.rate

    def read(self, n: int) -> np.ndarray:
        """Up to ``n`` frames as ``(2, m)`` float32 at the file's rate (m = 0 at the end)."""
        with decoder_messages() as said:
            try:
                data = self.file.read(n, dtype="float32", always_2d=True)
                failure = None
            except _SOUNDFILE_ERRORS as e:
                failure = e
        if failure is not None:
            raise decode_error(self.path, failure, said) from None
        if not np.isfinite(data).all():
            raise AudioError(f"{self.path}: contains NaN or infinite samples")
        self.frames_read += data.shape[0]
        x = data.T
        if self.channels == 1:
            x = np.repeat(x, 2, axis=0)
        if x.shape[1]:
            self.peak = max(self.peak, float(np.abs(x).max()))
        return np.ascontiguousarray(x)

    def finish(self) -> None:
        """End-of-file checks: a truncated mp3, too short, silent."""
        self.file.close()
        check_mp3_length(self.path, self.format, self.declared_frames, self.frames_read, self.rate)
        if self.frames_read == 0:
            raise AudioError(f"{self.path}: contains no audio samples")
        if self.frames_read < self.min_seconds * self.rate:
            raise AudioError(f"{self.path}: is {self.frames_read / self.rate:.2f} s long; "
                             f"at least {self.min_seconds:g} s is needed")
        if self.peak < SILENCE_PEAK:
            raise AudioError(f"{self.path}: is silent (peak below -120 dBFS); there is nothing to analyse or master")

    def blocks(self, frames: int = 1 << 16, rate: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
        """The whole file as ``(2, m)`` float32 blocks at ``rate`` (resampled on the fly as
        :func:`engine.io.audio.resample` would), then the end-of-file checks."""
        resampler = StreamingResampler(self.rate, rate) if self.rate != rate else None
        try:
            while True:
                x = self.read(frames)
                if not x.shape[1]:
                    break
                y = x if resampler is None else resampler.process(x)
                if y.shape[1]:
                    yield y
            self.finish()
            if resampler is not None:
                yield resampler.flush()
        finally:
            self.file.close()
