"""Untrusted files: checkpoints from elsewhere are read as tensors and plain data only, a
checkpoint that does not fit says why in one line, and no code path of the project runs code
from a config, a checkpoint or a dataset file."""

import ast
import warnings
from pathlib import Path

import pytest
import torch

from spatialflow.cli import main
from spatialflow.config import config_to_dict, load_config
from spatialflow.data.categories import CategoryMap
from spatialflow.engine.runs import load_checkpoint, load_run, load_weights, save_checkpoint
from spatialflow.errors import InputError
from spatialflow.model import build_model
from conftest import TINY_CATEGORIES

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this runs ``exec`` (what a hostile ``.pt`` file does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def _build(preset, *overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen BN without pretrained weights
        cfg = load_config(preset, list(overrides))
        return cfg, build_model(cfg, CategoryMap.from_coco(TINY_CATEGORIES))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint of the tiny-cpu preset (untrained; only its format matters here)."""
    cfg, model = _build("tiny-cpu")
    path = tmp_path_factory.mktemp("ckpt") / "model_final.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": config_to_dict(cfg),
                           "iteration": 0, "categories": TINY_CATEGORIES})
    return path


def test_a_checkpoint_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model_final.pt"
    torch.save({"model": {}, "config": _Payload(marker)}, evil)
    for load in (load_checkpoint, load_run):
        with pytest.raises(InputError, match="not a readable checkpoint"):
            load(evil)
    from spatialflow.model.backbone import load_backbone_weights
    with pytest.raises(InputError, match="cannot read backbone weights"):
        load_backbone_weights(torch.nn.Linear(1, 1), evil)
    assert main(["evaluate", str(evil)]) == 2
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the file is really hostile: trusting it runs code
    assert marker.read_text() == "pwned"


def test_truncated_and_foreign_checkpoints(tmp_path, tiny_checkpoint):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(InputError, match=r"cut.pt: not a readable checkpoint"):
        load_run(cut)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(InputError, match=r"other.pt: not a SpatialFlow checkpoint"):
        load_run(other)
    with pytest.raises(InputError, match="no_such_run: no such run folder or checkpoint"):
        load_run(tmp_path / "no_such_run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: not a trained run: no model_final.pt or "
                                         r"checkpoint_last.pt in that folder"):
        load_run(tmp_path / "empty")


def test_a_checkpoint_of_another_preset_names_the_mismatch(tmp_path, tiny_checkpoint):
    cfg, model = _build("r50-coco")
    with pytest.raises(InputError) as e:
        load_weights(model, tiny_checkpoint, cfg)
    msg = str(e.value)
    assert msg.startswith(f"{tiny_checkpoint}: a checkpoint of preset 'tiny-cpu' does not fit "
                          f"this model (preset 'r50-coco')")
    assert "model.backbone 'resnet10' in the checkpoint vs 'resnet50'" in msg
    assert "model.fpn_channels 64 in the checkpoint vs 256" in msg
    assert "of another shape" in msg and len(msg) < 1500   # not torch's list of every tensor
    # the same preset loads, from the file or its run folder
    cfg, model = _build("tiny-cpu")
    assert load_weights(model, tiny_checkpoint.parent, cfg)["iteration"] == 0
    # a checkpoint whose weights do not fit its own config (e.g. an edited file)
    state = load_checkpoint(tiny_checkpoint)
    state["config"]["model"]["fpn_channels"] = 32
    edited = tmp_path / "edited.pt"
    save_checkpoint(edited, state)
    with pytest.raises(InputError, match=r"edited.pt .*its own config.*do not fit.*another "
                                         r"shape"):
        load_run(edited)
    assert main(["evaluate", str(edited)]) == 2


#: calls that run code or unpickle objects; none may read user files in the package
_FORBIDDEN = {"eval", "exec", "compile", "__import__"}
_FORBIDDEN_ATTRS = {("pickle", "load"), ("pickle", "loads"), ("yaml", "load"),
                    ("yaml", "unsafe_load"), ("yaml", "full_load"), ("marshal", "loads"),
                    ("dill", "load"), ("shelve", "open")}


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            yield node


def test_no_code_path_executes_files():
    """Static check of ``spatialflow/`` and ``viz/``: no eval/exec/pickle/unsafe YAML;
    every ``torch.load`` passes ``weights_only=True``; no ``np.load(allow_pickle=True)``."""
    files = sorted((ROOT / "spatialflow").rglob("*.py")) + sorted((ROOT / "viz").rglob("*.py"))
    assert len(files) > 20
    problems, torch_loads = [], 0
    for path in files:
        for call in _calls(path):
            f, where = call.func, f"{path.relative_to(ROOT)}:{call.lineno}"
            if isinstance(f, ast.Name) and f.id in _FORBIDDEN:
                problems.append(f"{where} {f.id}()")
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                if (f.value.id, f.attr) in _FORBIDDEN_ATTRS:
                    problems.append(f"{where} {f.value.id}.{f.attr}()")
                kw = {k.arg: k.value for k in call.keywords}
                if (f.value.id, f.attr) == ("torch", "load"):
                    torch_loads += 1
                    flag = kw.get("weights_only")
                    if not (isinstance(flag, ast.Constant) and flag.value is True):
                        problems.append(f"{where} torch.load without weights_only=True")
                if f.attr == "load" and f.value.id in ("np", "numpy"):
                    flag = kw.get("allow_pickle")
                    if flag is not None and not (isinstance(flag, ast.Constant) and not flag.value):
                        problems.append(f"{where} np.load(allow_pickle=...)")
    assert torch_loads >= 2 and not problems, problems
