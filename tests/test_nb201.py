"""NAS-Bench-201 builder and the device-latency check against the shipped Pi 4 / Pixel 3 reference."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_sparse.errors import EdgeSparseError
from edge_sparse.latency import check, nb201

ALL_3X3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
RESNET_LIKE = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"


def test_all_conv3x3_network_has_the_published_macs():
    """NAS-Bench-201 lists 220.11 MFLOPs (multiply-accumulates) for the all-conv3x3 cell; counted by hand:
    stem 0.44 M + 3 stages x 30 convs x 2.36 M + 2 reductions x 3.67 M + fc 640 = 220,119,680."""
    m = nb201.build(ALL_3X3)
    assert nb201.count_macs(m) == 220_119_680
    counts = nb201.layer_counts(m)
    assert counts["Conv2d"] == 1 + 15 * 6 + 2 * 3  # stem, 6 per cell, 3 per reduction block
    assert counts["Linear"] == 1
    assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_cell_info_of_a_resnet_like_cell():
    info = nb201.cell_info(RESNET_LIKE)
    assert not info.degenerate
    assert {e.key for e in info.live} == {"e10", "e21", "e30", "e32"}  # conv-conv plus identity: a residual block
    assert info.mix == {"conv3x3": 2, "conv1x1": 0, "pool": 0, "skip": 2, "none": 2, "dead": 0}
    m = nb201.build(RESNET_LIKE, ops="live")
    assert nb201.layer_counts(m)["Conv2d"] == 1 + 15 * 2 + 2 * 3


@pytest.mark.parametrize("arch, executed, rpi4_ms", [
    # a dead node whose value is one conv and that only `none` reads: the conv ran (20 ms, a 3x3's cost) ...
    ("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|", {"e10", "e30"}, 20.19),
    # ... unless node 2 is dead with a real input of its own: nothing but the skip ran (2.7 ms)
    ("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|none~2|", {"e30"}, 2.70),
    # node 1 is read by a skip into a dead node that sums two values: the conv did not run (2.6 ms)
    ("|nor_conv_1x1~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|none~1|none~2|", {"e30"}, 2.56),
    # a skip of an all-zero node adds nothing: the conv is its node's only value and ran (34 ms: two 3x3s)
    ("|none~0|+|nor_conv_3x3~0|skip_connect~1|+|nor_conv_3x3~0|none~1|none~2|", {"e20", "e30"}, 34.39),
    # a skip passes the conv's value on to a dead node read only by `none`: it ran
    ("|nor_conv_1x1~0|+|none~0|skip_connect~1|+|skip_connect~0|none~1|none~2|", {"e10", "e30"}, 8.68),
])
def test_executed_rule_b_matches_the_device_timings(arch, executed, rpi4_ms):
    assert {e.key for e in nb201.cell_info(arch).executed} == executed
    row = next(r for r in check.load_reference() if r.arch == arch)
    assert row.rpi4_ms == pytest.approx(rpi4_ms, abs=0.01)


@pytest.mark.parametrize("arch, words", [
    ("|nor_conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'nor_conv_5x5'"),
    ("|nor_conv_3x3~0|+|none~0|+|none~0|none~1|none~2|", "node 2 has 1 edge"),
    ("|nor_conv_3x3~0|", "1 node group"),
    ("|nor_conv_3x3~1|+|none~0|none~1|+|none~0|none~1|none~2|", "must read node 0"),
])
def test_bad_cell_strings_are_named(arch, words):
    with pytest.raises(EdgeSparseError, match="cell") as e:
        nb201.build(arch)
    assert words in str(e.value)


def test_degenerate_cell_is_refused():
    with pytest.raises(EdgeSparseError, match="degenerate"):
        nb201.build("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|none~0|none~1|none~2|")


def test_shipped_reference_loads_and_is_checksummed():
    rows = check.load_reference()
    assert len(rows) == 15625 and rows[0].index == 0
    assert all(r.rpi4_ms > 0 and r.pixel3_ms > 0 for r in rows[:100])


def _copy_reference(tmp_path, edit):
    text = gzip.decompress(check.REFERENCE_DIR.joinpath("nb201-device-latency.csv.gz").read_bytes()).decode()
    p = tmp_path / "ref.csv"
    p.write_text(edit(text))
    return p


@pytest.mark.parametrize("edit, words", [
    (lambda t: t[: len(t) // 2], "truncated"),  # cut mid-line
    (lambda t: "\n".join(t.splitlines()[:5000]) + "\n", "4999 data rows"),  # cut at a line (5000 lines with the header)
    (lambda t: t.replace(",", ";", 1), "line 1: header"),
    (lambda t: t.replace("nor_conv_3x3", "nor_conv_7x7", 1), "line 3: cell"),  # the first row with a 3x3 conv
    (lambda t: t.split("\n", 3)[0] + "\n" + t.split("\n", 3)[1] + "\n" + "1,|x|,a,b\n" + t.split("\n", 3)[3], "line 3"),
])
def test_bad_reference_file_names_file_and_line(tmp_path, edit, words):
    p = _copy_reference(tmp_path, edit)
    with pytest.raises(EdgeSparseError) as e:
        check.load_reference(path=p)
    assert str(p) in str(e.value) and words in str(e.value)


def test_missing_reference_and_target_without_one(tmp_path):
    with pytest.raises(EdgeSparseError, match="is missing"):
        check.load_reference(path=tmp_path / "nope.csv")
    with pytest.raises(EdgeSparseError, match=r"no reference measurements; targets that have one: rpi4 .*android-arm64"):
        check.run_check("rpi5", sample=20, folds=2)


def test_nnls_and_metrics():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (200, 4))
    f = np.array([0.5, 0.0, 2.0, 1.0])
    y = X @ f + 0.1
    A = np.hstack([np.ones((200, 1)), X])
    got = check.fit_factors(A, y, "abs")
    assert np.all(got >= 0) and np.allclose(got, [0.1, *f], atol=1e-6)
    m = check.metrics(y * 1.05, y)
    assert m["median_abs_err"] == pytest.approx(0.05) and m["spearman"] == pytest.approx(1.0)
    assert m["within_10"] == 1.0 and m["within_15"] == 1.0


def test_repeatability_groups_networks_that_run_the_identical_graph():
    rows = check.load_reference()
    # two cells that differ only in the op of a dead node (node 1 feeds only `none`): the same graph runs
    a = "|avg_pool_3x3~0|+|nor_conv_3x3~0|none~1|+|nor_conv_3x3~0|none~1|nor_conv_3x3~2|"
    b = a.replace("avg_pool_3x3~0", "skip_connect~0")
    c = a.replace("avg_pool_3x3~0", "nor_conv_1x1~0")  # a conv there runs (rule b): another graph
    assert nb201.cell_info(a).executed == nb201.cell_info(b).executed != nb201.cell_info(c).executed
    by_arch = {r.arch: r for r in rows}
    mk = lambda arch, v: check.RefRow(by_arch[arch].index, arch, v, v)  # noqa: E731
    same = check.repeatability([mk(a, 10.0), mk(b, 10.0), mk(c, 20.0)], "rpi4_ms", min_group=2)
    assert same["n"] == 2 and same["groups"] == 1 and same["within_15"] == 1.0 and same["median_abs_dev"] == 0.0
    off = check.repeatability([mk(a, 10.0), mk(b, 13.0), mk(c, 20.0)], "rpi4_ms", min_group=2)
    assert off["within_15"] == 1.0 and off["within_10"] == 0.0 and off["median_abs_dev"] == pytest.approx(1.5 / 11.5)
    real = check.repeatability(rows, "pixel3_ms")
    assert real["n"] > 1000 and 0.5 < real["within_15"] < 1.0  # the reference does not agree with itself


@pytest.mark.slow
def test_check_on_a_small_sample_is_cross_validated_and_cached(tmp_path):
    r = check.run_check("rpi4", sample=60, folds=3, cache_dir=tmp_path)
    assert r["sample"]["n"] == 60 and r["folds"] == 3 and len(r["per_fold"]) == 3
    assert r["held_out"]["spearman"] > 0.8 and r["cache"]["computed"] == 60
    text = check.format_report(r)
    assert "held-out: Spearman" in text and "Raspberry Pi 4" in text and "the reference against itself" in text
    assert 0 <= r["miss_runs"]["p_miss"] <= 1
    again = check.run_check("rpi4", sample=60, folds=3, cache_dir=tmp_path)
    assert again["cache"]["computed"] == 0 and again["held_out"] == r["held_out"]
    json.dumps(r)  # the CLI writes it as JSON


# ------------------------------------------------------------------ the fitted device estimate


def test_anchor_network_is_mobilenet_v2():
    from edge_sparse.latency.estimate import mobilenet_v2_224

    ops = mobilenet_v2_224()
    assert round(sum(o.macs for o in ops) / 1e6) == 300  # Sandler et al.: 300 M multiply-adds
    assert sum(o.kind == "dwconv" for o in ops) == 17 and sum(o.kind == "conv" for o in ops) == 35


@pytest.mark.parametrize("name", ["rpi4", "rpi5", "android-arm64"])
def test_estimate_targets_use_the_fit_and_keep_its_error_free(name):
    """An estimate target is priced by the per-op-class fit, scaled to its published anchor, and searched
    under the budget less the fit's held-out p90 |error|."""
    from edge_sparse import models
    from edge_sparse.latency import estimate
    from edge_sparse.latency.estimate import mobilenet_v2_224
    from edge_sparse.latency.predict import resolve
    from edge_sparse.targets import load_target

    t = load_target(name)
    est = estimate.load(t)
    assert est is not None, "the shipped fit files are missing"
    fit = json.loads(estimate.fit_path(t.latency_fit).read_text())
    assert est.margin == pytest.approx(fit["held_out"]["p90_abs_err"]) and 0 < est.margin <= estimate.MAX_MARGIN
    anchor = mobilenet_v2_224()
    assert est.predict_ops(anchor) == pytest.approx(t.latency_model.ms_per_mmac * sum(o.macs for o in anchor) / 1e6)
    m = models.create("resnet8", in_channels=1, num_classes=10, input_size=28).eval()
    pr = resolve(t, m, torch.zeros(1, 1, 28, 28))
    assert pr.source == "estimate" and pr.margin == pytest.approx(est.margin, abs=1e-4)
    assert pr.effective_budget_ms == pytest.approx(pr.budget_ms * (1 - pr.margin))
    assert "fitted on" in pr.describe() and "ESTIMATE" in pr.describe()
    d = pr.to_dict()
    assert d["margin"] > 0 and d["provenance"]["held_out"]["p90_abs_err"] == pytest.approx(est.margin, abs=1e-4)
    # shape-aware: a 1x1 conv and a 3x3 conv of equal MACs are priced differently
    from edge_sparse.latency.ops import Op

    c1, c3 = Op("conv", 16, 16, 72, 64, 1), Op("conv", 16, 16, 8, 64, 3)
    assert c1.macs == c3.macs and est.op_ms(c1) != pytest.approx(est.op_ms(c3))


@pytest.mark.parametrize("name", ["rpi4", "android-arm64"])
def test_ops_the_reference_lacks_are_never_free_on_a_device_estimate(name):
    """The elementwise ops of mobile classifiers are priced per byte at their host-measured cost relative to ADD. The
    Pi 4 fit gives ADD no cost of its own (NB201's ADDs are collinear with its convs): there the anchor is the fitted
    pooling per byte, scaled by pooling's own measured ratio; before, every hard-swish, SE gate and concat of a Pi 4
    estimate cost 0. A Linear on every pixel (ConvNeXt) is priced as the 1x1 conv it computes, and named."""
    from edge_sparse.latency import estimate
    from edge_sparse.latency.ops import Op
    from edge_sparse.latency.predict import priced_by_assumption
    from edge_sparse.targets import load_target

    est = estimate.load(load_target(name))
    ops = [Op(k, 24, 24, 96, 96) for k in ("hardswish", "gelu", "mulc", "concat", "layernorm", "relu")]
    assert all(est.op_ms(o) > 0 for o in ops), {o.kind: est.op_ms(o) for o in ops}
    hs, cat = ops[0], ops[3]  # per byte, as their host ratios say
    r = est.ratios
    assert est.op_ms(hs) / est.op_ms(cat) == pytest.approx(r["hardswish"] / r["concat"] * (2 * 24 * 24 * 96) / (2 * 24 * 24 * 96))
    fc, pw = Op("fc", 24, 24, 96, 384, name="mlp.fc1"), Op("conv", 24, 24, 96, 384)
    assert fc.cls() == "fcmap" and est.op_ms(fc) == pytest.approx(est.op_ms(pw)) and est.op_ms(fc) > 0
    assert priced_by_assumption([fc, hs]) == {"fcmap": ["mlp.fc1"], "hardswish": ["hardswish"]}


def test_a_fit_beyond_the_sanity_bound_is_refused(tmp_path):
    from edge_sparse.latency import estimate

    bad = {"target": "rpi4", "device": "x", "reference": "nb201", "reference_source": "x", "features": {},
           "weighting": "abs", "folds": 5, "sample": {"n": 10},
           "held_out": {"p90_abs_err": 0.6, "spearman": 0.5, "median_abs_err": 0.3, "within_15": 0.2}, "factors": {}}
    with pytest.raises(EdgeSparseError, match="refusing to store"):
        estimate.write_fit(bad, tmp_path / "fit.json")
    assert not (tmp_path / "fit.json").exists()


def test_a_copied_profile_keeps_its_fit_and_an_unknown_fit_is_refused(tmp_path):
    """A user's `my-pi.toml` (rpi4.toml under another name, another budget) prices a model exactly as rpi4 does:
    the fit is named in the profile, not looked up by the profile's name."""
    from edge_sparse import models
    from edge_sparse.latency.predict import resolve
    from edge_sparse.targets import load_target

    text = (Path(load_target("rpi4").path)).read_text().replace('name = "rpi4"', 'name = "my-pi"')
    (tmp_path / "my-pi.toml").write_text(text.replace("latency_budget_ms = 1.00", 'latency_budget = "3x"  #'))
    m, ex = models.create("tiny_resnet", in_channels=1, num_classes=10, input_size=28).eval(), torch.zeros(1, 1, 28, 28)
    mine, theirs = resolve(load_target(tmp_path / "my-pi.toml"), m, ex), resolve("rpi4", m, ex)
    assert mine.fitted is not None and mine.predict(m, ex)["p90"] == pytest.approx(theirs.predict(m, ex)["p90"])
    assert mine.budget_ms == pytest.approx(theirs.dense_p90_ms / 3)
    (tmp_path / "my-pi.toml").write_text(text.replace('latency_fit = "rpi4"', 'latency_fit = "pi9"'))
    with pytest.raises(EdgeSparseError, match=r"my-pi.toml: key 'latency_fit' is 'pi9', but there is no .*fit-pi9.json; "
                                              r"valid: android-arm64, rpi4"):
        resolve(load_target(tmp_path / "my-pi.toml"), m, ex)
