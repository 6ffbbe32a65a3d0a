"""Paired differences, t-intervals and verdicts, checked against scipy.stats on known cases."""

import math

import numpy as np
import pytest
from scipy import stats

from spatialflow.studies import (PAPER, compare, describe_comparison, format_comparison,
                                 half_width, paired, pairing_gain, seeds_for, study_record,
                                 t_interval, verdict)


def rows_of(ref, var, name="new", metric="pq_th"):
    return ([{"variant": "base", "seed": s, metric: v} for s, v in enumerate(ref)]
            + [{"variant": name, "seed": s, metric: v} for s, v in enumerate(var)])


def test_t_interval_is_students():
    # by hand: mean 2, sd sqrt(2), se 1, t(0.975, 1) = 12.7062
    ci = t_interval([1.0, 3.0])
    assert ci["mean"] == 2 and ci["low"] == pytest.approx(2 - 12.7062, abs=1e-3)
    assert ci["high"] == pytest.approx(2 + 12.7062, abs=1e-3) and ci["n"] == 2
    x = [0.3, 1.9, -0.4, 1.1, 0.8, 2.5]
    ref = stats.ttest_1samp(x, 0).confidence_interval(0.95)
    got = t_interval(x)
    assert (got["low"], got["high"]) == pytest.approx((ref.low, ref.high))
    assert t_interval([1.0, None, float("nan"), 3.0])["n"] == 2
    one = t_interval([4.0])
    assert one["mean"] == 4 and math.isnan(one["low"]) and one["n"] == 1
    assert t_interval([])["n"] == 0 and math.isnan(t_interval([])["mean"])
    assert t_interval([2.0, 2.0, 2.0])["low"] == 2.0  # no spread: the point itself


def test_compare_is_the_paired_t_interval():
    ref = [20.1, 23.4, 21.0, 22.8, 24.0]
    var = [21.0, 24.9, 21.3, 23.9, 24.6]
    rows = rows_of(ref, var) + [{"variant": "base", "seed": 9, "pq_th": 30.0}]  # unpaired seed
    e = compare(rows, "base", ("pq_th",))[0]["pq_th"]
    want = stats.ttest_rel(var, ref).confidence_interval(0.95)
    assert (e["ci_low"], e["ci_high"]) == pytest.approx((want.low, want.high))
    assert e["diff"] == pytest.approx(np.mean(np.subtract(var, ref))) and e["n"] == 5
    assert [p["seed"] for p in e["per_seed"]] == [0, 1, 2, 3, 4]
    assert e["per_seed"][1] == {"seed": 1, "variant": 24.9, "reference": 23.4,
                                "diff": pytest.approx(1.5)}
    # the paired interval is narrower than the unpaired one of the same runs
    welch = stats.ttest_ind(var, ref, equal_var=False).confidence_interval(0.95)
    assert e["ci_high"] - e["ci_low"] < welch.high - welch.low
    assert e["verdict"] == "higher by 0.9 (95% CI 0.3 to 1.5)"
    with pytest.raises(ValueError, match="missing"):
        compare(rows, "missing")
    with pytest.raises(ValueError, match="two rows"):
        paired(rows + [{"variant": "new", "seed": 0, "pq_th": 1.0}], "new", "base", "pq_th")


def test_verdicts_follow_the_interval():
    assert verdict(1.3, 0.4, 2.2, 3) == "higher by 1.3 (95% CI 0.4 to 2.2)"
    assert verdict(-0.9, -1.6, -0.2, 3) == "lower by 0.9 (95% CI -1.6 to -0.2)"
    assert verdict(0.15, -0.8, 1.1, 3) == \
        "no difference detectable: the 95% CI -0.8 to 1.1 includes 0"
    assert verdict(0.4, math.nan, math.nan, 1) == "+0.4 with one seed: no interval"
    assert verdict(math.nan, math.nan, math.nan, 0) == "not measured"
    # an end that prints as 0.0 is judged by its value; -0.0 is never printed
    assert verdict(0.6, 0.01, 1.2, 4) == "higher by 0.6 (95% CI 0.0 to 1.2)"
    assert verdict(0.0, -0.04, 0.03, 4) == "no difference detectable: the 95% CI 0.0 to 0.0 " \
                                           "includes 0"


def test_sentences_and_table_carry_the_numbers_and_the_paper():
    rows = rows_of([22.0, 23.0, 21.0], [23.1, 24.2, 21.9], "+ both") \
        + [dict(r, variant="baseline") for r in rows_of([22.0, 23.0, 21.0], [], "x")]
    rows = [r for r in rows if r["variant"] != "base"]
    rows = [{**r, "pq": r["pq_th"] / 2} for r in rows]
    cmp_ = compare(rows, "baseline", ("pq", "pq_th"), paper=PAPER["table_v"])
    e = cmp_[0]
    assert e["variant"] == "+ both" and e["pq_th"]["paper"] == pytest.approx(0.8)
    lo, hi = e["pq_th"]["ci_low"], e["pq_th"]["ci_high"]
    text = describe_comparison(cmp_, ("pq", "pq_th"))
    assert text.startswith("- **+ both** vs **baseline** (3 seeds, paired): ")
    inside = "inside" if lo <= 0.8 <= hi else "outside"
    assert (f"PQ_Th higher by 1.1 (95% CI {lo:.1f} to {hi:.1f}; paper +0.8, {inside} the CI)"
            in text)
    assert "PQ higher by 0.5" in text and "paper +1.2" in text
    table = format_comparison(cmp_, ("pq", "pq_th"))
    assert table.splitlines()[0].startswith("| variant | vs | seeds | PQ diff (95% CI) | paper |")
    assert f"| +1.1 ({lo:.1f} to {hi:.1f}) | +0.8 |" in table
    one = compare([r for r in rows if r["seed"] == 0], "baseline", ("pq_th",))
    assert "(one seed)" in describe_comparison(one, ("pq_th",)) or \
        "one seed" in describe_comparison(one, ("pq_th",))
    assert "+1.1 (one seed)" in format_comparison(one, ("pq_th",))
    no_things = compare([dict(r, pq_th=float("nan")) for r in rows], "baseline", ("pq_th",))
    assert "PQ_Th not measured" in describe_comparison(no_things, ("pq_th",))
    assert "not measured" in format_comparison(no_things, ("pq_th",))


def test_another_key_and_the_record_a_study_saves():
    rows = [{"lambda": lam, "seed": s, "pq": 10.0 + s + (2 if lam == 0.25 else 0)}
            for lam in (1.0, 0.25) for s in range(3)]
    cmp_ = compare(rows, 1.0, ("pq",), by="lambda", paper=PAPER["table_iv"])
    assert cmp_[0]["pq"]["diff"] == pytest.approx(2.0) and cmp_[0]["pq"]["paper"] == \
        pytest.approx(1.8)
    assert describe_comparison(cmp_, ("pq",), by="lambda").startswith(
        "- **lambda = 0.25** vs **lambda = 1.0** (3 seeds, paired): PQ higher by 2.0 (95% CI "
        "2.0 to 2.0; paper +1.8, outside the CI)")
    # Fig. 4: the paper gives only the difference spatial flows minus cls flows
    fig4 = [dict(r, variant={1.0: "cls flows", 0.25: "spatial flows"}[r.pop("lambda")])
            for r in map(dict, rows)] + [dict(rows[0], variant="base", lambda_=0)]
    for ref, paper in (("cls flows", 0.7), ("base", None)):
        got = {e["variant"]: e["pq"]["paper"] for e in compare(fig4, ref, ("pq",),
                                                                paper=PAPER["fig_4"])}
        assert got["spatial flows"] == paper
    record = study_record(rows, 1.0, ("pq",), by="lambda")
    assert record["reference"] == 1.0 and record["runs"] == rows
    assert set(record["rows"][0]["pq"]) >= {"diff", "ci_low", "ci_high", "per_seed", "verdict"}


def test_planning_numbers():
    assert half_width(1.0, 2) == pytest.approx(12.7062 / math.sqrt(2), rel=1e-4)
    assert half_width(1.0, 1) == math.inf
    # t(0.975, 5) / sqrt(6) = 1.05 > 1; t(0.975, 6) / sqrt(7) = 0.925
    assert seeds_for(1.0, 1.0) == 7 and seeds_for(1.0, 0.01, most=50) is None
    assert seeds_for(0.1, 1.0) == 2


def test_pairing_gain_decomposes_the_variance():
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 2, 8)
    ref, var = 20 + shared + rng.normal(0, 0.3, 8), 21 + shared + rng.normal(0, 0.3, 8)
    g = pairing_gain(paired(rows_of(ref, var), "new", "base", "pq_th"))
    assert g["correlation"] == pytest.approx(np.corrcoef(var, ref)[0, 1])
    assert g["sd_diff"] ** 2 == pytest.approx(g["sd_variant"] ** 2 + g["sd_reference"] ** 2
                                              - 2 * g["correlation"] * g["sd_variant"]
                                              * g["sd_reference"])
    assert g["sd_diff"] < g["sd_unpaired"] / 3 and g["n"] == 8
    with pytest.raises(ValueError, match="at least 3"):
        pairing_gain(paired(rows_of(ref[:2], var[:2]), "new", "base", "pq_th"))


def test_noise_summaries():
    from spatialflow.studies.noise import evaluation_noise, seed_noise

    scored = [{"variant": v, "val_set": k, "images": 100, "pq": 20.0 + k + (1 if v == "b" else 0)}
              for k in range(4) for v in ("a", "b")]
    e = evaluation_noise(scored, ("pq",), "a", "b")["100"]["pq"]
    assert e["sets"] == 4 and e["sd_diff"] == 0.0  # the shared scoring noise leaves it
    assert e["sd_reference"] == pytest.approx(np.std(range(4), ddof=1))
    rows = rows_of([20.0, 22.0, 21.0, 23.0], [21.0, 23.5, 21.5, 24.0], "b", "pq")
    g = seed_noise([dict(r, variant="a") if r["variant"] == "base" else r for r in rows],
                   ("pq",), "a", "b")["pq"]
    diffs = [1.0, 1.5, 0.5, 1.0]
    assert g["sd_diff"] == pytest.approx(np.std(diffs, ddof=1)) and g["n"] == 4
    assert g["half_width"] == pytest.approx(half_width(np.std(diffs, ddof=1), 4))
    assert g["seeds_paired"] == seeds_for(g["sd_diff"], 1.0) <= g["seeds_unpaired"]


def test_precision_before_and_after():
    from spatialflow.studies.planning import (describe_precision, describe_reached,
                                              expected_precision, reached_precision)

    noise = {"command": "python benchmarks/study_noise.py", "iters": 500, "val_images": 500,
             "machine": "a test CPU", "sd_diff": {"pq": 1.0, "pq_th": 2.0}}
    hw = expected_precision(7, noise, ("pq", "pq_th", "pq_st"))
    assert hw["pq"] == pytest.approx(half_width(1.0, 7)) and hw["pq_th"] == pytest.approx(
        2 * hw["pq"]) and math.isnan(hw["pq_st"])
    text = describe_precision(7, noise, ("pq", "pq_th"))
    assert f"±{hw['pq']:.1f} PQ, ±{hw['pq_th']:.1f} PQ_Th" in text and "7 paired seeds" in text
    assert "too small to conclude" in describe_precision(1, noise)
    assert "Reaching" not in describe_precision(7, noise, ("pq",), target=1.0)
    missed = describe_precision(7, noise, ("pq", "pq_th"), target=1.0)
    assert missed.endswith(f"Reaching ±1.0 would take {seeds_for(2.0, 1.0)} seeds for PQ_Th "
                           "at this spread.")
    noise["sd_diff"]["ap"] = 1.5  # a detector study: box AP measured, AP50 / AP75 not
    box = describe_precision(7, noise, ("ap", "ap50", "ap75"))
    assert f"about ±{half_width(1.5, 7):.1f} box AP wide" in box and "AP50" not in box
    assert "unknown" in describe_precision(7, noise, ("ap50",))
    ref, a, b = [20.0, 22.0, 21.0], [21.0, 23.5, 21.5], [22.0, 22.0, 22.0]
    rows = rows_of(ref, a, "a") + rows_of(ref, b, "b")[3:]
    cmp_ = compare(rows, "base", ("pq_th",))
    widths = [(c["pq_th"]["ci_high"] - c["pq_th"]["ci_low"]) / 2 for c in cmp_]
    assert reached_precision(cmp_, ("pq_th",))["pq_th"] == pytest.approx(max(widths))
    said = describe_reached(cmp_, ("pq_th",), target=1.0)
    assert f"±{max(widths):.1f} PQ_Th" in said and "wider than ±1.0 for PQ_Th" in said
    assert "at most ±100.0" in describe_reached(cmp_, ("pq_th",), target=100.0)
    one = compare(rows_of([1.0], [2.0]), "base", ("pq_th",))
    assert "too small to conclude" in describe_reached(one, ("pq_th",))


def test_packaged_noise_per_run_length(tmp_path):
    from spatialflow.studies.planning import measured_noise, package_noise

    def result(iters, sd):
        return {"command": f"c{iters}", "iters": iters, "val_images": 500, "seeds": [0, 1],
                "machine": {"cpu_model": "CPU", "amx": False},
                "seed": {"pq_th": {"sd_diff": sd, "n": 2}}}

    path = tmp_path / "noise.json"
    package_noise(result(1000, 1.5), path)
    package_noise(result(500, 2.5), path)
    package_noise(result(1000, 1.7), path)  # replaces the first
    found = [(m["iters"], m["sd_diff"]["pq_th"]) for m in
             __import__("json").loads(path.read_text())["measurements"]]
    assert found == [(500, 2.5), (1000, 1.7)]
    assert measured_noise(400, path)["iters"] == 500 and measured_noise(800, path)["iters"] == 1000
    assert measured_noise(750, path)["iters"] == 1000 and measured_noise(None, path)["iters"] == 1000
    assert measured_noise(500, path)["machine"] == "CPU, AMX False"


def test_the_packaged_noise_is_the_benchmarks():
    """Each packaged measurement is the seed noise of the result its command wrote."""
    import json
    import shlex
    from pathlib import Path

    from spatialflow.studies.planning import MEASURED_NOISE

    found = json.loads(MEASURED_NOISE.read_text())["measurements"]
    assert found
    for noise in found:
        words = shlex.split(noise["command"])
        out = words[words.index("--out") + 1]
        result = json.loads((Path(__file__).parents[1] / f"{out}.json").read_text())
        assert noise["command"] == result["command"] and noise["iters"] == result["iters"]
        assert noise["seeds"] == len(result["seeds"]) and noise["val_images"] == result["val_images"]
        for m, sd in noise["sd_diff"].items():
            assert sd == pytest.approx(result["seed"][m]["sd_diff"])
