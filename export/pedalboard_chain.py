"""The mastering chain on pedalboard's native plugins, calibrated to the Torch render.

Θ maps onto pedalboard (JUCE) plugins where pedalboard has them, and the parts it lacks run
in NumPy between boards, all streaming with state:
1. board ``pre``: ``LowShelfFilter``, four ``PeakFilter``, ``HighShelfFilter`` (the same RBJ
   designs as the Torch EQ), then the parallel saturation as ``Mix([Gain(dry), Pedalboard(
   [Distortion(drive), Gain(wet)])])`` (pedalboard's Distortion is ``tanh(drive x)``, as ours);
2. NumPy: the two Linkwitz-Riley crossovers (:func:`engine.dsp.filters.crossover_sections`,
   ``scipy.signal.sosfilt`` with carried state), mid = x − low − high;
3. one board per band: ``NoiseGate`` (a downward expander: ratio = 1 / our expander ratio)
   then ``Compressor``, stereo-linked like torchcomp's (see :func:`_linked_gain`); NumPy sums
   the bands and mixes them with the dry signal;
4. NumPy: mid/side width (it commutes with the make-up gain, so it runs first);
5. ``Gain`` (make-up gain), the limiter as a ``Compressor`` with ratio 1000 (stereo-linked on
   the peak of both channels), ``Gain`` (the calibrated output trim). Not pedalboard's ``Limiter``: that is JUCE's, which puts a
   fixed −10 dBFS 4:1 compressor before the brick wall and adds make-up gain, so even a 0 dB
   threshold would change every loud passage, and torchcomp's limiter does neither.

Everything except the dynamics reproduces the Torch chain up to float32 rounding. JUCE's
compressors differ from torchcomp's (per-channel peak detectors at the sample rate against
stereo-linked RMS and peak detectors at the control rate with lookahead), so the dynamics
carry calibration offsets (:data:`CALIBRATION`), found by :func:`export.calibrate.calibrate`
with CMA-ES against the Torch render of a track. :class:`PedalboardSettings` holds Θ, the
offsets and the resulting plugin settings; it is what ``refmaster export --pedalboard`` saves.
Latency: ``2 * LOOKAHEAD`` = 64 samples (each dynamics stage looks one control frame ahead).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pedalboard as pb
import torch
from scipy.signal import lfilter, sosfilt

from engine import params as P
from engine.dsp.chain import EQ_BANDS, MB_BANDS
from engine.dsp.dynamics import CONTROL_HOP, EXP_RATIO_FLOOR, RMS_WINDOW_MS, TORCHCOMP_MS_SCALE
from engine.dsp.filters import crossover_sections
from engine.errors import ParamError, RefmasterError
from engine.io.atomic import atomic_write_text
from engine.io.jsonfile import read_json
from engine.params import SAMPLE_RATE
from engine.rates import design_freq_limit
from export.streaming import StreamingChain

SCHEMA_TAG = "refmaster.pedalboard/1"

#: JUCE's ballistics use ``exp(-2π·1000 / (ms·sr))`` and torchcomp ``1 - exp(-2200 / (ms·sr))``:
#: the same one-pole time constant needs JUCE milliseconds = ours × this factor.
JUCE_TIME_FACTOR = 2.0 * math.pi * 1000.0 / TORCHCOMP_MS_SCALE
#: Ratio of the compressor that plays the limiter (JUCE's own Limiter uses 1000 in its brick wall).
LIMITER_RATIO = 1000.0

_PLUGIN_FOR_KIND = {"low_shelf": pb.LowShelfFilter, "peaking": pb.PeakFilter, "high_shelf": pb.HighShelfFilter}


def _calibration_space() -> Dict[str, Tuple[float, float, str]]:
    space: Dict[str, Tuple[float, float, str]] = {}
    for b in MB_BANDS:
        space[f"multiband.{b}.comp_threshold_offset"] = (-18.0, 18.0, "dB added to the compressor threshold")
        space[f"multiband.{b}.comp_ratio_scale"] = (-2.0, 2.0, "log2 of the factor on (ratio - 1)")
        space[f"multiband.{b}.attack_scale"] = (-4.0, 4.0, "log2 of the factor on the attack time")
        space[f"multiband.{b}.release_scale"] = (-4.0, 4.0, "log2 of the factor on the release time")
        space[f"multiband.{b}.gate_threshold_offset"] = (-18.0, 18.0, "dB added to the expander threshold")
    space["limiter.threshold_offset"] = (-12.0, 6.0, "dB added to the limiter threshold")
    space["limiter.attack_scale"] = (-4.0, 4.0, "log2 of the factor on the limiter attack time")
    space["limiter.release_scale"] = (-4.0, 4.0, "log2 of the factor on the limiter release time")
    space["output.trim"] = (-12.0, 12.0, "dB of output gain after the limiter")
    return space


#: Calibration offsets: name -> (min, max, meaning). All zero is the plain mapping of Θ.
CALIBRATION: Dict[str, Tuple[float, float, str]] = _calibration_space()


def calibration_keys(switches: Dict[str, bool]) -> List[str]:
    """The offsets that matter for these switches (the search only moves those)."""
    keys = []
    for k in CALIBRATION:
        module = k.split(".")[0]
        if module == "output" or switches.get(module, True):
            keys.append(k)
    return keys


@dataclass
class PedalboardSettings:
    """Θ plus calibration offsets: everything the pedalboard chain needs (the `--pedalboard` file)."""

    params: P.ChainParams
    calibration: Dict[str, float] = field(default_factory=dict)
    info: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        clean = {}
        for k, v in self.calibration.items():
            if k not in CALIBRATION:
                raise ParamError(f"calibration.{k}", f"unknown calibration offset (one of {', '.join(CALIBRATION)})")
            lo, hi, _ = CALIBRATION[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise ParamError(f"calibration.{k}", f"expected a finite number, got {v!r}")
            if not lo - 1e-9 <= float(v) <= hi + 1e-9:
                raise ParamError(f"calibration.{k}", f"{v:g} is outside {lo:g}…{hi:g}")
            clean[k] = float(v)
        self.calibration = clean

    def offset(self, key: str) -> float:
        return self.calibration.get(key, 0.0)

    # ------------------------------------------------------------------ the mapping Θ -> plugins
    def plugin_settings(self) -> Dict[str, object]:
        """Every plugin parameter in pedalboard's own units, after calibration."""
        v, sw = self.params.values, self.params.switches
        juce_ms = lambda ms, scale_key: ms * JUCE_TIME_FACTOR * 2.0 ** self.offset(scale_key)
        eq = [{"plugin": _PLUGIN_FOR_KIND[kind].__name__, "cutoff_frequency_hz": v[f"eq.{b}_freq"],
               "gain_db": v[f"eq.{b}_gain"], "q": v[f"eq.{b}_q"]} for b, kind in EQ_BANDS]
        mix = v["distortion.mix"]
        saturation = {"dry_gain_db": 20 * math.log10(1.0 - mix), "drive_db": v["distortion.drive"],
                      "wet_gain_db": 20 * math.log10(mix)}
        bands = {}
        for b in MB_BANDS:
            attack = juce_ms(v[f"multiband.{b}_attack"], f"multiband.{b}.attack_scale")
            release = juce_ms(v[f"multiband.{b}_release"], f"multiband.{b}.release_scale")
            ratio = 1.0 + (v[f"multiband.{b}_comp_ratio"] - 1.0) * 2.0 ** self.offset(f"multiband.{b}.comp_ratio_scale")
            bands[b] = {
                "NoiseGate": {"threshold_db": v[f"multiband.{b}_exp_threshold"] + self.offset(f"multiband.{b}.gate_threshold_offset"),
                              "ratio": 1.0 / max(v[f"multiband.{b}_exp_ratio"], EXP_RATIO_FLOOR),
                              "attack_ms": attack, "release_ms": release},
                "Compressor": {"threshold_db": v[f"multiband.{b}_comp_threshold"] + self.offset(f"multiband.{b}.comp_threshold_offset"),
                               "ratio": ratio, "attack_ms": attack, "release_ms": release},
            }
        limiter = {"threshold_db": v["limiter.threshold"] + self.offset("limiter.threshold_offset"), "ratio": LIMITER_RATIO,
                   "attack_ms": juce_ms(v["limiter.attack"], "limiter.attack_scale"),
                   "release_ms": juce_ms(v["limiter.release"], "limiter.release_scale")}
        return {"switches": dict(sw), "eq": eq, "saturation": saturation,
                "crossovers_hz": [v["multiband.low_crossover"], v["multiband.high_crossover"]],
                "multiband_mix": v["multiband.mix"], "bands": bands,
                "gain_db": v["gain.gain"] if sw["gain"] else 0.0, "width": v["imager.width"], "limiter": limiter,
                "trim_db": self.offset("output.trim")}

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return {"schema": SCHEMA_TAG, "params": self.params.to_dict(), "calibration": dict(self.calibration),
                "info": dict(self.info), "plugins": self.plugin_settings()}

    def save(self, path) -> None:
        """Write atomically (temporary file + rename)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data) -> "PedalboardSettings":
        if not isinstance(data, dict) or data.get("schema") != SCHEMA_TAG:
            raise RefmasterError(f"not a pedalboard chain file (expected \"schema\": \"{SCHEMA_TAG}\"; "
                                 f"write one with `refmaster export ... --pedalboard FILE`)")
        cal = data.get("calibration", {})
        if not isinstance(cal, dict):
            raise ParamError("calibration", "expected an object of offsets")
        return cls(P.ChainParams.from_dict(data.get("params", {})
                                           if isinstance(data.get("params"), dict) else data), cal,
                   data.get("info", {}) if isinstance(data.get("info"), dict) else {})

    @classmethod
    def load(cls, path) -> "PedalboardSettings":
        p = Path(path)
        data = read_json(p, "pedalboard chain file")  # the one JSON reader: depth, huge numbers, damage
        try:
            return cls.from_dict(data)
        except ParamError as e:
            raise ParamError(e.name, f"{e.reason} (in {p})") from None
        except RefmasterError as e:
            raise RefmasterError(f"{p}: {e}") from None


#: Samples the audio waits for its gain in each dynamics stage (multiband, limiter): the
#: Torch chain's lookahead ramp reaches a frame's gain about one control frame ahead.
LOOKAHEAD = CONTROL_HOP

#: Largest block a board ever sees (longer inputs are split). pedalboard re-prepares a plugin,
#: which resets its state, whenever a block is longer than any before it, so every board is
#: primed with a block of silence this long (silence leaves every plugin in its fresh state).
MAX_BLOCK = 8192

#: Added to the detector signal so the gain can be read back as output / input everywhere.
DETECTOR_FLOOR = 1e-12


def _linked_gain(board: pb.Pedalboard, detector: np.ndarray, sample_rate: int) -> np.ndarray:
    """Run ``board`` on a mono, non-negative detector signal and return the gain it applied.

    JUCE's compressors follow each channel on its own; torchcomp's (ours) are stereo-linked.
    Feeding the plugins one detector signal built from both channels (power mean for the bands,
    peak for the limiter, as the Torch detectors) and reading their gain back as output / input
    makes them stereo-linked too: the same gain then goes on both channels.
    """
    d = (detector + DETECTOR_FLOOR).astype(np.float32)[None]
    return board(d, sample_rate, reset=False)[0] / d[0]


class PedalboardStreamingChain(StreamingChain):
    """Θ on pedalboard's plugins, block by block (see the module docstring)."""

    backend = "pedalboard"
    latency = 2 * LOOKAHEAD

    def __init__(self, params: Optional[P.ChainParams] = None, settings: Optional[PedalboardSettings] = None,
                 sample_rate: int = SAMPLE_RATE):
        if settings is not None and params is None:
            params = settings.params
        super().__init__(params, sample_rate)
        self._calibration = dict(settings.calibration) if settings is not None else {}
        self._build()

    @property
    def settings(self) -> PedalboardSettings:
        return PedalboardSettings(self.params, dict(self._calibration))

    def set_params(self, params: P.ChainParams) -> None:
        """New Θ keeps the calibration offsets; plugins are updated in place (their state survives)."""
        super().set_params(params)
        self._configure()

    def set_calibration(self, calibration: Dict[str, float]) -> None:
        self._calibration = PedalboardSettings(self.params, calibration).calibration
        self._configure()

    def _rate_changed(self) -> None:
        self._configure()   # crossovers, RMS window and EQ limits are designed for the rate

    def reset(self) -> None:
        # Reset, then prime through the very containers that process (see MAX_BLOCK).
        stereo, mono = np.zeros((2, MAX_BLOCK), np.float32), np.zeros((1, MAX_BLOCK), np.float32)
        for board, silence in [(self._eq_board, stereo), (self._sat_board, stereo), (self._gain, stereo),
                               (self._trim, stereo), (self._limiter_board, mono)] + [(b, mono) for b in self._bands]:
            board.reset()
            board(silence, self.sample_rate, reset=False)
        self._mb_delay = np.zeros((4, 2, LOOKAHEAD), np.float32)   # dry, low, mid, high
        self._lim_delay = np.zeros((2, LOOKAHEAD), np.float32)
        self._rms_zi = np.zeros((len(MB_BANDS), 1))
        self._zi_low = np.zeros((2, 2, 2))   # (sections, channels, 2) per sosfilt's zi layout
        self._zi_high = np.zeros((2, 2, 2))

    # ------------------------------------------------------------------ boards
    def _build(self) -> None:
        self._eq = [_PLUGIN_FOR_KIND[kind]() for _, kind in EQ_BANDS]
        self._dry, self._drive, self._wet = pb.Gain(), pb.Distortion(), pb.Gain()
        self._sat = pb.Mix([self._dry, pb.Pedalboard([self._drive, self._wet])])
        self._eq_board, self._sat_board = pb.Pedalboard(self._eq), pb.Pedalboard([self._sat])
        self._gates = {b: pb.NoiseGate() for b in MB_BANDS}
        self._comps = {b: pb.Compressor() for b in MB_BANDS}
        self._bands = [pb.Pedalboard([self._gates[b], self._comps[b]]) for b in MB_BANDS]
        self._gain, self._limiter, self._trim = pb.Gain(), pb.Compressor(), pb.Gain()
        self._limiter_board = pb.Pedalboard([self._limiter])
        self._configure()
        self.reset()

    def _configure(self) -> None:
        s = self.settings.plugin_settings()
        self._switches = s["switches"]
        top = design_freq_limit(self.sample_rate)   # as the Torch EQ: no band beyond it (below 44.1 kHz)
        for plugin, cfg in zip(self._eq, s["eq"]):
            plugin.cutoff_frequency_hz, plugin.gain_db, plugin.q = min(cfg["cutoff_frequency_hz"], top), cfg["gain_db"], cfg["q"]
        sat = s["saturation"]
        self._dry.gain_db, self._drive.drive_db, self._wet.gain_db = sat["dry_gain_db"], sat["drive_db"], sat["wet_gain_db"]


        lp, hp = crossover_sections(torch.tensor([s["crossovers_hz"][0]], dtype=torch.float64),
                                    torch.tensor([s["crossovers_hz"][1]], dtype=torch.float64), self.sample_rate)
        self._sos_low, self._sos_high = lp[0].numpy(), hp[0].numpy()
        for b in MB_BANDS:
            for plugin, cfg in ((self._gates[b], s["bands"][b]["NoiseGate"]), (self._comps[b], s["bands"][b]["Compressor"])):
                for k, val in cfg.items():
                    setattr(plugin, k, val)
        self._mb_mix = np.float32(s["multiband_mix"])
        # torchcomp's avg coefficient for the RMS window, at the sample rate (ms2coef)
        self._rms_coef = 1.0 - math.exp(-TORCHCOMP_MS_SCALE / RMS_WINDOW_MS / self.sample_rate)
        self._gain.gain_db = s["gain_db"]
        for k, val in s["limiter"].items():
            setattr(self._limiter, k, val)
        self._trim.gain_db = s["trim_db"]
        self._width = np.float32(s["width"])

    # ------------------------------------------------------------------ processing
    def front(self, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """EQ, saturation and the band split: ``(dry, low, high)`` (the part calibration never changes)."""
        e = x
        for on, board in ((self._switches["eq"], self._eq_board), (self._switches["distortion"], self._sat_board)):
            if on and e.shape[1]:
                e = np.concatenate([board(e[:, i:i + MAX_BLOCK], self.sample_rate, reset=False)
                                    for i in range(0, e.shape[1], MAX_BLOCK)], axis=1)
        e = np.asarray(e, dtype=np.float32)
        low, self._zi_low = sosfilt(self._sos_low, e, axis=-1, zi=self._zi_low)
        high, self._zi_high = sosfilt(self._sos_high, e, axis=-1, zi=self._zi_high)
        return e, low.astype(np.float32), high.astype(np.float32)

    def back(self, dry: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Band dynamics, mixes, width, gain and limiter (in pieces of at most :data:`MAX_BLOCK`).

        Each dynamics stage computes its gain from the undelayed signal and applies it to the
        signal delayed by :data:`LOOKAHEAD` samples, as the Torch chain's lookahead ramp does
        (whatever the switches, so the latency stays ``2 * LOOKAHEAD``).
        """
        if dry.shape[1] > MAX_BLOCK:
            return np.concatenate([self.back(dry[:, i:i + MAX_BLOCK], low[:, i:i + MAX_BLOCK], high[:, i:i + MAX_BLOCK])
                                   for i in range(0, dry.shape[1], MAX_BLOCK)], axis=1)
        sw = self._switches
        n = dry.shape[1]
        mid = dry - low - high
        bands = np.stack([dry, low, mid, high])                                   # (4, 2, n)
        delayed = np.concatenate([self._mb_delay, bands], axis=2)
        self._mb_delay = delayed[:, :, n:]
        dry_d, bands_d = delayed[0, :, :n], delayed[1:, :, :n]
        if sw["multiband"]:
            # RMS detector per band, stereo-linked: mean power of both channels, torchcomp's avg
            power = 0.5 * (bands[1:, 0] ** 2 + bands[1:, 1] ** 2)                # (3, n)
            smooth, self._rms_zi = lfilter([self._rms_coef], [1.0, self._rms_coef - 1.0], power, axis=-1,
                                           zi=self._rms_zi)
            wet = np.zeros_like(dry)
            for board, band, level in zip(self._bands, bands_d, np.sqrt(smooth)):
                wet += band * _linked_gain(board, level, self.sample_rate)
            x = (1.0 - self._mb_mix) * dry_d + self._mb_mix * wet
        else:
            x = dry_d
        if sw["imager"]:
            s, d = x[0] + x[1], x[0] - x[1]
            w = self._width
            x = np.stack([(1 - w) * s + w * d, (1 - w) * s - w * d])
        if self._gain.gain_db != 0.0:
            x = self._gain(np.ascontiguousarray(x, dtype=np.float32), self.sample_rate, reset=False)
        delayed = np.concatenate([self._lim_delay, x], axis=1)
        self._lim_delay = delayed[:, n:]
        if sw["limiter"]:
            x = delayed[:, :n] * _linked_gain(self._limiter_board, np.maximum(np.abs(x[0]), np.abs(x[1])), self.sample_rate)
        else:
            x = delayed[:, :n]
        if self._trim.gain_db != 0.0:
            x = self._trim(np.ascontiguousarray(x, dtype=np.float32), self.sample_rate, reset=False)
        return np.asarray(x, dtype=np.float32)

    def render(self, x: np.ndarray) -> np.ndarray:
        """A whole ``(2, T)`` signal from a fresh state, latency removed (aligned with ``x``)."""
        self.reset()
        y = self.process(np.concatenate([x, np.zeros((2, self.latency), np.float32)], axis=1))
        return y[:, self.latency:]

    def _process(self, x: np.ndarray) -> np.ndarray:
        if x.shape[1] == 0:
            return x.copy()
        return self.back(*self.front(x))

    def _failed_module(self, x: np.ndarray) -> str:
        return "pedalboard chain"
