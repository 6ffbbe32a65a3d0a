"""The training engine: schedule, exact resume, DDP with 2 CPU processes, the CLI."""

import json
import os
import subprocess
import sys

import pytest
import torch

from spatialflow.cli import main
from spatialflow.config import config_to_dict, load_config
from spatialflow.engine.runs import load_checkpoint, load_run
from spatialflow.data.sampling import TrainBatches
from spatialflow.engine.train import lr_scheduler, train
from conftest import FAST, fast, free_port



def test_optimizers():
    from spatialflow.engine.train import build_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer(params, load_config("tiny-cpu", ["train.batch_size=8",
                                                           "train.base_batch_size=4",
                                                           "train.optimizer=sgd",
                                                           "train.lr=0.01"]))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    assert sgd.defaults["lr"] == pytest.approx(0.02)  # 0.01 for 4 images, scaled to 8
    adamw = build_optimizer(params, load_config("tiny-cpu", ["train.optimizer=adamw",
                                                             "train.lr=0.001"]))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 1e-4
    assert adamw.defaults["fused"]  # one kernel for all parameters


def test_mixed_precision_follows_the_device(monkeypatch):
    from spatialflow.engine import train as engine

    assert engine.amp_dtype("cuda:0") == torch.float16 and engine.amp_dtype("cuda", False) is None
    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: True)
    assert engine.amp_dtype("cpu") == torch.bfloat16 and engine.amp_dtype("cpu", False) is None
    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: False)  # no AMX: bf16 is slower
    assert engine.amp_dtype("cpu") is None
    with engine.autocast("cpu", torch.bfloat16):
        assert torch.nn.functional.linear(torch.ones(1, 2), torch.ones(3, 2)).dtype == torch.bfloat16
    with engine.autocast("cpu", None):
        assert torch.nn.functional.linear(torch.ones(1, 2), torch.ones(3, 2)).dtype == torch.float32


def test_bfloat16_training_on_cpu(data_root, tmp_path, monkeypatch):
    """With train.amp on a CPU with native bfloat16 the step runs under autocast (emulated
    here if the CPU has none) and logs float32 losses."""
    from spatialflow.engine import train as engine

    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: True)
    seen = []
    original = torch.autocast.__init__

    def spy(self, device_type, dtype=None, enabled=True, cache_enabled=None):
        seen.append((device_type, dtype, enabled))
        original(self, device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

    monkeypatch.setattr(torch.autocast, "__init__", spy)
    records = []
    train(fast(data_root, "train.max_iters=2", "train.amp=true", "train.log_every=1"),
          tmp_path / "run", progress=False, evaluate_at_end=False, on_log=records.append)
    assert ("cpu", torch.bfloat16, True) in seen
    assert [r["iter"] for r in records] == [1, 2]
    assert all(isinstance(r["loss_cls"], float) and r["loss"] == r["loss"] for r in records)


def test_bfloat16_needs_amx(monkeypatch):
    """AVX512-BF16 alone does not make bfloat16 the training precision (slower than float32
    there, docs/training_speed.md); AMX does."""
    from spatialflow.engine import train as engine

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not engine.cpu_has_bf16() and engine.amp_dtype("cpu") is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert engine.cpu_has_bf16() and engine.amp_dtype("cpu") == torch.bfloat16


@pytest.mark.parametrize("channels_last", [True, False])
def test_training_memory_format_follows_the_config(data_root, tmp_path, channels_last):
    """``train.channels_last`` (a CPU): the model's convolutions see channels_last inputs and
    weights, or plain NCHW ones; the run's saved weights load either way."""
    import unittest.mock

    formats = []

    def spy(module, args):  # 3x3 and larger kernels on maps of more than a pixel: unambiguous
        x = args[0]
        if module.kernel_size[0] > 1 and x.shape[-1] > 1:
            formats.append((x.is_contiguous(memory_format=torch.channels_last),
                            module.weight.is_contiguous(memory_format=torch.channels_last)))

    original = torch.nn.Conv2d.__init__

    def hooked(self, *a, **k):
        original(self, *a, **k)
        self.register_forward_pre_hook(spy)

    with unittest.mock.patch.object(torch.nn.Conv2d, "__init__", hooked):
        train(fast(data_root, "train.max_iters=1", f"train.channels_last={channels_last}"),
              tmp_path / "run", progress=False, evaluate_at_end=False)
    assert formats and all(f == (channels_last, channels_last) for f in formats[:20])
    state = load_checkpoint(tmp_path / "run" / "model_final.pt")["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_schedule_and_batches():
    def lrs(warmup):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched, out = lr_scheduler(opt, warmup, [80, 95], warmup_factor=0.001), []
        for _ in range(100):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    s = lrs(10)
    assert s[0] == pytest.approx(0.001) and s[5] == pytest.approx(0.5005)
    assert s[10] == pytest.approx(1.0) and s[79] == pytest.approx(1.0)
    assert s[80] == pytest.approx(0.1) and s[95] == pytest.approx(0.01)
    assert lrs(0)[:3] == [1.0, 1.0, 1.0] and lrs(0)[80] == pytest.approx(0.1)
    one = iter(TrainBatches(10, 4, seed=3))
    two = [iter(TrainBatches(10, 4, seed=3, rank=r, world=2)) for r in range(2)]
    for _ in range(5):                                    # 2 batches per epoch, 3 epochs seen
        b = next(one)
        assert b == next(two[0]) + next(two[1]) and len({i for _, i in b}) == 4
    later = iter(TrainBatches(10, 4, seed=3, start=3))
    again = iter(TrainBatches(10, 4, seed=3))
    for _ in range(3):
        next(again)
    assert next(later) == next(again)


def test_resume_continues_exactly(data_root, tmp_path):
    cfg = fast(data_root, "train.max_iters=12")
    records = []
    train(cfg, tmp_path / "straight", progress=False, evaluate_at_end=False,
          on_log=records.append)
    lines = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    assert [r["iter"] for r in records] == [5, 10, 12] and records == [json.loads(x) for x in lines]
    train(cfg, tmp_path / "split", progress=False, evaluate_at_end=False, stop_at=6)
    assert load_checkpoint(tmp_path / "split" / "checkpoint_last.pt")["iteration"] == 6
    assert not (tmp_path / "split" / "model_final.pt").exists()
    train(None, tmp_path / "split", resume=True, progress=False, evaluate_at_end=False)
    a = load_checkpoint(tmp_path / "straight" / "model_final.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "model_final.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads(l) for l in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in logs] == [5, 10, 12]
    assert {"loss_cls", "loss_reg", "loss_thing", "loss_stuff", "lr", "images_per_s"} <= set(logs[0])
    with pytest.raises(Exception, match="already there"):
        train(cfg, tmp_path / "straight", progress=False)


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(data_root, tmp_path,
                                                                     capsys):
    empty = tmp_path / "no_data"
    empty.mkdir()
    assert main(["train", "--preset", "tiny-cpu", "--out", str(tmp_path / "new"), "--set",
                 *FAST, f"data.root={empty}"]) == 2
    assert "no panoptic JSON" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # the folder it made is gone
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="no panoptic JSON"):
        train(fast(data_root, f"data.root={empty}"), mine, progress=False)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]  # only what was there before
    train(fast(data_root, "train.max_iters=1"), mine, progress=False, evaluate_at_end=False)
    assert (mine / "model_final.pt").is_file() and (mine / "notes.txt").is_file()


def test_stop_after_seconds_leaves_a_checkpoint_to_resume(data_root, tmp_path):
    cfg = fast(data_root, "train.max_iters=12")
    train(cfg, tmp_path / "timed", progress=False, evaluate_at_end=False, stop_after_s=0.0)
    assert load_checkpoint(tmp_path / "timed" / "checkpoint_last.pt")["iteration"] == 1
    assert not (tmp_path / "timed" / "model_final.pt").exists()
    train(None, tmp_path / "timed", resume=True, progress=False, evaluate_at_end=False,
          stop_after_s=3600)
    assert load_checkpoint(tmp_path / "timed" / "model_final.pt")["iteration"] == 12


#: ``spatialflow train`` whose training forward number 2 has a NaN loss in process 1 only (the
#: single process of a run without torchrun counts as 1)
POISONED_TRAIN = """\
import os, sys
import spatialflow.engine.train as t
real = t.build_model
def build(cfg, cats):
    model = real(cfg, cats)
    forward, calls = model.forward, []
    def patched(images, targets=None, **kw):
        out = forward(images, targets, **kw)
        if model.training:
            calls.append(1)
            if os.environ.get('RANK', '1') == '1' and len(calls) == 2:
                out = dict(out, loss_cls=out['loss_cls'] * float('nan'))
        return out
    model.forward = patched
    return model
t.build_model = build
from spatialflow.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_two_processes_match_one(data_root, tmp_path):
    """torchrun with 2 CPU processes (gloo) trains to the weights of 1 process on the same
    global batch. With SGD: the averaged gradients agree to float rounding, which an update
    proportional to the gradient keeps small; Adam's g / sqrt(v) step would blow the rounding
    up for parameters whose gradient is about 0.

    Step 2 has a NaN loss in process 1 only: both processes skip it together (else one would
    wait forever in the gradient all-reduce), as the single process skips it."""
    script = tmp_path / "poisoned_train.py"
    script.write_text(POISONED_TRAIN)
    sets = FAST + [f"data.root={data_root}", "train.max_iters=3", "train.batch_size=4",
                   "train.base_batch_size=4", "train.optimizer=sgd", "train.lr=0.01",
                   "train.log_every=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    base = [str(script), "train", "--preset", "tiny-cpu", "--quiet", "--set", *sets]
    one = subprocess.run([sys.executable, *base, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={free_port()}", *base, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_checkpoint(tmp_path / "one" / "model_final.pt")["model"]
    b = load_checkpoint(tmp_path / "two" / "model_final.pt")["model"]
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    assert load_checkpoint(tmp_path / "one" / "model_final.pt")["iteration"] == 3
    for run, term in (("one", "loss_cls"), ("two", "(in another process)")):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        logs = [json.loads(x) for x in lines]
        assert [r for r in logs if "bad_step" in r] == [
            {"iter": 2, "bad_step": [term], "bad_steps": 1}], run
        assert [r["iter"] for r in logs if "loss" in r] == [1, 3], run


def test_evaluate_cli_on_a_run(data_root, tmp_path, capsys):
    cfg = fast(data_root, "train.max_iters=2")
    train(cfg, tmp_path / "run", progress=False, evaluate_at_end=False)
    cfg2, model, cats = load_run(tmp_path / "run")
    assert cfg2 == cfg and not model.training and cats.num_things == 4
    rc = main(["evaluate", str(tmp_path / "run"), "--quiet", "--per-class"])
    out = capsys.readouterr().out
    assert rc == 0 and "PQ" in out and "box AP" in out and "grass" in out
    metrics = json.loads((tmp_path / "run" / "eval" / "final" / "metrics.json").read_text())
    assert set(metrics) == {"panoptic", "bbox"} and "per_class" in metrics["panoptic"]
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    # inference settings change at evaluation (here: multi-scale + flip TTA); the model's don't
    rc = main(["evaluate", str(tmp_path / "run"), "--quiet", "--out", str(tmp_path / "tta"),
               "--set", "infer.tta_scales=[[96, 200], [128, 256]]", "infer.tta_flip=true"])
    assert rc == 0 and (tmp_path / "tta" / "metrics.json").is_file()
    assert load_run(tmp_path / "run", overrides=["infer.tta_flip=true"])[0].infer.tta_flip
    assert main(["evaluate", str(tmp_path / "run"), "--set", "model.backbone=resnet50"]) == 2
    assert "cannot change here" in capsys.readouterr().err


def test_predict_cli_writes_coco_panoptic_and_overlays(data_root, tmp_path, capsys):
    from panopticapi.utils import rgb2id
    from PIL import Image
    import numpy as np

    cfg = fast(data_root, "train.max_iters=1")
    train(cfg, tmp_path / "run", progress=False, evaluate_at_end=False)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for p in sorted((data_root / "val").glob("*.jpg")):
        Image.open(p).convert("L").save(inputs / (p.stem + ".png"))   # grayscale PNGs
    (inputs / "broken.jpg").write_bytes(b"not an image")
    rc = main(["predict", str(tmp_path / "run"), str(inputs), "--out", str(tmp_path / "pred"),
               "--quiet"])
    captured = capsys.readouterr()
    assert rc == 2 and "broken.jpg" in captured.err and "1 of 3 file(s)" in captured.err
    data = json.loads((tmp_path / "pred" / "panoptic.json").read_text())
    assert len(data["images"]) == len(data["annotations"]) == 2
    for ann in data["annotations"]:
        pan = rgb2id(np.asarray(Image.open(tmp_path / "pred" / "panoptic" / ann["file_name"])))
        assert set(np.unique(pan).tolist()) - {0} == {s["id"] for s in ann["segments_info"]}
    assert len(list((tmp_path / "pred" / "overlays").glob("*.png"))) == 2
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "nope"), "--out",
                 str(tmp_path / "x")]) == 2


def test_the_saved_config_reproduces_the_run(data_root, tmp_path):
    """``RUN/config.yaml`` (and the config inside the checkpoint) is the whole recipe: training
    again from it gives the same weights, bit for bit."""
    cfg = fast(data_root, "train.max_iters=3", "model.flows.reg_to_stuff=false", "train.lr=0.003")
    train(cfg, tmp_path / "a", progress=False, evaluate_at_end=False)
    saved = load_config(tmp_path / "a" / "config.yaml")
    assert saved == cfg
    assert load_checkpoint(tmp_path / "a" / "model_final.pt")["config"] == config_to_dict(cfg)
    train(saved, tmp_path / "b", progress=False, evaluate_at_end=False)
    a = load_checkpoint(tmp_path / "a" / "model_final.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "model_final.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
