import csv
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine import params as P
from engine.analysis.losses import MultiScaleSpectralLoss
from engine.errors import RefmasterError
from engine.model.dataset import ExampleSource
from engine.model.fxnorm import load_stats
from engine.model.networks import MasteringModel, ModelConfig
from engine.model.training import TrainConfig, train

SMALL = dict(embed_dim=64, enc_channels=32, enc_blocks=2, conv_channels=32, conv_blocks=3, wave_channels=16, wave_blocks=4)


def test_encoder_takes_any_length():
    torch.manual_seed(0)
    m = MasteringModel(ModelConfig())
    for T in (4410, 44100 * 7 + 13):
        z = m.embed(torch.randn(2, 2, T) * 0.1)
        assert z.shape == (2, 2048) and torch.isfinite(z).all()


def test_untrained_white_box_is_near_neutral():
    m = MasteringModel(ModelConfig(**SMALL))
    x = torch.randn(1, 2, 44100) * 0.1
    n = m.converter.predict_normalized(x, m.embed(x))
    expect = P.normalize_tensor(P.default_tensor(torch.float64)).clamp(0.02, 0.98).float()
    assert n.shape == (1, 46) and torch.allclose(n[0], expect, atol=0.01)


def test_untrained_black_box_is_identity():
    m = MasteringModel(ModelConfig(kind="black-box", **SMALL))
    x = torch.randn(2, 2, 10001) * 0.1
    y, theta = m(x, x)
    assert theta is None and torch.equal(y, x)


@pytest.mark.parametrize("kind", ["white-box", "black-box"])
def test_save_load_round_trip(tmp_path, kind):
    torch.manual_seed(1)
    m = MasteringModel(ModelConfig(kind=kind, **SMALL))
    for p in m.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    m.save(tmp_path / "m.safetensors", meta={"steps": 3})
    back = MasteringModel.load(tmp_path / "m.safetensors")
    x = torch.randn(1, 2, 22050) * 0.1
    with torch.no_grad():
        assert torch.allclose(m.eval()(x, x)[0], back(x, x)[0], atol=1e-6)
    assert back.meta["steps"] == 3 and back.kind == kind


def test_ship_writes_half_size_weights_that_load_as_float32(tmp_path, monkeypatch, capsys):
    import engine.model.networks as M
    from bridge.cli import main

    torch.manual_seed(2)
    m = MasteringModel(ModelConfig(**SMALL))
    for p in m.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    m.save(tmp_path / "run.safetensors", meta={"steps": 7})
    monkeypatch.setattr(M, "WEIGHTS_DIR", tmp_path / "shipped")
    assert main(["ship", str(tmp_path / "run.safetensors")]) == 0
    shipped = tmp_path / "shipped" / "white-box.safetensors"
    size = shipped.stat().st_size / (tmp_path / "run.safetensors").stat().st_size
    assert 0.45 < size < 0.55, size
    back = MasteringModel.load(shipped)
    assert all(v.dtype == torch.float32 for v in back.state_dict().values() if v.is_floating_point())
    assert back.meta["steps"] == 7 and back.meta["shipped_dtype"] == "float16"
    x = torch.randn(1, 2, 22050) * 0.1
    with torch.no_grad():
        t1, t2 = m.eval()(x, x)[1], back(x, x)[1]
    # float16 weights move Θ by far less than anything audible (normalised units)
    assert (P.normalize_tensor(t1.double()) - P.normalize_tensor(t2.double())).abs().max() < 2e-3


def test_load_reports_bad_weights(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(RefmasterError, match="not a usable refmaster model"):
        MasteringModel.load(tmp_path / "bad.safetensors")
    with pytest.raises(RefmasterError, match="not found"):
        MasteringModel.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("kind", ["white-box", "black-box"])
def test_a_few_training_steps_lower_the_loss(kind):
    """On one fixed batch of synthesised examples, a few RAdam steps must lower the loss."""
    torch.manual_seed(0)
    src = ExampleSource([], seed=3, synth_pool=2, synth_seconds=4.0, stats=load_stats())
    batch = src.batch(2, 1.0, 1.5)
    model = MasteringModel(ModelConfig(kind=kind, **SMALL))
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3 if kind == "white-box" else 3e-4)
    loss_fn = MultiScaleSpectralLoss()
    losses = []
    for _ in range(12):
        y, _ = model(batch["x_in"], batch["ref"])
        loss = loss_fn(y, batch["y"]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # the waveform model moves more slowly from its identity start than Ψ does
    assert min(losses[-3:]) < (0.97 if kind == "white-box" else 0.99) * losses[0], losses


def test_train_writes_logs_checkpoints_and_resumes(tmp_path):
    cfg = TrainConfig(steps=3, batch=2, seg_seconds=1.0, ref_seconds=1.5, synth_pool=2, synth_seconds=4.0,
                      val_every=2, val_examples=2, ckpt_every=2, warmup=1)
    small = ModelConfig(**SMALL)
    s = train(cfg, tmp_path, data_dir=None, progress=False, model_cfg=small)
    assert s["steps"] == 3
    for f in ("train.csv", "val.csv", "loss.png", "checkpoint.pt", "white-box.safetensors", "summary.json"):
        assert (tmp_path / f).exists(), f
    s2 = train(replace(cfg, steps=5), tmp_path, data_dir=None, progress=False, model_cfg=small)
    rows = list(csv.DictReader(open(tmp_path / "train.csv")))
    assert s2["steps"] == 5 and [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    assert MasteringModel.load(tmp_path / "white-box.safetensors").meta["steps"] == 5


def test_resume_refuses_a_different_configuration(tmp_path):
    cfg = TrainConfig(steps=1, batch=2, seg_seconds=1.0, ref_seconds=1.5, synth_pool=1, synth_seconds=4.0,
                      val_every=1, val_examples=2, ckpt_every=1, warmup=1)
    small = ModelConfig(**SMALL)
    train(cfg, tmp_path, data_dir=None, progress=False, model_cfg=small)
    with pytest.raises(ValueError, match="different configuration"):
        train(replace(cfg, batch=3, steps=2), tmp_path, data_dir=None, progress=False, model_cfg=small)


def test_model_and_ito_benchmarks_report_their_figures():
    from bridge.bench.model import bench_ito, bench_model, format_ito_bench, format_model_bench

    torch.manual_seed(3)
    m = MasteringModel(ModelConfig(**SMALL))
    r = bench_model(m, seconds=4.0, repeat=1, data=None)
    assert r["median_s"]["total"] >= r["median_s"]["render"] > 0 and "synthesised" in r["material"]
    assert "Φ + Ψ + render" in format_model_bench(r)
    r = bench_ito(m, seconds=9.0, steps=2, data=None)
    assert r["fast"]["steps_run"] == 2 and r["full"]["steps_run"] == 2
    assert r["fast"]["af"] > 0 and r["full"]["af"] > 0 and r["fast_vs_full_af"] == r["fast"]["af"] / r["full"]["af"]
    assert "fast / whole-track AF" in format_ito_bench(r)
