"""The CPU step format: candidates, the choice, the measurement, the cache, and a run that
keeps its format across a resume."""

import types

import pytest
import torch
from torch import nn

from spatialflow.engine import cpu_step
from spatialflow.engine.cpu_step import StepFormat, candidates, choose
from spatialflow.engine.runs import load_checkpoint
from spatialflow.engine.train import train
from conftest import fast

F32, BF16 = None, torch.bfloat16


def test_candidates_follow_the_config():
    names = lambda fs: [f.name for f in fs]  # noqa: E731
    assert names(candidates(True, True)) == ["float32, channels_last", "float32, NCHW",
                                             "bfloat16, channels_last", "bfloat16, NCHW"]
    assert names(candidates(False, True)) == ["float32, channels_last", "float32, NCHW"]
    assert names(candidates(True, False)) == ["float32, NCHW", "bfloat16, NCHW"]
    assert names(candidates(False, False)) == ["float32, NCHW"]


def test_names_round_trip_and_bad_names_are_refused():
    for fmt in candidates(True, True):
        assert StepFormat.from_name(fmt.name) == fmt
    assert StepFormat(BF16, True).memory_format == torch.channels_last
    with pytest.raises(ValueError, match="not a CPU step format: 'float16, NCHW'"):
        StepFormat.from_name("float16, NCHW")


def test_choice_needs_a_margin_over_plain_float32():
    fs = candidates(True, False)  # float32 NCHW first
    assert choose({"float32, NCHW": 0.200, "bfloat16, NCHW": 0.185}, fs) == fs[1]  # 7.5% faster
    assert choose({"float32, NCHW": 0.200, "bfloat16, NCHW": 0.195}, fs) == fs[0]  # 2.5%: a tie
    assert choose({"float32, NCHW": 0.200, "bfloat16, NCHW": 0.300}, fs) == fs[0]
    assert choose({"float32, NCHW": 0.2, "bfloat16, NCHW": 0.195}, fs, margin=0.0) == fs[1]


class _Net(nn.Module):
    """A model with the training interface: ``model(images, targets)`` -> loss terms."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, images, targets):
        x = self.conv(images.tensors)
        return {"a": x.square().mean(), "b": torch.rand(()) * 0 + x.mean()}


def test_measurement_leaves_the_model_and_the_rng_as_they_were():
    torch.manual_seed(0)
    net, images = _Net(), types.SimpleNamespace(tensors=torch.randn(2, 3, 16, 16))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    timings = cpu_step.time_formats(net, images, None, candidates(True, True), repeat=2)
    assert set(timings) == {f.name for f in candidates(True, True)}
    assert all(t > 0 for t in timings.values())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_choice_is_measured_once_then_remembered(monkeypatch, tmp_path):
    monkeypatch.setenv("SPATIALFLOW_CACHE", str(tmp_path))
    calls = []

    def timed(model, images, targets, formats, **kw):
        calls.append([f.name for f in formats])
        return {f.name: (0.1 if f == StepFormat(BF16, False) else 0.2) for f in formats}

    monkeypatch.setattr(cpu_step, "time_formats", timed)
    net, images = _Net(), types.SimpleNamespace(tensors=torch.randn(2, 3, 16, 16))
    fmt, info = cpu_step.tuned_format(net, images, None, {"m": 1}, amp=True, channels_last=True)
    assert fmt == StepFormat(BF16, False) and not info["cached"] and len(calls) == 1
    assert info["timings_ms"]["bfloat16, NCHW"] == 100.0
    assert "bfloat16, NCHW (measured on the first batch" in cpu_step.describe(info)
    again, info = cpu_step.tuned_format(net, images, None, {"m": 1}, True, True)
    assert again == fmt and info["cached"] and len(calls) == 1
    assert "remembered from an earlier run" in cpu_step.describe(info)
    # another model, batch shape or set of candidates is measured anew
    cpu_step.tuned_format(net, images, None, {"m": 2}, True, True)
    cpu_step.tuned_format(net, images, None, {"m": 1}, False, True)
    assert len(calls) == 3 and calls[-1] == ["float32, channels_last", "float32, NCHW"]
    (tmp_path / "cpu_step.json").write_text("{not json")  # a torn cache is measured again
    cpu_step.tuned_format(net, images, None, {"m": 1}, True, True)
    assert len(calls) == 4


def test_a_run_measures_once_and_keeps_its_format_on_resume(data_root, tmp_path, monkeypatch):
    from spatialflow.engine import train as engine

    monkeypatch.setenv("SPATIALFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(engine, "TUNE_MIN_ITERS", 2)
    seen = []

    def timed(model, images, targets, formats, **kw):  # bfloat16 in NCHW "wins" here
        seen.append(images.tensors.shape)
        return {f.name: (0.1 if f == StepFormat(BF16, False) else 0.2) for f in formats}

    monkeypatch.setattr(cpu_step, "time_formats", timed)
    dtypes = []
    original = engine._Loop.step

    def step(self, images, targets):
        dtypes.append((self.dtype, self.memory_format))
        return original(self, images, targets)

    monkeypatch.setattr(engine._Loop, "step", step)
    cfg = fast(data_root, "train.max_iters=3", "train.checkpoint_every=2")
    train(cfg, tmp_path / "run", progress=False, evaluate_at_end=False, stop_at=2)
    assert len(seen) == 1 and seen[0][0] == cfg.train.batch_size  # the run's first batch
    state = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert state["cpu_step"] == "bfloat16, NCHW" and state["iteration"] == 2
    monkeypatch.setattr(cpu_step, "time_formats", lambda *a, **k: pytest.fail("measured again"))
    (tmp_path / "cache" / "cpu_step.json").unlink()  # the checkpoint, not the cache, decides
    train(cfg, tmp_path / "run", resume=True, progress=False, evaluate_at_end=False)
    assert dtypes == [(torch.bfloat16, torch.contiguous_format)] * 3
    # off, or a short run: no measurement; bfloat16 only with AMX, the config's layout
    train(fast(data_root, "train.max_iters=3", "train.cpu_tune=false"), tmp_path / "off",
          progress=False, evaluate_at_end=False)
    plain = engine.StepFormat(engine.amp_dtype("cpu"), True)
    assert dtypes[3:] == [(plain.dtype, torch.channels_last)] * 3
    assert load_checkpoint(tmp_path / "off" / "checkpoint_last.pt")["cpu_step"] == plain.name
