"""The paper's studies: variants, cached study runs, summaries, speed against scale."""

import pytest
import torch

from spatialflow.config import load_config
from spatialflow.data.coco_panoptic import CocoPanopticDataset
from spatialflow.data.synthetic import make_synthetic
from spatialflow.model import build_model
from spatialflow.studies import (PAPER, Variant, components_variants, fig4_variants,
                                 flows_variants, format_summary, lambda_variants, run_study,
                                 slug, speed_vs_scale, summarize)

FLOWS = ("reg_to_cls", "reg_to_stuff", "reg_to_thing", "stuff_to_thing")


def flows_on(variant):
    cfg = load_config("tiny-cpu", list(variant.overrides))
    return cfg.model.subnets, [f for f in FLOWS if getattr(cfg.model.flows, f)], cfg


def test_components_variants_are_table_v():
    rows = [flows_on(v)[:2] for v in components_variants()]
    assert rows == [(False, []), (True, []), (False, list(FLOWS)), (True, list(FLOWS))]
    assert [v.name for v in components_variants()] == [r["variant"] for r in PAPER["table_v"]]


def test_flows_variants_add_one_flow_per_row():
    rows = [flows_on(v)[1] for v in flows_variants()]
    assert rows == [list(FLOWS[:k]) for k in range(5)]
    assert [v.name for v in flows_variants()] == [r["variant"] for r in PAPER["table_ix"]]


def test_fig4_and_lambda_variants():
    sources = [flows_on(v)[2].model.flows.source for v in fig4_variants()]
    assert sources == ["reg", "cls", "reg"] and flows_on(fig4_variants()[0])[1] == []
    lams = [load_config("tiny-cpu", list(v.overrides)).model.stuff_loss_weight
            for v in lambda_variants([1.0, 0.25])]
    assert lams == [1.0, 0.25]
    assert slug("+ reg-cls") == "reg-cls" and slug("lambda=0.25") == "lambda=0.25"


def test_format_summary():
    rows = [{"variant": "a", "pq": 10.0, "pq_th": 1.0, "pq_st": 5.0},
            {"variant": "a", "pq": 14.0, "pq_th": 3.0, "pq_st": 5.0},
            {"variant": "b", "pq": 7.0, "pq_th": 2.0, "pq_st": 6.0}]
    text = format_summary(summarize(rows))
    assert "| a | 2 | 12.0 ± 2.8 | 2.0 ± 1.4 | 5.0 ± 0.0 |" in text
    assert "| b | 1 | 7.0 ± 0.0 |" in text and text.count("\n") == 3


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_synthetic(root, 4, 2, 64, 0, workers=1, progress=False)
    return root


def test_run_study_trains_each_run_once_and_caches(data_root, tmp_path):
    fast = [f"data.root={data_root}", "data.min_size=[64]", "data.test_size=64",
            "data.num_workers=0", "train.max_iters=1", "train.batch_size=2",
            "train.base_batch_size=2", "train.warmup_iters=0", "infer.stuff_area=0"]
    variants = [Variant("no flows", ("model.flows.reg_to_cls=false",)), Variant("flows")]
    rows = run_study(variants, [0, 1], tmp_path / "study", overrides=fast, progress=False)
    assert [(r["variant"], r["seed"]) for r in rows] == [("no flows", 0), ("no flows", 1),
                                                         ("flows", 0), ("flows", 1)]
    for r in rows:
        assert {"pq", "pq_th", "pq_st", "sq", "rq", "ap"} <= set(r)
        assert 0 <= r["pq"] <= 100
        cfg = load_config(f"{r['run']}/config.yaml")
        assert cfg.train.seed == r["seed"]
        assert cfg.model.flows.reg_to_cls == (r["variant"] == "flows")

    def must_not_train(*args, **kwargs):
        raise AssertionError("a cached run was trained again")

    again = run_study(variants, [0, 1], tmp_path / "study", overrides=fast, progress=False,
                      train_fn=must_not_train)
    assert again == rows


def test_speed_vs_scale(data_root, tmp_path):
    torch.manual_seed(0)
    val = CocoPanopticDataset.from_root(data_root, "val")
    model = build_model(load_config("tiny-cpu"), val.categories).eval()
    rows = speed_vs_scale(model, val, [64, 96], max_images=2, out=tmp_path, progress=False)
    assert [r["scale"] for r in rows] == [64, 96]
    for r in rows:
        assert r["images"] == 2 and r["images_per_s"] > 0 and r["seconds"] > 0
        assert 0 <= r["pq"] <= 100 and "pq_st" in r
    assert (tmp_path / "scale96" / "metrics.json").is_file()
