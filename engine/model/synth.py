"""A deterministic multi-instrument song synthesiser for tests, training data and the demo.

``synth_song(seed, seconds)`` returns a stereo mix (drums, bass, chords, lead, reverb send)
that is "mixed but not mastered": realistic balance and stereo placement, peaks a few dB
under full scale, no bus processing. The seed picks tempo (78–170 BPM), key and mode, chord
progression, drum pattern, and the timbre of each part (saw/square/sine bass, pad/e-piano/
organ chords, pluck/square/bell lead), levels, pans and room size, so different seeds give
audibly different songs, and the same seed gives the same samples on every machine.

Tones are band-limited wavetables read by phase accumulation (cheap, alias-free enough);
drums are shaped noise and pitch-swept sines. Everything is NumPy/SciPy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
from scipy.signal import butter, fftconvolve, sosfilt

from engine import params as _P
from engine.dsp.chain import render_offline
from engine.params import SAMPLE_RATE

TABLE = 2048

MODES = {
    "major": [0, 2, 4, 5, 7, 9, 11],
    "minor": [0, 2, 3, 5, 7, 8, 10],
    "dorian": [0, 2, 3, 5, 7, 9, 10],
    "mixolydian": [0, 2, 4, 5, 7, 9, 10],
}
PROGRESSIONS = [[0, 4, 5, 3], [0, 5, 3, 4], [0, 3, 4, 4], [5, 3, 0, 4], [0, 6, 5, 4], [1, 4, 0, 0]]
DRUM_PATTERNS = {  # 16 steps per bar: kick, snare, closed hat
    "four": ([0, 4, 8, 12], [4, 12], list(range(2, 16, 4))),
    "backbeat": ([0, 7, 8, 10], [4, 12], list(range(0, 16, 2))),
    "break": ([0, 6, 10], [4, 12, 15], list(range(16))),
    "halftime": ([0, 11], [8], list(range(0, 16, 2))),
}


@dataclass
class SongInfo:
    """What a seed chose (printed by `refmaster synth`)."""

    seed: int
    tempo: float
    key: str
    mode: str
    drums: str
    bass: str
    chords: str
    lead: str

    def describe(self) -> str:
        return (f"seed {self.seed}: {self.tempo:.0f} BPM, {self.key} {self.mode}, drums '{self.drums}', "
                f"bass '{self.bass}', chords '{self.chords}', lead '{self.lead}'")


_NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]


def midi_hz(m):
    return 440.0 * 2.0 ** ((np.asarray(m, dtype=np.float64) - 69.0) / 12.0)


def _table(amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    k = np.arange(1, len(amps) + 1)[:, None]
    t = np.arange(TABLE)[None, :] / TABLE
    return (amps[:, None] * np.sin(2 * np.pi * k * t + phases[:, None])).sum(0)


def _wave(kind: str, freq: float, rng: np.random.Generator) -> np.ndarray:
    """One band-limited cycle of a waveform for ``freq`` Hz."""
    n = max(1, min(64, int(18000.0 / freq)))
    k = np.arange(1, n + 1)
    if kind == "saw":
        amps = 1.0 / k
    elif kind == "square":
        amps = np.where(k % 2 == 1, 1.0 / k, 0.0)
    elif kind == "organ":
        amps = np.zeros(n)
        for h, a in ((1, 1.0), (2, 0.6), (3, 0.35), (4, 0.25), (6, 0.15), (8, 0.1)):
            if h <= n:
                amps[h - 1] = a
    elif kind == "sine":
        amps = np.zeros(n)
        amps[0] = 1.0
        if n > 1:
            amps[1] = 0.15
    else:
        raise ValueError(kind)
    t = _table(amps, rng.uniform(0, 2 * np.pi, n) if kind != "sine" else np.zeros(n))
    return t / np.abs(t).max()


def _osc(table: np.ndarray, freq, n: int, phase0: float = 0.0) -> np.ndarray:
    f = np.broadcast_to(np.asarray(freq, dtype=np.float64), (n,))
    ph = (phase0 + np.cumsum(f) / SAMPLE_RATE) % 1.0
    pos = ph * TABLE
    i = pos.astype(np.int64)
    frac = pos - i
    return table[i] * (1 - frac) + table[(i + 1) % TABLE] * frac


def _env(n: int, attack: float, decay: float, sustain: float, release_at: int) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    a = np.clip(t / max(attack, 1e-4), 0, 1)
    d = sustain + (1 - sustain) * np.exp(-np.maximum(t - attack, 0) / max(decay, 1e-4))
    e = a * d
    if release_at < n:
        tail = np.arange(n - release_at) / SAMPLE_RATE
        e[release_at:] = e[min(release_at, n - 1)] * np.exp(-tail / 0.06)
    return e


def _add(buf: np.ndarray, sig: np.ndarray, start: int, gain_lr: Tuple[float, float]) -> None:
    if start >= buf.shape[1]:
        return
    n = min(len(sig), buf.shape[1] - start)
    buf[0, start : start + n] += gain_lr[0] * sig[:n]
    buf[1, start : start + n] += gain_lr[1] * sig[:n]


def _pan(p: float) -> Tuple[float, float]:
    """Constant-power pan, p in -1 (left) … 1 (right)."""
    th = (p + 1) * np.pi / 4
    return float(np.cos(th) * np.sqrt(2)), float(np.sin(th) * np.sqrt(2))


def _drum_kit(rng: np.random.Generator):
    sr = SAMPLE_RATE
    # kick: pitch-swept sine with a click
    n = int(0.45 * sr)
    t = np.arange(n) / sr
    f0, f1 = rng.uniform(110, 170), rng.uniform(42, 58)
    f = f1 + (f0 - f1) * np.exp(-t / rng.uniform(0.02, 0.05))
    kick = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / rng.uniform(0.12, 0.3))
    kick[: int(0.003 * sr)] += rng.normal(0, 0.3, int(0.003 * sr))
    # snare: band-passed noise plus a tone
    n = int(0.35 * sr)
    t = np.arange(n) / sr
    noise = sosfilt(butter(2, [rng.uniform(1200, 2500), rng.uniform(6000, 10000)], "bandpass", fs=sr, output="sos"),
                    rng.normal(0, 1, n))
    snare = 0.8 * noise * np.exp(-t / rng.uniform(0.06, 0.14)) + 0.6 * np.sin(2 * np.pi * rng.uniform(170, 230) * t) * np.exp(-t / 0.05)
    # hats: high-passed noise, closed and open
    hp = butter(4, rng.uniform(6000, 9000), "highpass", fs=sr, output="sos")
    n = int(0.4 * sr)
    t = np.arange(n) / sr
    hn = sosfilt(hp, rng.normal(0, 1, n))
    hat = hn * np.exp(-t / rng.uniform(0.015, 0.04))
    open_hat = hn * np.exp(-t / rng.uniform(0.12, 0.25))
    norm = lambda s: s / np.abs(s).max()
    return norm(kick), norm(snare), norm(hat), norm(open_hat)


def synth_song(seed: int, seconds: float = 20.0) -> np.ndarray:
    """A stereo mix ``(2, T)`` float32 at 44.1 kHz; see the module docstring."""
    return synth_song_with_info(seed, seconds)[0]


def synth_song_with_info(seed: int, seconds: float = 20.0) -> Tuple[np.ndarray, SongInfo]:
    rng = np.random.default_rng(seed)
    sr = SAMPLE_RATE
    T = int(round(seconds * sr))
    tempo = float(rng.choice([78, 92, 100, 112, 124, 132, 150, 170]))
    step = 60.0 / tempo / 4  # 16th note
    steps = int(np.ceil(seconds / step)) + 1
    root = int(rng.integers(36, 48))
    mode = str(rng.choice(list(MODES)))
    scale = MODES[mode]
    prog = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    drums_kind = str(rng.choice(list(DRUM_PATTERNS)))
    bass_kind = str(rng.choice(["saw", "square", "sine"]))
    chord_kind = str(rng.choice(["pad", "epiano", "organ"]))
    lead_kind = str(rng.choice(["pluck", "square", "bell"]))
    info = SongInfo(seed, tempo, _NOTE_NAMES[root % 12], mode, drums_kind, bass_kind, chord_kind, lead_kind)

    def degree_midi(deg: int, octave_base: int) -> int:
        return octave_base + scale[deg % 7] + 12 * (deg // 7)

    drums = np.zeros((2, T))
    bass = np.zeros((2, T))
    chords = np.zeros((2, T))
    lead = np.zeros((2, T))

    # -- drums
    kick, snare, hat, open_hat = _drum_kit(rng)
    kp, sp, hp_steps = DRUM_PATTERNS[drums_kind]
    spread = rng.uniform(0.2, 1.0)  # how wide this song is mixed
    hat_pan, snare_pan = _pan(spread * rng.uniform(-0.8, 0.8)), _pan(rng.uniform(-0.1, 0.1))
    for s in range(steps):
        pos = int(s * step * sr)
        b = s % 16
        swing = int(rng.normal(0, 0.002) * sr)
        if b in kp:
            _add(drums, kick * rng.uniform(0.85, 1.0), pos, (1.0, 1.0))
        if b in sp:
            _add(drums, snare * rng.uniform(0.7, 0.9), max(pos + swing, 0), snare_pan)
        if b in hp_steps:
            if b % 8 == 6 and rng.random() < 0.3:
                _add(drums, open_hat * 0.35, pos, hat_pan)
            else:
                _add(drums, hat * rng.uniform(0.2, 0.4) * (1.0 if b % 4 == 0 else 0.7), max(pos + swing, 0), hat_pan)

    # -- harmony: one chord per bar
    bars = int(np.ceil(steps / 16))
    bass_base = root
    chord_base = root + 12 * int(rng.integers(1, 3))
    rhythms = [[0, 8], [0, 6, 8, 14], [0, 2, 4, 6, 8, 10, 12, 14], [0, 3, 8, 11]]
    bass_rhythm = rhythms[int(rng.integers(len(rhythms)))]
    bass_cut = rng.uniform(400, 1600)
    for bar in range(bars):
        deg = prog[bar % len(prog)]
        bar_pos = int(bar * 16 * step * sr)
        # bass
        for j, st in enumerate(bass_rhythm):
            nxt = bass_rhythm[j + 1] if j + 1 < len(bass_rhythm) else 16
            n = int((nxt - st) * step * sr)
            m = degree_midi(deg, bass_base) + (12 if (bass_kind != "sine" and rng.random() < 0.15) else 0)
            f = float(midi_hz(m))
            sig = _osc(_wave(bass_kind, f, rng), f, n) * _env(n, 0.005, 0.25, 0.5, int(n * 0.85))
            _add(bass, sig, bar_pos + int(st * step * sr), (1.0, 1.0))
        # chords
        n = int(16 * step * sr)
        notes = [degree_midi(deg + k, chord_base) for k in (0, 2, 4)] + ([degree_midi(deg + 6, chord_base)] if rng.random() < 0.4 else [])
        for i, m in enumerate(notes):
            f = float(midi_hz(m))
            pan = _pan(((i / max(len(notes) - 1, 1)) * 2 - 1) * spread * rng.uniform(0.6, 1.0))
            if chord_kind == "pad":  # two detuned voices, one per side: a wide chorus
                w = _wave("saw", f, rng)
                env = _env(n, 0.12, 1.0, 0.8, int(n * 0.92)) / len(notes)
                a, b = _osc(w, f * 1.003, n) * env, _osc(w, f * 0.997, n, 0.3) * env
                _add(chords, (1 + spread) / 2 * a + (1 - spread) / 2 * b, bar_pos, (1.0, 0.0))
                _add(chords, (1 - spread) / 2 * a + (1 + spread) / 2 * b, bar_pos, (0.0, 1.0))
                continue
            elif chord_kind == "epiano":
                t = np.arange(n) / sr
                idx = 2.0 * np.exp(-t / 0.4)
                sig = np.sin(2 * np.pi * f * t + idx * np.sin(2 * np.pi * f * t)) * _env(n, 0.003, 0.8, 0.2, int(n * 0.9))
            else:
                sig = _osc(_wave("organ", f, rng), f, n) * _env(n, 0.01, 0.3, 0.9, int(n * 0.95))
            _add(chords, sig / len(notes), bar_pos, pan)

    # -- lead: a random walk on the scale, eighths and quarters with rests
    lead_base = root + 24 + 12 * int(rng.integers(0, 2))
    deg, s = int(rng.integers(0, 7)), 0
    vib = rng.uniform(4.5, 6.0)
    lead_pan = _pan(spread * rng.uniform(-0.5, 0.5))
    while s < steps:
        dur = int(rng.choice([2, 2, 4, 4, 6, 8]))
        if rng.random() < 0.2:  # rest
            s += dur
            continue
        deg = int(np.clip(deg + rng.choice([-2, -1, -1, 0, 1, 1, 2, 3]), -3, 10))
        m = degree_midi(deg, lead_base)
        f = float(midi_hz(m))
        n = int(dur * step * sr)
        t = np.arange(n) / sr
        if lead_kind == "pluck":
            sig = 0.6 * _osc(_wave("saw", f, rng), f, n) * np.exp(-t / 0.18) + 0.4 * _osc(_wave("sine", f, rng), f, n) * np.exp(-t / 0.5)
        elif lead_kind == "square":
            fm = f * (1 + 0.004 * np.sin(2 * np.pi * vib * t) * np.clip(t / 0.2, 0, 1))
            sig = _osc(_wave("square", f, rng), fm, n) * _env(n, 0.01, 0.2, 0.7, int(n * 0.9))
        else:
            sig = np.sin(2 * np.pi * f * t + 1.5 * np.exp(-t / 0.3) * np.sin(2 * np.pi * 3.5 * f * t)) * np.exp(-t / 0.6)
        _add(lead, sig, int(s * step * sr), lead_pan)
        s += dur

    # -- tone shaping per part
    bass = sosfilt(butter(2, bass_cut, "lowpass", fs=sr, output="sos"), bass, axis=1)
    chords = sosfilt(butter(2, rng.uniform(2500, 8000), "lowpass", fs=sr, output="sos"), chords, axis=1)
    chords = sosfilt(butter(1, rng.uniform(120, 250), "highpass", fs=sr, output="sos"), chords, axis=1)
    lead = sosfilt(butter(1, 200, "highpass", fs=sr, output="sos"), lead, axis=1)
    # ping-pong echo on the lead (dotted eighth)
    d = int(3 * step * sr)
    echo = np.zeros_like(lead)
    echo[1, d:] += 0.35 * lead.sum(0)[: T - d]
    echo[0, 2 * d:] += 0.2 * lead.sum(0)[: T - 2 * d]
    lead = lead + echo

    def level(db: float) -> float:
        return 10 ** (db / 20)

    parts = [
        level(rng.uniform(-1, 1)) * drums / (np.abs(drums).max() + 1e-9),
        level(rng.uniform(-4, -1)) * bass / (np.abs(bass).max() + 1e-9),
        level(rng.uniform(-7, -3)) * chords / (np.abs(chords).max() + 1e-9),
        level(rng.uniform(-8, -4)) * lead / (np.abs(lead).max() + 1e-9),
    ]
    mix = sum(parts)
    # reverb send: decorrelated decaying noise, one impulse response per side
    rt60 = rng.uniform(0.6, 1.8)
    n_ir = int(rt60 * sr)
    t = np.arange(n_ir) / sr
    ir = rng.normal(0, 1, (2, n_ir)) * np.exp(-6.9 * t / rt60)
    ir = sosfilt(butter(1, 6000, "lowpass", fs=sr, output="sos"), ir, axis=1)
    send = parts[2] + parts[3] + 0.3 * parts[0]
    wet = np.stack([fftconvolve(send.mean(0), ir[c])[:T] for c in range(2)])
    mix = mix + level(rng.uniform(-12, -4) + 10 * (spread - 0.5)) * wet / (np.sqrt(np.mean(wet ** 2)) / np.sqrt(np.mean(send ** 2)) + 1e-9)
    # fade edges, leave mixing headroom: peak between -6 and -3 dBFS
    fade = np.minimum(1.0, np.minimum(np.arange(T), np.arange(T)[::-1]) / (0.01 * sr))
    mix = mix * fade
    mix *= level(rng.uniform(-6, -3)) / (np.abs(mix).max() + 1e-9)
    return mix.astype(np.float32), info


def synth_corpus(seeds: List[int], seconds: float = 20.0) -> List[np.ndarray]:
    return [synth_song(s, seconds) for s in seeds]


#: The reference's mastering: every module on, a loud, bright, wide, limited style.
REFERENCE_STYLE = _P.ChainParams.default().with_values(**{
    "eq.low_shelf_gain": 3.0, "eq.low_shelf_freq": 110.0, "eq.band1_gain": 2.0, "eq.high_shelf_gain": 5.0,
    "eq.high_shelf_freq": 8000.0, "distortion.drive": 3.0, "distortion.mix": 0.3,
    "multiband.mix": 0.6, "multiband.low_comp_threshold": -22.0, "multiband.low_comp_ratio": 3.0,
    "multiband.mid_comp_threshold": -24.0, "multiband.mid_comp_ratio": 2.5,
    "multiband.high_comp_threshold": -26.0, "multiband.high_comp_ratio": 2.0,
    "gain.gain": 9.0, "imager.width": 0.65, "limiter.threshold": -2.0, "limiter.attack": 0.5,
    "limiter.release": 80.0,
})


def demo_pair(seconds: float, seed: int):
    """The demo's pair: a synthesised song, and a different one mastered in :data:`REFERENCE_STYLE`;
    returns ``(song, its info, reference, the reference song's info)``."""
    song, info = synth_song_with_info(seed, seconds)
    other, other_info = synth_song_with_info(seed + 1000, seconds)
    reference = render_offline(other, REFERENCE_STYLE)
    return song, info, reference, other_info
