"""Reading and writing audio files: every bad input becomes one clear :class:`AudioError`.

Reads wav, flac, ogg, mp3 and aiff through soundfile (libsndfile), returns float32
``(2, T)`` at 44.1 kHz (resampled with scipy's polyphase resampler, mono duplicated to both
sides). Refuses, with a message naming the file: missing, empty, unreadable or corrupt files,
truncated files (libsndfile quietly shortens a truncated wav, aiff or mp3; we check the
container's declared size), more than two channels, NaN or infinite samples, audio shorter
than ``min_seconds`` and (unless allowed) digital silence. Clipped audio is accepted as it is.

Writes 24-bit wav or flac atomically (temporary file + rename), clipping at full scale and
reporting how many samples it had to clip.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import sys
import tempfile
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np
import soundfile as sf

from engine.errors import AudioError
from engine.io.atomic import atomic_path
from engine.params import SAMPLE_RATE

READ_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
WRITE_EXTENSIONS = (".wav", ".flac")
#: Shortest audio we analyse or master (loudness needs 0.4 s gating blocks).
MIN_SECONDS = 0.5
#: Peak below which a file counts as silent (-120 dBFS).
SILENCE_PEAK = 1e-6

PathLike = Union[str, os.PathLike]


@dataclass
class LoadedAudio:
    """Decoded audio plus what the file was."""

    audio: np.ndarray  # (2, T) float32 at ``rate``
    path: Path
    source_rate: int
    source_channels: int
    source_frames: int
    rate: int = SAMPLE_RATE  # of ``audio``: SAMPLE_RATE, or the file's own (``load_audio(rate=None)``)

    @property
    def seconds(self) -> float:
        return self.audio.shape[1] / self.rate


def _declared_riff_bytes(path: Path, size: int):
    """(data offset, declared data bytes) of a RIFF/WAVE or AIFF file, or None."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12:
            return None
        big = head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC")
        if not (head[:4] == b"RIFF" and head[8:12] == b"WAVE") and not big:
            return None
        want = b"SSND" if big else b"data"
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            hdr = f.read(8)
            if len(hdr) < 8:
                return None
            cid, clen = hdr[:4], struct.unpack(">I" if big else "<I", hdr[4:])[0]
            if cid == want:
                if clen in (0, 0xFFFFFFFF):  # streamed writers leave the size open
                    return None
                return pos + 8, clen
            pos += 8 + clen + (clen & 1)
    return None


def resample(audio: np.ndarray, source_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling of ``(C, T)`` audio (scipy), float32 out."""
    if source_rate == target_rate:
        return audio.astype(np.float32, copy=False)
    from scipy.signal import resample_poly  # 1 s of imports: only where a file needs it

    ratio = Fraction(target_rate, source_rate).limit_denominator(10000)
    y = resample_poly(audio.astype(np.float64), ratio.numerator, ratio.denominator, axis=-1)
    return y.astype(np.float32)


_DECODER_LINE = re.compile(r"^(?:\[src/libmpg123[^\]]*\] *(?:[A-Za-z]+: *)?|(?:Note|Warning|Error|warning|error): *)")
_stderr_lock = threading.RLock()


@contextlib.contextmanager
def decoder_messages() -> Iterator[List[str]]:
    """``with decoder_messages() as said:`` — what the native decoders print while opening or
    reading a file is collected in ``said`` instead of reaching the terminal.

    Why: libsndfile's mp3 decoder (libmpg123) writes lines such as "Note: Illegal
    Audio-MPEG-Header ..." straight to file descriptor 2, beside refmaster's own one-line error.
    The descriptor is pointed at a temporary file for the duration (under a lock: it belongs to
    the whole process); lines that are not the decoder's (another thread's) are passed on after.
    """
    said: List[str] = []
    with _stderr_lock:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no stderr to redirect
            yield said
            return
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield said
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                others = []
                for line in sink.read(1 << 20).decode("utf-8", "replace").splitlines():
                    (said if _DECODER_LINE.match(line) else others).append(line)
                if others:
                    print("\n".join(others), file=sys.stderr)


def decode_error(p: Path, e: Exception, said: Sequence[str] = ()) -> AudioError:
    """The one-line error for an exception soundfile raised while opening or reading ``p``
    (``said``: the decoder's own messages, from :func:`decoder_messages`)."""
    if isinstance(e, sf.LibsndfileError):
        msg = str(e.error_string if hasattr(e, "error_string") else e).strip().rstrip(".")
        if "not a regular file" in msg and p.is_file():
            # what libsndfile says when its mp3 decoder finds no audio frame in a file that exists
            msg = "no audio frames found in it"
        if said:
            first = _DECODER_LINE.sub("", said[0]).strip().rstrip(".")
            msg += f"; decoder: {first[:100]}"
        return AudioError(f"{p}: cannot decode audio ({msg}); the file is corrupt, truncated or not a supported format "
                          f"({', '.join(x.lstrip('.') for x in READ_EXTENSIONS)})")
    return AudioError(f"{p}: cannot read audio ({e})")


def check_header(path: PathLike, channels: int, fmt: str) -> None:
    """Checks that need only the header: channel count and (wav/aiff) declared vs present bytes."""
    p = Path(path)
    if channels > 2:
        raise AudioError(f"{p}: has {channels} channels; refmaster takes mono or stereo files (mix down to stereo first)")
    size = p.stat().st_size
    declared = _declared_riff_bytes(p, size) if fmt in ("WAV", "WAVEX", "AIFF", "AIFC") else None
    if declared is not None:
        offset, nbytes = declared
        if offset + nbytes > size:
            raise AudioError(f"{p}: file is truncated (header declares {nbytes} bytes of audio, "
                             f"only {max(size - offset, 0)} present)")


def check_path(path: PathLike) -> Path:
    """Missing, a folder or empty: one clear :class:`AudioError`; else the path."""
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: no such file")
    if p.is_dir():
        raise AudioError(f"{p}: is a folder, not an audio file")
    if p.stat().st_size == 0:
        raise AudioError(f"{p}: file is empty")
    return p


def check_mp3_length(path: PathLike, fmt: str, declared_frames: int, decoded_frames: int, rate: int) -> None:
    """libsndfile quietly shortens a truncated mp3: compare with the frame count it declared."""
    if fmt == "MP3" and declared_frames > 0 and decoded_frames < 0.98 * declared_frames:
        raise AudioError(f"{Path(path)}: file is truncated (header declares {declared_frames / rate:.1f} s, "
                         f"only {decoded_frames / rate:.1f} s decode)")


def load_audio(path: PathLike, min_seconds: float = MIN_SECONDS, allow_silent: bool = False,
               rate: Optional[int] = SAMPLE_RATE) -> LoadedAudio:
    """Decode ``path`` to stereo float32 at ``rate`` (default 44.1 kHz; None: the file's own rate,
    no resampling) or raise :class:`AudioError`."""
    p = check_path(path)
    with decoder_messages() as said:
        try:
            with sf.SoundFile(str(p)) as f:
                declared_frames, file_rate, channels, fmt = f.frames, f.samplerate, f.channels, f.format
                data = f.read(dtype="float32", always_2d=True)
            failure = None
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
            failure = e
    if failure is not None:
        raise decode_error(p, failure, said) from None
    check_header(p, channels, fmt)
    check_mp3_length(p, fmt, declared_frames, data.shape[0], file_rate)
    if data.shape[0] == 0:
        raise AudioError(f"{p}: contains no audio samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{p}: contains NaN or infinite samples")
    audio = data.T
    if channels == 1:
        audio = np.repeat(audio, 2, axis=0)
    target = file_rate if rate is None else rate
    audio = resample(audio, file_rate, target)
    out = LoadedAudio(np.ascontiguousarray(audio), p, file_rate, channels, data.shape[0], target)
    if out.seconds < min_seconds:
        raise AudioError(f"{p}: is {data.shape[0] / file_rate:.2f} s long; at least {min_seconds:g} s is needed")
    if not allow_silent and float(np.abs(audio).max()) < SILENCE_PEAK:
        raise AudioError(f"{p}: is silent (peak below -120 dBFS); there is nothing to analyse or master")
    return out


def check_audio_array(audio: np.ndarray, name: str = "audio") -> np.ndarray:
    """Validate an in-memory signal the way :func:`load_audio` validates a file; return ``(2, T)`` float32."""
    a = np.asarray(audio)
    if a.ndim == 1:
        a = np.stack([a, a])
    if a.ndim != 2:
        raise AudioError(f"{name}: expected (channels, samples), got shape {a.shape}")
    if a.shape[0] > 2 and a.shape[1] <= 2:
        a = a.T
    if a.shape[0] == 1:
        a = np.repeat(a, 2, axis=0)
    if a.shape[0] != 2:
        raise AudioError(f"{name}: has {a.shape[0]} channels; expected mono or stereo")
    if not np.isfinite(a).all():
        raise AudioError(f"{name}: contains NaN or infinite samples")
    return np.ascontiguousarray(a, dtype=np.float32)


def write_audio(path: PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> int:
    """Write ``(2, T)`` audio as 24-bit wav or flac, atomically. Returns the number of samples clipped."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in WRITE_EXTENSIONS:
        raise AudioError(f"{p}: can only write {' or '.join(WRITE_EXTENSIONS)} files")
    a = check_audio_array(audio, str(p))
    clipped = int(np.count_nonzero(np.abs(a) > 1.0))
    a = np.clip(a, -1.0, 1.0)
    if p.parent and not p.parent.exists():
        raise AudioError(f"{p}: folder {p.parent} does not exist")
    with atomic_path(p, suffix=ext) as tmp:
        sf.write(str(tmp), a.T, sample_rate, subtype="PCM_24", format="WAV" if ext == ".wav" else "FLAC")
    return clipped
