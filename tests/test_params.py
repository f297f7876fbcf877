import json
import math

import pytest
import torch

from engine import params as P
from engine.errors import ParamError

# SPEC.md's converter ranges (the contract), with the four documented widenings.
SPEC_RANGES = {
    "eq.low_shelf_freq": (20, 2000), "eq.band0_freq": (80, 2000), "eq.band1_freq": (2000, 8000),
    "eq.band2_freq": (8000, 12000), "eq.band3_freq": (12000, 21050), "eq.high_shelf_freq": (4000, 21050),
    "distortion.drive": (0, 8), "distortion.mix": (0.2, 0.7),
    "multiband.low_crossover": (20, 300), "multiband.high_crossover": (2000, 12000), "multiband.mix": (0.2, 0.7),
    "gain.gain": (-24, 24), "imager.width": (0, 1), "limiter.threshold": (-60, 0),
}
for _b in ("low_shelf", "band0", "band1", "band2", "band3", "high_shelf"):
    SPEC_RANGES[f"eq.{_b}_gain"] = (-20, 20)
    SPEC_RANGES[f"eq.{_b}_q"] = (0.1, 5)
for _b in ("low", "mid", "high"):
    SPEC_RANGES.update({f"multiband.{_b}_comp_threshold": (-60, 0), f"multiband.{_b}_comp_ratio": (1, 20),
                        f"multiband.{_b}_exp_threshold": (-60, 0), f"multiband.{_b}_exp_ratio": (0, 1),
                        f"multiband.{_b}_attack": (1, 100), f"multiband.{_b}_release": (5, 500)})
SPEC_RANGES.update({"limiter.attack": (0.1, 100), "limiter.release": (5, 1000)})
WIDENED = {"multiband.low_attack", "multiband.mid_attack", "multiband.high_attack", "multiband.low_release",
           "multiband.mid_release", "multiband.high_release", "limiter.attack", "limiter.release"}


def test_46_parameters_in_spec_order_and_ranges():
    assert P.NUM_PARAMS == 46 and len(set(P.PARAM_KEYS)) == 46
    modules = [p.module for p in P.PARAMS]
    assert modules == ["eq"] * 18 + ["distortion"] * 2 + ["multiband"] * 21 + ["gain", "imager"] + ["limiter"] * 3
    assert set(SPEC_RANGES) == set(P.PARAM_KEYS)
    for p in P.PARAMS:
        assert (p.min, p.max) == pytest.approx(SPEC_RANGES[p.key]), p.key
        assert p.min <= p.default <= p.max
        if p.key in WIDENED:
            assert "widened" in p.description


def test_defaults_are_neutral():
    d = P.defaults()
    assert all(d[f"eq.{b}_gain"] == 0 for b in ("low_shelf", "band0", "band1", "band2", "band3", "high_shelf"))
    assert d["distortion.drive"] == 0 and d["gain.gain"] == 0 and d["imager.width"] == 0.5
    assert d["limiter.threshold"] == 0
    for b in ("low", "mid", "high"):
        assert d[f"multiband.{b}_comp_ratio"] == 1 and d[f"multiband.{b}_exp_ratio"] == 1


def test_normalised_round_trip_tensor_and_dict():
    g = torch.Generator().manual_seed(0)
    n = torch.rand(5, 46, generator=g, dtype=torch.float64)
    real = P.denormalize_tensor(n)
    assert torch.allclose(P.normalize_tensor(real), n, atol=1e-12)
    lo = torch.tensor([p.min for p in P.PARAMS], dtype=torch.float64)
    hi = torch.tensor([p.max for p in P.PARAMS], dtype=torch.float64)
    assert torch.all(real >= lo - 1e-9) and torch.all(real <= hi + 1e-9)
    d = P.denormalize_dict({k: 0.5 for k in P.PARAM_KEYS})
    back = P.normalize_dict(d)
    assert all(math.isclose(v, 0.5, abs_tol=1e-12) for v in back.values())


def test_log_scale_midpoint_is_geometric_mean():
    s = P.spec("eq.low_shelf_freq")
    assert s.scale == "log"
    assert s.from_normalized(0.5) == pytest.approx(math.sqrt(20 * 2000))
    w = P.spec("imager.width")
    assert w.scale == "linear" and w.from_normalized(0.25) == pytest.approx(0.25)


def test_normalisation_is_differentiable():
    n = torch.full((46,), 0.3, requires_grad=True)
    P.denormalize_tensor(n).sum().backward()
    assert torch.all(n.grad != 0)


@pytest.mark.parametrize("key,value,needle", [
    ("eq.nope", 1.0, "unknown"),
    ("gain.gain", float("nan"), "finite"),
    ("gain.gain", 30.0, "outside -24…24"),
    ("limiter.attack", 0.01, "outside 0.1…100"),
    ("imager.width", "wide", "expected a number"),
])
def test_validation_names_the_parameter(key, value, needle):
    values = P.defaults()
    values[key] = value
    with pytest.raises(ParamError) as e:
        P.validate(values)
    assert key in str(e.value) and needle in str(e.value)


def test_validation_reports_missing():
    values = P.defaults()
    del values["limiter.release"]
    with pytest.raises(ParamError, match="limiter.release.*missing"):
        P.validate(values)


def test_check_tensor_names_offender():
    t = P.default_tensor().repeat(2, 1)
    t[1, P.PARAM_INDEX["multiband.mid_comp_ratio"]] = 25.0
    with pytest.raises(ParamError, match="multiband.mid_comp_ratio"):
        P.check_tensor(t)
    t = P.default_tensor()
    t[P.PARAM_INDEX["eq.band2_q"]] = float("inf")
    with pytest.raises(ParamError, match="eq.band2_q"):
        P.check_tensor(t)


def test_chain_params_json_round_trip():
    cp = P.ChainParams.default().with_values(**{"gain.gain": 3.5, "eq.band1_freq": 4321.0})
    cp.switches["distortion"] = False
    back = P.ChainParams.from_json(cp.to_json())
    assert back.switches == cp.switches
    for k in P.PARAM_KEYS:
        assert back.values[k] == pytest.approx(cp.values[k], abs=1e-6)
    data = json.loads(cp.to_json())
    assert data["schema"] == P.SCHEMA_TAG and data["params"]["gain"]["gain"] == 3.5
    p, s = back.to_tensors()
    assert p.shape == (46,) and s.tolist() == [True, False, True, True, True, True]
    again = P.ChainParams.from_tensors(p, s)
    assert again.values["eq.band1_freq"] == pytest.approx(4321.0, rel=1e-6)


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["params"]["gain"].pop("gain"), "gain.gain"),
    (lambda d: d["params"]["limiter"].update(threshold=3.0), "limiter.threshold"),
    (lambda d: d["params"].update(reverb={"size": 1}), "reverb"),
    (lambda d: d["switches"].update(eq="yes"), "switch.eq"),
    (lambda d: d.pop("params"), "params"),
])
def test_chain_params_from_damaged_json(mutate, needle):
    d = json.loads(P.ChainParams.default().to_json())
    mutate(d)
    with pytest.raises(ParamError, match=needle.replace(".", r"\.")):
        P.ChainParams.from_dict(d)


def test_json_nan_literal_is_rejected():
    text = P.ChainParams.default().to_json().replace('"drive": 0.0', '"drive": NaN')
    with pytest.raises(ParamError, match="distortion.drive"):
        P.ChainParams.from_json(text)


def test_params_table_lists_everything():
    t = P.params_table()
    assert all(k in t for k in P.PARAM_KEYS)
