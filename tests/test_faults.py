"""Training faults: NaN / Inf steps, SIGINT / SIGTERM, SIGKILL during a checkpoint write, a full
disk, an unreadable image. The kills are real, in subprocesses. (Distributed processes agreeing
on a skipped step: tests/test_train.py::test_two_processes_match_one.)"""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import spatialflow.engine.train as train_module
from spatialflow.cli import main
from spatialflow.engine.faults import StopSignals, agree, grads_finite, nonfinite_terms
from spatialflow.engine.predict import Predictor
from spatialflow.engine.runs import (CHECKPOINT, FINAL, LOCK, RunBusy, load_checkpoint,
                                     save_checkpoint)
from spatialflow.engine.train import train
from spatialflow.errors import TrainingDiverged
from conftest import FAST, fast



def records(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def poison(monkeypatch, steps, kind="loss"):
    """Make training forward number ``steps`` (1-based; ``"all"``: from the third on) give a
    NaN loss (``kind="loss"``), a finite loss with a NaN gradient (``"grad"``), or run on
    weights set to Inf (``"weights"``); returns the list of a weight's value seen at every
    training forward."""
    real, seen = train_module.build_model, []

    def build(cfg, categories):
        model = real(cfg, categories)
        forward, weight = model.forward, next(model.parameters())

        def patched(images, targets=None, **kwargs):
            hit = False
            if model.training:
                seen.append(weight.detach().clone())
                hit = (len(seen) > 2) if steps == "all" else (len(seen) in steps)
                if hit and kind == "weights":
                    weight.data.fill_(float("inf"))
            out = forward(images, targets, **kwargs)
            if hit and kind == "loss":
                out = dict(out, loss_cls=out["loss_cls"] * float("nan"))
            elif hit and kind == "grad":  # d sqrt(x)/dx at 0 is inf: 0 * inf = NaN, grad only
                out = dict(out, loss_cls=out["loss_cls"] + 0.0 * torch.sqrt(weight.sum() * 0.0))
            return out

        model.forward = patched
        return model

    monkeypatch.setattr(train_module, "build_model", build)
    return seen


@pytest.mark.parametrize("kind, clip", [("loss", None), ("grad", None), ("grad", 10.0)])
def test_nonfinite_steps_are_skipped_and_the_run_goes_on(data_root, tmp_path, monkeypatch, kind,
                                                        clip):
    """``clip``: with train.clip_grad the check reads the norm that clipping computed."""
    seen = poison(monkeypatch, {2, 3}, kind)
    run = tmp_path / "run"
    with pytest.warns(RuntimeWarning) as caught:
        train(fast(data_root, "train.max_iters=6", "train.max_bad_steps=2",
                   f"train.clip_grad={'null' if clip is None else clip}"), run,
              progress=False, evaluate_at_end=False)
    term = "loss_cls" if kind == "loss" else "gradient"
    assert [str(w.message) for w in caught] == [
        f"iteration {i}: non-finite {term}; step skipped ({i - 1} so far, "
        f"train.max_bad_steps=2)" for i in (2, 3)]
    assert len(seen) == 6
    assert not torch.equal(seen[0], seen[1])              # step 1 was taken
    assert torch.equal(seen[1], seen[2]) and torch.equal(seen[1], seen[3])  # 2 and 3 skipped
    assert not torch.equal(seen[3], seen[4])              # step 4 was taken again
    final = load_checkpoint(run / FINAL)
    assert final["iteration"] == 6 and all(torch.isfinite(v).all() for v in
                                           final["model"].values() if v.is_floating_point())
    last = load_checkpoint(run / CHECKPOINT)
    assert last["bad_steps"] == 2 and last["scheduler"]["_schedulers"][1]["last_epoch"] == 6
    bad = [r for r in records(run) if "bad_step" in r]
    assert [(r["iter"], r["bad_step"], r["bad_steps"]) for r in bad] == [(2, [term], 1),
                                                                        (3, [term], 2)]


def test_too_many_bad_steps_stop_with_a_good_checkpoint(data_root, tmp_path, monkeypatch,
                                                        capsys):
    poison(monkeypatch, "all")                            # every step from the third on
    run = tmp_path / "run"
    sets = FAST + [f"data.root={data_root}", "train.max_iters=20", "train.max_bad_steps=2"]
    with pytest.warns(RuntimeWarning):
        code = main(["train", "--quiet", "--set", *sets, "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "training stopped at iteration 5: non-finite loss_cls" in err
    assert "Checkpoint of iteration 4" in err and "train.lr" in err
    state = load_checkpoint(run / CHECKPOINT)
    assert state["iteration"] == 4 and state["bad_steps"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (run / FINAL).exists()
    with pytest.raises(TrainingDiverged):                 # still diverging after a resume
        train(None, run, resume=True, progress=False, evaluate_at_end=False)


def test_weights_gone_infinite_keep_the_last_finite_checkpoint(data_root, tmp_path,
                                                              monkeypatch):
    poison(monkeypatch, "all", "weights")
    run = tmp_path / "run"
    cfg = fast(data_root, "train.max_iters=20", "train.max_bad_steps=1",
               "train.checkpoint_every=2")
    with pytest.warns(RuntimeWarning), pytest.raises(
            TrainingDiverged, match=r"stopped at iteration 4: non-finite .*The weights hold NaN "
                                    r"/ Inf; the last checkpoint, with finite weights, is kept"):
        train(cfg, run, progress=False, evaluate_at_end=False)
    state = load_checkpoint(run / CHECKPOINT)
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, {"iteration": 1, "w": torch.ones(3)})

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="checkpoint not written.*No space left.*previous one"):
        save_checkpoint(path, {"iteration": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]   # no torn .tmp left


def test_fault_helpers():
    assert nonfinite_terms({"a": torch.tensor(1.0), "b": torch.tensor(float("inf")),
                            "c": torch.tensor(float("nan"))}) == ["b", "c"]
    p = torch.nn.Parameter(torch.ones(2))
    assert grads_finite([p])                              # no gradient yet
    p.grad = torch.tensor([1.0, float("nan")])
    assert not grads_finite([p])
    p.grad = torch.tensor([1.0, 2.0])
    assert grads_finite([p]) and not grads_finite([p], torch.tensor(float("inf")))  # given norm
    assert agree(True) and not agree(False)               # one process: the flag itself


def test_stop_signals_first_asks_second_interrupts():
    previous = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):            # impatience: a second Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is previous


# --- real signals to a real training process -------------------------------------------------
def _spawn(args, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "spatialflow.cli", "train", "--quiet", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)


def _wait_for(predicate, proc, timeout=300):
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training ended early ({proc.returncode}): "
                                 f"{proc.stderr.read()[-2000:]}")
        assert time.monotonic() < end, "timed out"
        time.sleep(0.002)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_exits(data_root, tmp_path, signum):
    """The signal goes to the whole process group, DataLoader workers included, as a
    terminal's Ctrl-C or a scheduler's job cancel does."""
    run = tmp_path / "run"
    sets = FAST + [f"data.root={data_root}", "train.max_iters=30", "data.num_workers=2",
                   "train.log_every=2"]  # (many iterations left when the signal comes)
    proc = _spawn(["--set", *sets, "--out", str(run)])
    _wait_for(lambda: (run / "metrics.jsonl").is_file(), proc)   # 2 iterations done
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, err[-2000:]
    name = signal.Signals(signum).name
    assert f"stopped by {name} at iteration" in err and "--resume" in err, err[-2000:]
    state = load_checkpoint(run / CHECKPOINT)
    assert 2 <= state["iteration"] < 30 and f"at iteration {state['iteration']}:" in err
    assert not (run / FINAL).exists()
    # (resuming after a stop: test_sigkill_during_a_checkpoint_write_keeps_the_previous_one)
    assert [r["iter"] for r in records(run)] == list(range(2, state["iteration"] + 1, 2))


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(data_root, tmp_path):
    """SIGKILL (no handler can run) while ``checkpoint_last.pt.tmp`` is being written: the
    previous checkpoint loads, and ``--resume`` continues from it to the end."""
    run = tmp_path / "run"
    sets = FAST + [f"data.root={data_root}", "train.max_iters=10", "train.checkpoint_every=1",
                   "train.optimizer=sgd"]  # (smaller checkpoints than AdamW's)
    last, tmp = run / CHECKPOINT, run / (CHECKPOINT + ".tmp")
    for attempt in range(5):                              # until a kill lands mid-write
        proc = _spawn(["--set", *sets, "--out", str(run)] if attempt == 0
                      else ["--resume", "--out", str(run)])
        _wait_for(lambda: last.is_file() and tmp.is_file(), proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        if tmp.is_file():
            break
    assert tmp.is_file(), "no kill landed during a write in 5 attempts"
    state = load_checkpoint(last)                         # intact, not torn
    assert 1 <= state["iteration"] < 10
    train(None, run, resume=True, progress=False, evaluate_at_end=False)
    assert load_checkpoint(run / FINAL)["iteration"] == 10 and not tmp.exists()
    iters = [r["iter"] for r in records(run)]
    assert iters == [5, 10], iters


def test_one_writer_per_run_folder(data_root, tmp_path):
    """While a run trains, a second writer (``train --resume``, ``train --out`` again, a study's
    ``train()``) is refused at once: exit 2 and one line naming the folder and the holder.
    Readers read. A lock left by a SIGKILLed trainer is taken over by the next writer."""
    run = tmp_path / "run"
    sets = FAST + [f"data.root={data_root}", "train.max_iters=5000", "train.checkpoint_every=2",
                   "train.optimizer=sgd"]  # (still training when the checks are done)
    proc = _spawn(["--set", *sets, "--out", str(run)])
    try:
        _wait_for(lambda: (run / CHECKPOINT).is_file(), proc)
        assert (run / LOCK).read_text().split()[0] == str(proc.pid)
        for args in (["--resume", "--out", str(run)], ["--set", *sets, "--out", str(run)]):
            second = subprocess.run([sys.executable, "-m", "spatialflow.cli", "train", *args],
                                    capture_output=True, text=True, timeout=300)
            lines = second.stderr.strip().splitlines()
            assert second.returncode == 2 and len(lines) == 1, second.stderr[-2000:]
            assert str(run) in lines[0] and f"process {proc.pid}" in lines[0], lines
        with pytest.raises(RunBusy, match=f"process {proc.pid}"):
            train(None, run, resume=True, progress=False)
        image = torch.rand(3, 40, 50)
        assert Predictor.from_run(run)(image)["panoptic"].shape == (40, 50)  # a reader
        assert proc.poll() is None                                      # untouched by all this
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    assert (run / LOCK).is_file()                          # left behind by the killed trainer
    start = load_checkpoint(run / CHECKPOINT)["iteration"]
    train(None, run, resume=True, progress=False, stop_at=start + 1)   # taken over
    assert load_checkpoint(run / CHECKPOINT)["iteration"] == start + 1
    assert not (run / LOCK).exists()                       # and given back


def test_an_unreadable_training_image_ends_the_run_with_one_line(data_root, tmp_path):
    """A DataLoader worker's DatasetError: one line naming the file, exit 2, and the workers
    (which ignore stop signals) are stopped rather than left to hang the exit."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    bad = sorted((data / "train").iterdir())[3]
    bad.write_bytes(bad.read_bytes()[:300])
    sets = FAST + [f"data.root={data}", "train.max_iters=8", "data.num_workers=1"]
    proc = _spawn(["--set", *sets, "--out", str(tmp_path / "run")])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"spatialflow train: error: {bad}: cannot decode image"), err[-2000:]


def test_a_worker_dying_while_stopping_does_not_fail_the_run(tmp_path):
    """After the last batch, a data loader worker killed while the loader stops (SIGABRT, seen
    on 2-core CPUs) is a warning naming the run, not an error that loses model_final.pt."""
    from types import SimpleNamespace

    class Batches:
        def _shutdown_workers(self):
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Aborted. ")

    closed = []
    loop = SimpleNamespace(bar=SimpleNamespace(close=lambda: closed.append(1)), run=tmp_path)
    with pytest.warns(RuntimeWarning, match="killed by signal: Aborted.*not affected"):
        train_module._Loop.close(loop, Batches())
    assert closed == [1]
    train_module._Loop.close(loop, iter([]))           # no workers: nothing to stop
