"""The sample rates the chain runs at (:data:`engine.params.CHAIN_RATES`, 22.05–192 kHz), and what a
rate changes in its design. Θ is in real units (Hz, ms, dB), so the chain means the same at every
rate: the Torch render, the ONNX graph and the pedalboard chain design their filters and convert
their time constants for the rate they are given; the models keep reading 44.1 kHz
(:data:`engine.params.SAMPLE_RATE`)."""

from __future__ import annotations

import numpy as np

from engine.errors import RefmasterError
from engine.params import CHAIN_RATES, SAMPLE_RATE, TOP_FREQ_HZ


def check_rate(rate) -> int:
    """``rate`` as an int in :data:`CHAIN_RATES`, or one clear error."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) \
            or not float(rate).is_integer() or not CHAIN_RATES[0] <= rate <= CHAIN_RATES[1]:
        raise RefmasterError(f"sample rate {rate!r}: the chain runs at whole rates of {CHAIN_RATES[0]}…{CHAIN_RATES[1]} Hz")
    return int(rate)


def chain_rate(file_rate: int) -> int:
    """The rate a file is processed at: its own where the chain runs at it (no resampling of the
    audio path), else :data:`SAMPLE_RATE` (an 8 or 16 kHz file, a 384 kHz one)."""
    return int(file_rate) if CHAIN_RATES[0] <= file_rate <= CHAIN_RATES[1] else SAMPLE_RATE


def design_freq_limit(sample_rate: float) -> float:
    """The highest frequency a filter is designed at (Hz): the schema's top frequency (21050 Hz at
    44.1 kHz, 1 kHz below Nyquist) scaled with the rate. Above 44.1 kHz it lies beyond every range
    (nothing is limited); below it, e.g. at 22.05 kHz, a band set higher is designed at it (an RBJ
    design beyond Nyquist is no filter)."""
    return TOP_FREQ_HZ * sample_rate / SAMPLE_RATE
