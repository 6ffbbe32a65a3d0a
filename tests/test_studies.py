"""The paper's studies: variants, cached study runs, summaries, speed against scale."""

import json
from pathlib import Path

import pytest
import torch

from spatialflow.config import load_config
from spatialflow.data.coco_panoptic import CocoPanopticDataset
from spatialflow.data.synthetic import make_synthetic
from spatialflow.engine.predict import Predictor
from spatialflow.model import build_model
from spatialflow.studies import (PAPER, Variant, components_variants, config_key,
                                 describe_plan, describe_speed, fig4_variants, flows_variants,
                                 format_table, lambda_variants, plan_study,
                                 run_study, slug, speed_points, speed_vs_scale, summarize,
                                 table_xi_scales)

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
    # the paper sweeps lambda on the naive baseline; another model can be asked for
    assert flows_on(lambda_variants([0.5])[0])[:2] == (False, [])
    assert flows_on(lambda_variants([0.5], model=())[0])[:2] == (True, list(FLOWS))
    assert slug("+ reg-cls") == "reg-cls" and slug("lambda=0.25") == "lambda=0.25"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_synthetic(root, 4, 2, 64, 0, workers=1, progress=False)
    return root


def test_run_study_trains_each_run_once_and_caches(data_root, tmp_path):
    fast = [f"data.root={data_root}", "data.min_size=[64]", "data.test_size=64",
            "data.num_workers=0", "train.max_iters=1", "train.batch_size=2",
            "train.base_batch_size=2", "train.warmup_iters=0", "infer.stuff_area=0"]
    variants = [Variant("no flows", ("model.flows.reg_to_cls=false",), (("x", 1.5),)),
                Variant("flows")]
    rows = run_study(variants, [0, 1], tmp_path / "study", overrides=fast, progress=False)
    assert [(r["variant"], r["seed"]) for r in rows] == [("no flows", 0), ("no flows", 1),
                                                         ("flows", 0), ("flows", 1)]
    assert [r.get("x") for r in rows] == [1.5, 1.5, None, None]  # the variant's tags
    for r in rows:
        assert {"pq", "pq_th", "pq_st", "sq", "rq", "ap"} <= set(r)
        assert 0 <= r["pq"] <= 100
        cfg = load_config(f"{r['run']}/config.yaml")
        assert cfg.train.seed == r["seed"] and Path(cfg.data.root).is_absolute()
        assert cfg.model.flows.reg_to_cls == (r["variant"] == "flows")

    def must_not_train(*args, **kwargs):
        raise AssertionError("a cached run was trained again")

    again = run_study(variants, [0, 1], tmp_path / "study", overrides=fast, progress=False,
                      train_fn=must_not_train)
    assert again == rows
    # the same model under another name re-uses the runs
    same = run_study([Variant("other name", ("model.flows.reg_to_cls=false",))], [1],
                     tmp_path / "study", overrides=fast, progress=False, train_fn=must_not_train)
    assert same[0]["run"] == rows[1]["run"] and same[0]["pq"] == rows[1]["pq"]


def test_run_study_side_by_side_after_saying_what_it_will_do(data_root, tmp_path):
    fast = [f"data.root={data_root}", "data.min_size=[64]", "data.test_size=64",
            "data.num_workers=0", "train.max_iters=2", "train.batch_size=2",
            "train.base_batch_size=2", "train.warmup_iters=0", "infer.stuff_area=0"]
    variants = [Variant("no flows", ("model.flows.reg_to_cls=false",)), Variant("flows")]
    plan = plan_study(variants, [0, 1], tmp_path / "s", overrides=fast, workers=2, measure=False)
    assert plan == {"runs": 4, "to_train": 4, "iterations": 8, "run_iters": 2, "workers": 2,
                    "minutes": None}
    assert describe_plan(plan) == "4 of 4 runs to train (0 cached), 2 at a time, 8 iterations in all."
    measured = plan_study(variants, [0, 1], tmp_path / "s", overrides=fast, workers=2)
    assert measured["minutes"] > 0 and "minutes of training on this machine" in describe_plan(
        measured)
    rows = run_study(variants, [0, 1], tmp_path / "s", overrides=fast, progress=False, workers=2)
    assert [(r["variant"], r["seed"]) for r in rows] == [("no flows", 0), ("no flows", 1),
                                                         ("flows", 0), ("flows", 1)]
    for r in rows:
        assert (Path(r["run"]) / "eval" / "final" / "metrics.json").is_file()
        assert load_config(f"{r['run']}/config.yaml").train.seed == r["seed"]
        assert 0 <= r["pq"] <= 100
    done = plan_study(variants, [0, 1], tmp_path / "s", overrides=fast, workers=2)
    assert done["to_train"] == 0 and done["minutes"] is None
    assert describe_plan(done) == "All 4 runs are already trained: reading them back."


def test_speed_vs_scale(data_root, tmp_path):
    torch.manual_seed(0)
    val = CocoPanopticDataset.from_root(data_root, "val")
    model = build_model(load_config("tiny-cpu"), val.categories).eval()
    predictor = Predictor(model, val.categories, test_size=96)
    rows = speed_vs_scale(predictor, val, [64, 96], max_images=2, out=tmp_path, progress=False)
    assert [r["scale"] for r in rows] == [64, 96]
    assert [r["padded"] for r in rows] == [64, 96]  # tiny-cpu pads to a multiple of 32
    for r in rows:
        assert r["images"] == 2 and r["images_per_s"] > 0 and r["seconds"] > 0
        assert 0 <= r["pq"] <= 100 and "pq_st" in r
    assert (tmp_path / "scale96" / "metrics.json").is_file()


def test_config_key_names_what_is_trained():
    key = lambda *o: config_key(load_config("tiny-cpu", list(o)))  # noqa: E731
    # the same model under another name, seed or data folder shares the key
    assert key(*components_variants()[1].overrides) == key(*flows_variants()[0].overrides) \
        == key(*fig4_variants()[0].overrides)
    assert key(*components_variants()[3].overrides) == key(*flows_variants()[4].overrides) \
        == key(*fig4_variants()[2].overrides) == key()
    assert key("train.seed=3", "data.root=/x") == key()
    assert len({key(*v.overrides) for v in components_variants() + flows_variants()
                + fig4_variants()}) == 8
    assert key("model.stuff_loss_weight=0.3") != key()
    # without sub-networks the stuff and thing flows are not built
    assert key("model.subnets=false") == key("model.subnets=false",
                                             "model.flows.stuff_to_thing=false")
    assert key("model.subnets=false") != key("model.subnets=false", "model.flows.reg_to_cls=false")


def test_format_table():
    text = format_table(PAPER["table_xi"][:2], ["name", "scale", "pq", "fps"])
    assert text.splitlines()[0] == "| name | scale | pq | fps |"
    assert "| PanopticFPN R50 | 800 | 39.0 | 18.9 |" in text
    assert format_table([{"pq_th": float("nan")}], ["pq_th"]).endswith("| not measured |")
    lam = format_table(PAPER["table_iv"][4:5], ["lambda", "pq"], exact=["lambda"])
    assert lam.endswith("| 0.25 | 39.3 |")  # a study's key as it is, not rounded to 0.2


def test_table_xi_scales_and_speed_description():
    assert table_xi_scales(800) == [400, 600, 800] and table_xi_scales(256) == [128, 192, 256]
    rows = [{"scale": 128, "images_per_s": 6.0, "pq": 30.0, "pq_th": 10.0, "pq_st": 50.0},
            {"scale": 256, "images_per_s": 2.0, "pq": 35.0, "pq_th": 20.0, "pq_st": 49.0}]
    text = describe_speed(rows)
    assert "At 128 px this machine runs 6.00 images/s, 3.00x the 2.00 images/s at 256 px" in text
    assert "(paper, V100, 400 vs 800 px: 1.90x)" in text
    assert "changes PQ by -5.0, PQ_Th by -10.0 and PQ_St by +1.0 (paper: -3.5, -5.3, -0.5)" in text
    with pytest.raises(ValueError):
        describe_speed(rows[:1])
    # the same padded size: the network does the same work, whatever the clock says
    same = [dict(r, padded=256) for r in rows]
    assert "Both scales are padded to 256 px" in describe_speed(same)
    assert "timing noise" in describe_speed(same)
    # 1.1x with per-image times spread +-50% over 4 images: inside the noise (2 SE = 71%)
    noisy = [dict(rows[0], images_per_s=2.2, seconds=4 / 2.2, images=4, padded=128,
                  seconds_sd=0.5 / 2.2),
             dict(rows[1], images_per_s=2.0, seconds=2.0, images=4, padded=256, seconds_sd=0.25)]
    assert "within the timing noise (±71%)" in describe_speed(noisy)
    clear = [dict(r, seconds_sd=0.0, seconds=r["images_per_s"] ** -1, images=1, padded=p)
             for r, p in zip(rows, (128, 256))]
    assert "timing noise" not in describe_speed(clear)
    unmeasured = describe_speed([dict(r, pq_th=float("nan")) for r in rows])
    assert "PQ_Th not measured" in unmeasured and "nan" not in unmeasured
    points = speed_points(rows) + speed_points(PAPER["table_xi"], "paper")
    assert points[0] == {"name": "128 px", "fps": 6.0, "pq": 30.0, "source": "measured",
                         "group": "measured", "scale": 128}
    assert points[2] == {"name": "PanopticFPN R50 800", "fps": 18.9, "pq": 39.0,
                         "source": "paper", "group": "PanopticFPN R50", "scale": 800}


def test_quick_data_has_things_in_every_image_of_both_splits(tmp_path):
    """The notebooks' quick mode scores and shows things on its val split too."""
    from spatialflow.data.synthetic import data_stats
    from spatialflow.engine.runs import prepare_data
    from spatialflow.studies import QUICK_OVERRIDES

    root = prepare_data(load_config("tiny-cpu", list(QUICK_OVERRIDES)), tmp_path)
    stats = data_stats(root)
    for split in ("train", "val"):
        assert stats[split]["images_without_things"] == 0, (split, stats[split])

    # data made with other settings is refused, written or only read, not silently reused
    from spatialflow.errors import InputError
    other = load_config("tiny-cpu", [*QUICK_OVERRIDES, "data.synthetic.seed=5"])
    for write in (True, False):
        with pytest.raises(InputError, match=r"panoptic_(train|val)\.json: .*seed 1 "
                                             r"\(data\.synthetic asks 5\)"):
            prepare_data(other, tmp_path, write=write)
    assert prepare_data(load_config("tiny-cpu", list(QUICK_OVERRIDES)), tmp_path,
                        write=False) == root


def test_notebook_helpers(tmp_path):
    from spatialflow.studies import QUICK_OVERRIDES, notebook_settings, save_rows, variant
    from spatialflow.studies.variants import STUDY_VAL_IMAGES

    assert variant(fig4_variants(), "spatial flows") is not None
    assert variant(fig4_variants(), "base").overrides == fig4_variants()[0].overrides
    with pytest.raises(KeyError, match="'cls flows'"):
        variant(fig4_variants(), "flows")
    assert notebook_settings(True, 800) == list(QUICK_OVERRIDES)
    assert notebook_settings(False, 800) == ["train.max_iters=800",
                                             f"data.synthetic.num_val={STUDY_VAL_IMAGES}"]
    assert notebook_settings(False, 300, 100) == [
        "train.max_iters=300", f"data.synthetic.num_val={STUDY_VAL_IMAGES}", "train.eval_every=100"]
    assert notebook_settings(True, 300, 100)[-1] == "train.eval_every=1"
    rows = {"Table V": [{"variant": "x", "pq": 1.5}]}
    path = save_rows(tmp_path / "a" / "rows.json", rows)
    assert json.loads(path.read_text()) == rows


def test_run_label(tmp_path):
    from spatialflow.studies import run_label

    run = tmp_path / "both-7b8a4e6d" / "seed2"
    run.mkdir(parents=True)
    assert run_label(run) == "both (seed 2)"
    assert run_label(run / "model_final.pt") == "both (seed 2)"
    assert run_label(tmp_path / "demo" / "run") == "run"
    assert run_label(tmp_path / "x" / "seed0") == "seed0"     # not a study's folder
