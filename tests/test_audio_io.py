import os

import numpy as np
import pytest
import soundfile as sf

from engine.errors import AudioError
from engine.io.audio import load_audio, write_audio


@pytest.fixture
def noise():
    return (0.1 * np.random.default_rng(0).standard_normal((44100, 2))).astype(np.float32)


@pytest.mark.parametrize("ext,subtype", [("wav", "PCM_16"), ("flac", "PCM_24"), ("ogg", "VORBIS"),
                                         ("mp3", "MPEG_LAYER_III"), ("aiff", "PCM_16")])
def test_reads_every_format(tmp_path, noise, ext, subtype):
    f = tmp_path / f"a.{ext}"
    sf.write(f, noise, 44100, subtype=subtype)
    a = load_audio(f)
    assert a.audio.shape[0] == 2 and a.audio.dtype == np.float32
    assert abs(a.audio.shape[1] - 44100) < 3000  # mp3 adds codec padding


def test_resamples_and_upmixes(tmp_path):
    t = np.arange(48000 * 2) / 48000
    sf.write(tmp_path / "m.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 48000)
    a = load_audio(tmp_path / "m.wav")
    assert a.source_rate == 48000 and a.source_channels == 1
    assert a.audio.shape == (2, 88200)
    assert np.array_equal(a.audio[0], a.audio[1])
    spec = np.abs(np.fft.rfft(a.audio[0]))
    assert abs(np.argmax(spec) * 44100 / 88200 - 440) < 1


@pytest.mark.parametrize("case,needle", [
    ("missing", "no such file"), ("empty", "empty"), ("corrupt", "cannot decode"), ("short", "at least"),
    ("silent", "silent"), ("six", "6 channels"), ("nan", "NaN"), ("truncated", "truncated"), ("folder", "folder"),
])
def test_bad_inputs_are_one_clear_error(tmp_path, noise, case, needle):
    f = tmp_path / "x.wav"
    if case == "empty":
        f.write_bytes(b"")
    elif case == "corrupt":
        f.write_bytes(os.urandom(4096))
    elif case == "short":
        sf.write(f, noise[:4410], 44100)
    elif case == "silent":
        sf.write(f, np.zeros((44100, 2)), 44100)
    elif case == "six":
        sf.write(f, np.zeros((44100, 6)) + 0.1, 44100)
    elif case == "nan":
        bad = noise.copy()
        bad[100, 0] = np.nan
        sf.write(f, bad, 44100, subtype="FLOAT")
    elif case == "truncated":
        sf.write(f, noise, 44100, subtype="PCM_24")
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    elif case == "folder":
        f = tmp_path
    with pytest.raises(AudioError) as e:
        load_audio(f)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_accepts_clipped_audio(tmp_path, noise):
    sf.write(tmp_path / "c.wav", noise * 30, 44100, subtype="FLOAT")
    assert np.abs(load_audio(tmp_path / "c.wav").audio).max() > 1.0


def test_writes_24_bit_atomically_and_counts_clipping(tmp_path, noise):
    x = noise.T.copy()
    x[0, :10] = 1.5
    out = tmp_path / "o.flac"
    assert write_audio(out, x) == 10
    info = sf.info(out)
    assert info.subtype == "PCM_24" and info.channels == 2 and info.frames == x.shape[1]
    assert [p.name for p in tmp_path.iterdir()] == ["o.flac"]
    back = load_audio(out).audio
    assert np.abs(back[:, 10:] - x[:, 10:]).max() < 1e-6
    with pytest.raises(AudioError):
        write_audio(tmp_path / "o.mp3", x)


def test_write_audio_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    """A write that fails half-way (disk full, a kill) leaves the previous file as it was and no
    temporary file: the audio is written beside it and renamed into place."""
    import hashlib

    import soundfile

    from engine.io.audio import write_audio

    out = tmp_path / "master.wav"
    write_audio(out, np.full((2, 44100), 0.1, np.float32))
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    real_write = soundfile.write

    def failing_write(file, data, *a, **k):
        real_write(file, data[: len(data) // 4], *a, **k)  # a quarter reaches the disk, then it fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(soundfile, "write", failing_write)
    with pytest.raises(Exception):  # the OSError, or the one-line error it becomes
        write_audio(out, np.full((2, 88200), 0.2, np.float32))
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.wav"]
