"""Latency: the op list a model exports to, probe models timed by the real harness, tables and their
interpolation, relative budgets, the per-group width allocation, and `make profile` over a real ssh."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time

import numpy as np
import pytest
import torch

from edge_sparse import models
from edge_sparse.errors import BudgetError, EdgeSparseError
from edge_sparse.latency import percentiles
from edge_sparse.latency.ops import Op, extract_ops, tflite_ops
from edge_sparse.latency.table import LatencyTable, grid, grid_ops
from edge_sparse.targets import load_target

from _tables import synthetic_pricer, synthetic_table


def _tiny(name="tiny_resnet", shape=(1, 28, 28)):
    torch.manual_seed(0)
    m = models.create(name, in_channels=shape[0], num_classes=10, input_size=shape[1]).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.weight.data.uniform_(0.05, 1.0)
    return m, torch.zeros(1, *shape)


def _synthetic_table(ops, threads=1) -> LatencyTable:
    """A deterministic 'measured' table: 1 us per op + 1 ns per MAC + 0.1 ns per activation element."""
    prov = {"source": "measured", "device": "test", "cpu": "synthetic", "runtime": "tflite",
            "runtime_version": "test 1", "threads": threads, "date": "2026-12-01T00:00:00Z"}
    return synthetic_table(ops, provenance=prov)


# ------------------------------------------------------------------ ops

def test_ops_of_resnet_match_a_hand_count():
    m, ex = _tiny()
    ops = extract_ops(m, ex)
    kinds = [o.kind for o in ops]
    # stem, 3 blocks of (conv, conv, [pad], shortcut, add), mean, fc
    assert kinds.count("conv") == 1 + 2 * 3 + 2 and kinds.count("add") == 3 and kinds.count("pad") == 2
    assert kinds[-2:] == ["mean", "fc"]
    assert ops[0].act == "relu" and ops[1].act == "relu" and ops[2].act == "none"  # BN folded, ReLU fused
    assert next(o for o in ops if o.kind == "add").act == "relu"
    strided = [o for o in ops if o.kind == "conv" and o.stride == 2 and o.k == 3]
    assert strided and all(o.h - 2 == 2 * o.out_h for o in strided)  # padded input (+2), VALID conv halves it
    assert sum(o.macs for o in ops) == sum(s.macs for s in __import__("edge_sparse.pruning", fromlist=["p"]).profile(m, ex))


def test_ops_refuse_what_cannot_be_priced():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.g = torch.nn.Upsample(scale_factor=2)

        def forward(self, x):
            return self.g(self.c(x)).mean((2, 3))

    with pytest.raises(EdgeSparseError, match="layer g: no latency class for Upsample"):
        extract_ops(Odd(), torch.zeros(1, 1, 8, 8))


def test_shape_checks_cost_nothing_and_mobile_blocks_are_priced():
    """timm-style shape asserts trace into nodes that compute no tensor (an `eq`, an `_assert`): skipped, not refused.
    SE, hard-swish, SiLU, concat and shuffles become the TFLite ops they export to."""
    class Checked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.a = torch.nn.Hardswish()

        def forward(self, x):
            torch._assert(x.shape[1] == 1, "one channel")
            return self.a(self.c(x)).mean((2, 3))

    assert [o.kind for o in extract_ops(Checked(), torch.zeros(1, 1, 8, 8))] == ["conv", "hardswish", "mean"]
    kinds = lambda name: [o.kind for o in extract_ops(*_tiny(name))]  # noqa: E731
    mb = kinds("tiny_mbv3")
    assert {"hardswish", "mulc", "relu", "dwconv"} <= set(mb) and mb.count("mulc") == 3  # an SE gate per block
    eff = extract_ops(*_tiny("tiny_effnet"))
    n = lambda kind, act=None: sum(o.kind == kind and act in (None, o.act) for o in eff)  # noqa: E731
    assert n("sigmoid") == n("mul") + n("mulc")  # SiLU: LOGISTIC + MUL; SE: LOGISTIC + gate
    assert n("mul") == n("mul", "silu") > 0  # each SiLU's MUL is marked as one, priced as the pair runs

    class Written(torch.nn.Module):  # SiLU written out, and a MUL of two different tensors
        def __init__(self):
            super().__init__()
            self.c, self.d, self.s = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(1, 8, 1), torch.nn.Sigmoid()

        def forward(self, x):
            y = self.c(x)
            return (y * torch.sigmoid(y) + self.s(y) * y + y * self.s(self.d(x))).mean((2, 3))

    w = [(o.kind, o.act) for o in extract_ops(Written(), torch.zeros(1, 1, 8, 8)) if o.kind == "mul"]
    assert w == [("mul", "silu"), ("mul", "silu"), ("mul", "none")], w
    sh = extract_ops(*_tiny("tiny_shufflenet"))
    assert {"concat", "slice", "shuffle"} <= {o.kind for o in sh}  # chunk(2): a STRIDED_SLICE per half
    assert all(o.groups == 2 for o in sh if o.kind == "shuffle")
    g = [o for o in extract_ops(*_tiny("tiny_grouped")) if o.kind == "conv" and o.groups > 1]
    assert len(g) == 2 and all(o.macs == o.out_h * o.out_w * o.cout * (o.cin // o.groups) * 9 for o in g)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_mobilenet", "tiny_vgg", "tiny_mbv3", "tiny_effnet",
                                  "tiny_shufflenet", "tiny_grouped"])
def test_ops_match_the_exported_tflite(name, tmp_path):
    """The op list read off the torch model is the op list of the .tflite our exporter writes (as a multiset:
    the converter may schedule a residual branch's 1x1 conv before or after the main branch's conv)."""
    from edge_sparse.export import onnx as eonnx, tflite as etflite

    m, ex = _tiny(name)
    eonnx.export_fp32(m, (1, 28, 28), tmp_path / "m.onnx")
    calib = np.random.default_rng(0).standard_normal((8, 28, 28, 1)).astype(np.float32)
    etflite.export(tmp_path / "m.onnx", calib, None, tmp_path / "m.tflite")
    # fused activations are not in the op details; a SiLU's MUL is (x * LOGISTIC(x) in the graph)
    strip = lambda o: o.replace(act="silu" if o.act == "silu" else "none", name="")  # noqa: E731
    ours = sorted((strip(o) for o in extract_ops(m, ex)), key=repr)
    assert ours == sorted((strip(o) for o in tflite_ops(tmp_path / "m.tflite")), key=repr)


# ------------------------------------------------------------------ tables

def test_grid_covers_every_multiple_up_to_eight_then_spaces_them():
    assert grid(32, 8) == [8, 16, 24, 32]
    assert grid(8, 8) == [8] and grid(1, 8) == [1]  # the image channels stay fixed
    # a width off the grid (GhostNet's 36) keeps itself at the top: the allocation snaps it down to 32, 24, ... 8,
    # which a grid of [36] alone could not price ("probes span channels 36..36" stopped ghostnet_100's host build)
    assert grid(36, 8) == [8, 16, 24, 32, 36]
    m, ex = _tiny()
    ops = extract_ops(m, ex)
    fc = [o for o in grid_ops(ops, 8, 1, 10) if o.kind == "fc"]
    assert {o.cout for o in fc} == {10}  # the class count stays fixed, the features narrow
    assert {o.cin for o in fc} == set(grid(ops[-1].cin, 8)) and len(fc) > 1
    g = grid(256, 8)
    assert g[0] == 8 and g[-1] == 256 and len(g) == 8 and all(v % 8 == 0 for v in g)


def test_table_interpolates_between_grid_widths_and_refuses_outside():
    m, ex = _tiny()
    ops = extract_ops(m, ex)
    full = _synthetic_table(grid_ops(ops, 4, 1, 10))  # every multiple of 4
    sparse = _synthetic_table(grid_ops(ops, 8, 1, 10))  # every multiple of 8
    op = next(o for o in ops if o.kind == "conv" and o.cin == 16 and o.cout == 16)
    mid = op.replace(cin=12, cout=12)
    # the synthetic cost is bilinear in (cin, cout): interpolation from the 8-grid is exact
    assert sparse.op_ms(mid) == pytest.approx(full.op_ms(mid), rel=1e-9)
    with pytest.raises(EdgeSparseError, match="outside"):
        sparse.op_ms(op.replace(cin=40))
    with pytest.raises(EdgeSparseError, match="no probes for"):
        sparse.op_ms(op.replace(h=99, w=99))


def test_table_interpolates_across_the_probes_of_two_architectures():
    """One family probed for two models (different input widths, different output grids): no rectangle of probes
    surrounds an op between them, which once raised; rows are interpolated along cout, then across cin."""
    m, ex = _tiny()
    op = next(o for o in extract_ops(m, ex) if o.kind == "conv" and o.cin == 16 and o.cout == 16)
    t = _synthetic_table([op.replace(cin=ci, cout=co) for ci, co in [(8, 8), (8, 16), (8, 24), (24, 12), (24, 20), (24, 28)]])
    for cin, cout in ((16, 16), (12, 14), (20, 20)):
        mid = op.replace(cin=cin, cout=cout)  # the synthetic cost is bilinear: the interpolation is exact
        assert t.op_ms(mid) == pytest.approx(_synthetic_table([mid]).op_ms(mid), rel=1e-9)
    with pytest.raises(EdgeSparseError, match="no grid around"):
        t.op_ms(op.replace(cin=16, cout=26))  # no probed input width below 16 reaches cout 26


def test_table_roundtrip_and_bad_files(tmp_path):
    m, ex = _tiny()
    t = _synthetic_table(grid_ops(extract_ops(m, ex), 8, 1, 10))
    t.save(tmp_path / "t.json")
    back = LatencyTable.load(tmp_path / "t.json")
    assert back.entries == t.entries and back.provenance == t.provenance
    bad = json.loads((tmp_path / "t.json").read_text())
    k = next(iter(bad["entries"]))
    bad["entries"][k]["p50"] = -1
    (tmp_path / "neg.json").write_text(json.dumps(bad))
    with pytest.raises(EdgeSparseError, match="non-negative"):
        LatencyTable.load(tmp_path / "neg.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(EdgeSparseError, match="not a latency table"):
        LatencyTable.load(tmp_path / "other.json")
    with pytest.raises(EdgeSparseError, match="runtime test 1 and 1 threads.*runtime 2.1.0 and 4 threads"):
        back.check_runtime("2.1.0", 4, "target rpi4")


def test_jitter_follows_the_length_of_the_invoke():
    """p90/p50 is read off probes of similar length: long invokes get the long probes' (larger) ratio."""
    ov = {"p50": 0.002, "p90": 0.0022}
    entries = {f"short{i}": {"p50": 0.01, "p90": 0.01 + 0.012 * 0.03} for i in range(6)}  # 12 us probes: 1.03
    entries.update({f"long{i}": {"p50": 0.5, "p90": 0.502 * 1.12 - 0.002} for i in range(6)})  # 0.5 ms probes: 1.12
    entries.update({f"odd{i}": {"p50": 0.05, "p90": 0.1} for i in range(3)})  # too few in their octave: ignored
    t = LatencyTable({"threads": 1}, ov, entries)
    assert t.jitter(0.012) == pytest.approx(1.03, abs=0.005) and t.jitter(1e-4) == pytest.approx(1.03, abs=0.005)
    assert t.jitter(0.8) == pytest.approx(1.12, abs=0.005) and t.jitter(5.0) == pytest.approx(1.12, abs=0.005)
    assert 1.03 < t.jitter(0.08) < 1.12  # in between: interpolated in log time, never the odd octave's 2x
    p = t.predict([])
    assert p["p90"] == pytest.approx(p["p50"] * t.jitter(p["p50"]))


def test_a_whole_model_timing_anchors_the_tail_beyond_the_probes():
    """The probes end near 1 ms; a dense model timed whole gives the tail ratio at its own length, and invokes between
    the longest probes and it are interpolated (a 3 ms model kept the 0.5-1 ms probes' 1.13 and was over-priced 15 %)."""
    ov = {"p50": 0.002, "p90": 0.0022}
    entries = {f"short{i}": {"p50": 0.01, "p90": 0.01 + 0.012 * 0.03} for i in range(6)}  # 12 us probes: 1.03
    entries.update({f"long{i}": {"p50": 0.5, "p90": 0.502 * 1.12 - 0.002} for i in range(6)})  # 0.5 ms probes: 1.12
    t = LatencyTable({"threads": 1}, ov, entries)
    anchor = (4.0, 1.04)
    assert t.jitter(4.0) == pytest.approx(1.12, abs=0.005)  # alone: the longest probes' ratio, held flat
    assert t.jitter(4.0, anchor) == pytest.approx(1.04) and t.jitter(8.0, anchor) == pytest.approx(1.04)
    assert 1.04 < t.jitter(1.5, anchor) < t.jitter(0.9, anchor) < 1.12  # in between: interpolated in log time
    assert t.jitter(0.5, anchor) == t.jitter(0.5) and t.jitter(0.012, anchor) == t.jitter(0.012)  # the probes' own
    m, ex = _tiny()
    pr, ops = _pricer(m, ex), extract_ops(m, ex)
    p50 = pr.predict_ops(ops)["p50"] + 0.05
    w = pr.calibrate_weights(ops, p50, "a test", measured_p90_ms=p50 * 1.01)
    assert w["dense_measured_p90_ms"] == pytest.approx(p50 * 1.01, abs=1e-5)
    assert pr.dense_p90_ms == pytest.approx(p50 * 1.01, rel=1e-3)  # the dense model predicts its own measured p90
    again = _pricer(m, ex)  # a later stage re-applies the saved price, anchor included
    again.apply_weights(w, ops)
    assert again.jitter_anchor == pr.jitter_anchor and again.dense_p90_ms == pr.dense_p90_ms
    pr.calibrate_weights(ops, p50, "a test")  # no p90 timed: the table's curve alone
    assert pr.jitter_anchor is None


@pytest.mark.slow
def test_a_table_probed_at_another_speed_is_probed_again_before_the_dense_model_is_timed(tmp_path):
    """The table is probed before the training and the dense model timed against it after, when this shared VM may
    run at another speed (squeezenet1_1's zoo build found its table's probes 1.35x off five minutes later). The
    search re-checks the table right before timing the dense model; a table at 3x today's times is probed again."""
    import dataclasses

    from edge_sparse.latency import host
    from edge_sparse.latency.predict import recheck_host_table, resolve
    from edge_sparse.latency.table import LatencyTable

    m, ex = _tiny()
    ops = extract_ops(m, ex)
    t = dataclasses.replace(load_target("host"), threads=1)
    pr = resolve(t, m, ex, cache_dir=tmp_path)
    fresh = pr.predict_ops(ops)["p50"]
    d = pr.table.to_dict()
    for v in [d["overhead"], *d["entries"].values()]:
        v["p50"], v["p90"] = v["p50"] * 3, v["p90"] * 3
    pr.table = LatencyTable(d["provenance"], d["overhead"], d["entries"], pr.table.path)
    pr.dense_p90_ms = pr.predict_ops(ops)["p90"]
    said = []
    assert recheck_host_table(pr, ops, ex.shape[1], log=said.append)
    assert any("probing its" in s and "before the dense model is timed" in s for s in said), said
    assert pr.table.provenance["drift_before_reprobe"] < 0.6  # the sample ran at ~1/3 of the table's times
    assert pr.predict_ops(ops)["p50"] < 2.2 * fresh  # measured again (a shared machine moves by up to ~1.9x)
    assert pr.dense_p90_ms == pr.predict_ops(ops)["p90"]  # the relative budget's reference follows the table
    assert LatencyTable.load(pr.table.path).entries == pr.table.entries  # saved where the build's cache keeps it
    assert all(pr.table.covers(o) for o in ops)
    # a fresh table is kept as it is: three checks, each against the table the one before left (a shared machine has
    # moved by 1.86x between two probings seconds apart); a check that always re-probes fails all three
    kept = False
    for _ in range(3):
        table = pr.table
        pr.table = host.recheck(table, ops, 1, tolerance=0.5)
        if pr.table is table:
            kept = True
            break
    assert kept


@pytest.mark.slow
def test_a_cached_host_table_is_reprobed_when_the_machine_drifts(tmp_path):
    """A cached table whose times are 3x today's is detected by re-timing a sample, and re-probed."""
    from edge_sparse.latency import host

    m, ex = _tiny()
    ops = extract_ops(m, ex)
    first = host.host_table(ops, 1, cache_dir=tmp_path, runs=100)
    path = host.cache_path(1, tmp_path)
    d = json.loads(path.read_text())
    for v in [d["overhead"], *d["entries"].values()]:
        v["p50"], v["p90"] = v["p50"] * 3, v["p90"] * 3
    d["provenance"]["date"] = "2020-01-01T00:00:00Z"
    path.write_text(json.dumps(d))
    host._CHECKED.clear()
    said = []
    again = host.host_table(ops, 1, cache_dir=tmp_path, runs=100, log=said.append)
    assert any("re-probing" in s and "2020-01-01" in s for s in said), said
    assert again.provenance["date"] != "2020-01-01T00:00:00Z"
    # not the 3x table: measured again (within 2.2x of the first probing, which a machine moving by 1.86x allows)
    assert again.predict(ops)["p50"] < 2.2 * first.predict(ops)["p50"]
    # fresh now: checked and kept. A shared CI machine has moved by 1.86x between two probings seconds apart
    # (another job landing on its cores), so a fresh table is allowed three checks, each against the table the
    # one before it left (a re-probe writes a fresh one); a check that always re-probes fails all three.
    tries = []
    for _ in range(3):
        said = []
        host._CHECKED.clear()
        host.host_table(ops, 1, cache_dir=tmp_path, runs=100, log=said.append, drift_tolerance=0.5)
        tries.append(said)
        if not any("probing" in s for s in said):
            break
    assert not any("probing" in s for s in tries[-1]), tries


@pytest.mark.slow
def test_host_build_times_its_finalists_here_beside_the_dense_model(targets_copy, tmp_path, capsys):
    """`make build TARGET=host`: the search's finalists are exported and timed on this machine next to the
    dense model, and what it keeps measured within the relative budget (in the table's units) here."""
    from edge_sparse import pipeline
    from edge_sparse.config import BuildConfig, TrainConfig

    p = targets_copy / "host.toml"
    p.write_text(_budget(p.read_text(), 'latency_budget = "1.5x"'))
    cfg = BuildConfig.quick(model="resnet8", limit_train=1500, limit_eval=200, eval_size=200,
                            train=TrainConfig(epochs=1))  # (the tiny nets' fixed costs allow ~1.06x at most)
    try:
        b = pipeline.run("host", cfg, out_dir=tmp_path / "dist", cache_dir=tmp_path / "cache", until_stage="search")
    except BudgetError as e:  # a loaded machine may time every finalist, twice, over 1.5x
        # before any allocation, the dense model was timed whole to price the weights (unless the machine was busy)
        assert re.search(r"the dense model measured p50 [0-9.]+ ms here, the table's ops sum to [0-9.]+ ms: its "
                         r"[0-9.]+ MB of weights priced at [0-9.]+ us/MB|not timed to price its weights",
                         capsys.readouterr().err), "no weights calibration before the allocation"
        if "ms on the device, over the full" not in str(e):
            # nothing was timed: this host's table puts even the narrowest widths over the budget (a CPU whose fixed
            # per-invoke cost weighs more), a clear refusal, but not the path this test is about
            assert "the narrowest allowed widths predict" in str(e), str(e)
            pytest.skip(f"this host's table puts every allocation over 1.5x: {e}")
        return
    except EdgeSparseError as e:  # the dense model timed twice far off this host's table: a loaded machine
        assert "other jobs are loading this machine" in str(e), str(e)
        pytest.skip(f"this machine is too loaded to time finalists: {e}")
    timed = [c for c in b.results["search"]["candidates"] if c["measured_p90_ms"] is not None]
    assert timed and all(c["method"].startswith("allocate/") and c["measured_p90_ms"] > 0 for c in timed)
    chosen = b.results["search"]["chosen"]
    assert chosen["measured_p90_ms"] is not None and chosen["measured_p90_ms"] <= b._pricer.budget_ms
    saved = b.results["search"]["latency"]["weights"]  # None only when the machine was busy at the search
    from edge_sparse.latency.predict import resolve

    dense, _ = models.load(b.dirs["train"] / "dense")
    for fresh in (None, resolve(b.target, dense, b.example())):  # a later stage, or a resumed build's own pricer
        b._pricer = fresh
        assert pipeline.pricer(b).weights == saved
        assert pipeline.pricer(b).budget_ms == pytest.approx(b.results["search"]["latency"]["budget_ms"], abs=1e-5)


def test_weights_calibration_prices_each_op_by_the_weights_it_reads():
    """A table's probe runs its op's weights in cache; the dense model timed whole pays for reading them. The gap, per
    MB of the dense model's weights, is added to each op by its own weights: the dense model predicts its timing,
    a pruned one is charged for what it still reads, and a timing under the table's sum adds nothing."""
    from edge_sparse.pruning import prune

    m, ex = _tiny()
    pr = _pricer(m, ex)
    ops = extract_ops(m, ex)
    small = extract_ops(prune(m, ex, sparsity=0.5, criterion="l1", round_to=8).model, ex)
    base, base_small = pr.predict_ops(ops), pr.predict_ops(small)
    mb, mb_small = (sum(o.weight_bytes for o in x) / 1e6 for x in (ops, small))
    assert 0 < mb_small < mb
    assert Op("conv", 8, 8, 16, 32, k=3, groups=4).weight_bytes == 32 * 4 * 9 + 4 * 32
    w = pr.calibrate_weights(ops, base["p50"] + 0.2, "a test")
    assert w["ms_per_weight_mb"] == pytest.approx(0.2 / mb, rel=1e-3) and w["dense_weight_mb"] == pytest.approx(mb, rel=1e-3)
    assert pr.predict_ops(ops)["p50"] == pytest.approx(base["p50"] + 0.2, abs=2e-5)
    assert pr.dense_p90_ms == pr.predict_ops(ops)["p90"] > base["p90"]  # the relative budget's reference moves too
    got = pr.predict_ops(small)
    assert got["p50"] == pytest.approx(base_small["p50"] + 0.2 * mb_small / mb, abs=2e-5)
    assert sum(l["ms"] for l in got["layers"]) + pr.table.overhead["p50"] == pytest.approx(got["p50"], abs=1e-3)
    assert pr.to_dict()["weights"] == w and "us/MB" in pr.describe()
    again = _pricer(m, ex)  # a later stage re-applies the saved price: the same predictions, the same budget
    again.apply_weights(w, ops)
    assert again.predict_ops(small) == got and again.dense_p90_ms == pr.dense_p90_ms
    pr.calibrate_weights(ops, base["p50"] * 0.8, "a test")  # faster than the table: nothing to price
    assert pr.ms_per_weight_mb == 0 and pr.predict_ops(small)["p50"] == base_small["p50"]


def test_later_stages_price_with_the_weights_the_search_measured(tmp_path):
    """A stage after the search (finetune's predicted p90, the gates, the report), in this process or a resumed one,
    prices with the search's saved weights price, also when the build resolved its own table-only pricer first."""
    import types

    from edge_sparse import pipeline

    m, ex = _tiny()
    models.save(m, tmp_path / "dense", arch="tiny_resnet", kwargs={"in_channels": 1, "num_classes": 10, "input_size": 28})
    searched = _pricer(m, ex)
    w = searched.calibrate_weights(extract_ops(m, ex), searched.predict_ops(extract_ops(m, ex))["p50"] + 0.05, "a test")
    b = types.SimpleNamespace(example=lambda: ex, dirs={"train": tmp_path}, _pricer=_pricer(m, ex),
                              results={"search": {"latency": searched.to_dict()}})
    assert pipeline.pricer(b).weights == w and pipeline.pricer(b).budget_ms == searched.budget_ms
    assert pipeline.pricer(b).predict(m, ex) == searched.predict(m, ex)


def test_the_weights_are_not_priced_from_a_timing_on_a_busy_machine():
    """The dense model is timed for the weights' price only with a core to spare; on a loaded machine the table
    stands alone (a timing under load would price weights at the load's cost)."""
    import types

    from edge_sparse import pipeline

    m, ex = _tiny()
    b = types.SimpleNamespace(example=lambda: ex)
    cores = len(os.sched_getaffinity(0))
    pr = _pricer(m, ex)
    dense_p90 = pr.dense_p90_ms
    pipeline._calibrate_on_dense(b, m, pr, load=lambda: cores + 1.0, time_p50=lambda: 99.0)
    assert pr.weights is None and pr.dense_p90_ms == dense_p90
    pipeline._calibrate_on_dense(b, m, pr, load=lambda: 0.1,
                                 time_p50=lambda: pr.predict_ops(extract_ops(m, ex))["p50"] + 0.05)
    assert pr.weights["ms_per_weight_mb"] > 0 and "0.10 cores busy" in pr.weights["how"]
    assert pr.dense_p90_ms > dense_p90


def test_a_dense_timing_far_off_the_host_table_is_timed_again_then_refused():
    """A relative host budget is judged against one dense timing: one far off this host's own table (a loaded
    machine) is timed again; twice off, the build stops with one line instead of judging on it."""
    from edge_sparse.pipeline import DENSE_KEY, _time_beside_dense

    calls = []

    def timings(*seq):
        it = iter(seq)
        return lambda: calls.append(1) or dict(next(it))

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = lambda: float(cores)  # noqa: E731  (every core taken)
    assert _time_beside_dense(timings({DENSE_KEY: 1.2, "a": 0.7}), 0.98, 1.5, busy) == {DENSE_KEY: 1.2, "a": 0.7}
    assert len(calls) == 1
    calls.clear()
    got = _time_beside_dense(timings({DENSE_KEY: 5.1, "a": 0.78}, {DENSE_KEY: 1.0, "a": 0.8}), 0.98, 1.5, busy)
    assert got == {DENSE_KEY: 1.0, "a": 0.8} and len(calls) == 2
    calls.clear()
    with pytest.raises(EdgeSparseError, match=r"5\.1000 ms p90, twice more than 1\.5x off the 0\.9800 ms .*other jobs"):
        _time_beside_dense(timings({DENSE_KEY: 5.1, "a": 0.78}, {DENSE_KEY: 5.1, "a": 0.78}), 0.98, 1.5, busy)
    assert len(calls) == 2
    with pytest.raises(EdgeSparseError):  # too fast is as wrong as too slow
        _time_beside_dense(timings({DENSE_KEY: 0.5, "a": 0.3}, {DENSE_KEY: 0.6, "a": 0.3}), 0.98, 1.5, busy)
    # off the table with a core to spare: the table is off for this model (repvit_m0_9's dense model on a quiet
    # host), and the two timings' ratio is judged once
    calls.clear()
    quiet = lambda: cores - 1.0  # noqa: E731
    got = _time_beside_dense(timings({DENSE_KEY: 1.55, "a": 0.9}), 0.97, 1.5, quiet)
    assert got == {DENSE_KEY: 1.55, "a": 0.9} and len(calls) == 1


def test_busy_cores_counts_other_jobs_not_this_process_past_work():
    """The rule's measure of load: cores busy over the next second, while this process sleeps. Right after this
    process kept a core busy (what the 1-minute load average still counts), it reads near idle; with a spinning
    child on one core, it reads about one core."""
    import subprocess
    import sys

    from edge_sparse.pipeline import busy_cores

    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat: the load average is used")
    t = time.time()
    while time.time() - t < 1.5:  # this process busy, as a build's training is before its search
        pass
    idle = busy_cores(0.5)
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<5: pass"])
    try:
        time.sleep(0.3)
        one = busy_cores(1.0)
    finally:
        spin.kill()
        spin.wait()
    assert one > idle + 0.5 and one > 0.7, (idle, one)  # (other jobs on a shared machine add to both)


def test_percentiles():
    p = percentiles(list(range(1, 101)))
    assert p["min"] == 1 and p["max"] == 100 and p["p50"] == pytest.approx(50.5) and p["p90"] == pytest.approx(90.1)


# ------------------------------------------------------------------ budgets in profiles

def _budget(text: str, line: str) -> str:
    """The host profile's text with its latency_budget line replaced by `line` (failing if it has none)."""
    out, n = re.subn(r'(?m)^latency_budget = .*$', line, text)
    assert n == 1, "the host profile has no latency_budget line"
    return out


@pytest.mark.parametrize("edit,message", [
    (lambda s: _budget(s, 'latency_budget = "0.5x"'), "greater than 1"),
    (lambda s: _budget(s, 'latency_budget = "fast"'), "like \"2.5x\""),
    (lambda s: _budget(s, 'latency_budget = "2x"\nlatency_budget_ms = 0.1'), "exactly one"),
    (lambda s: _budget(s, ""), "exactly one"),
    (lambda s: s.replace('latency_table = "host"', 'latency_table = "nope.json"'), "not a file"),
    (lambda s: s.replace('latency_table = "host"', ""), "no latency source"),
])
def test_bad_budget_and_latency_source(targets_copy, edit, message):
    p = targets_copy / "host.toml"
    p.write_text(edit(p.read_text()))
    with pytest.raises(EdgeSparseError, match=message) as e:
        load_target("host")
    assert str(p) in str(e.value)


def test_relative_budget_resolves_against_the_dense_model():
    t = load_target("host")
    assert t.latency_budget_ms is None and t.speedup == 1.6
    assert t.budget_ms(0.32) == pytest.approx(0.2) and "1.6x" in t.describe_budget()
    with pytest.raises(EdgeSparseError, match="relative"):
        t.budget_ms(None)


# ------------------------------------------------------------------ allocation

def _pricer(m, ex, multiple=8):
    return synthetic_pricer(m, ex, fixed_in=1, multiple=multiple)


class _Fire(torch.nn.Module):
    """SqueezeNet's fire modules: a squeeze conv, two expand convs concatenated, read whole by the next conv."""

    def __init__(self):
        super().__init__()
        cbr = lambda i, o, k: torch.nn.Sequential(torch.nn.Conv2d(i, o, k, padding=k // 2, bias=False),  # noqa: E731
                                                   torch.nn.BatchNorm2d(o), torch.nn.ReLU())
        self.stem, self.squeeze = cbr(1, 32, 3), cbr(32, 16, 1)
        self.e1, self.e3 = cbr(16, 32, 1), cbr(16, 32, 3)
        self.head = cbr(64, 32, 1)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        s = self.squeeze(self.stem(x))
        return self.fc(self.head(torch.cat([self.e1(s), self.e3(s)], 1)).mean((2, 3)))


@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_mobilenet", "fire"])
def test_allocation_fills_the_budget_with_kernel_friendly_widths(name):
    from edge_sparse.allocate import SCORINGS, Allocator
    from edge_sparse.pruning import replay

    m, ex = _tiny(name) if name != "fire" else (_Fire().eval(), torch.zeros(1, 1, 28, 28))
    pr = _pricer(m, ex)
    al = Allocator(m, ex, pr, 8)
    floor = al.price({g.name: g.min_keep for g in al.groups})["p90"]
    budget = floor + 0.6 * (pr.dense_p90_ms - floor)
    for scoring in SCORINGS:
        a = al.allocate(budget, scoring)
        assert a is not None and a.p90_ms <= budget
        step = max(abs(al.price({**a.keep, g: a.keep[g] + 8})["p90"] - a.p90_ms) for g in a.keep if a.keep[g] + 8 <= next(x.size for x in al.groups if x.name == g))
        assert a.p90_ms >= budget - step  # filled: adding any one multiple back would break the budget, or is within one step
        res = al.apply(a)
        got = pr.predict(res.model, ex)["p90"]
        assert got == pytest.approx(a.p90_ms, rel=1e-6)  # the allocation's own price is the shrunk model's
        assert all(c % 8 == 0 or c in (1, 10) for s in res.layers for c in (s.in_channels, s.out_channels))
        assert res.macs < res.dense_macs
        rebuilt = replay(m, res.record, ex)
        x = torch.randn(2, *ex.shape[1:])
        assert torch.allclose(rebuilt(x), res.model(x), atol=1e-5)


@pytest.mark.parametrize("name", ["tiny_resnet", "tiny_mobilenet", "fire"])
def test_a_trial_width_is_priced_by_the_ops_it_moves_as_the_whole_model_prices_it(name):
    """The greedy search re-prices only the ops a group reads or writes (densenet121's search: 180 s -> 2 s per
    scoring); every trial must cost what pricing the whole model at those widths costs, weights price included."""
    from edge_sparse.allocate import Allocator

    m, ex = _tiny(name) if name != "fire" else (_Fire().eval(), torch.zeros(1, 1, 28, 28))
    pr = _pricer(m, ex)
    pr.ms_per_weight_mb = 0.3
    al = Allocator(m, ex, pr, 8)
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(20):
        keep = {g.name: int(rng.integers(g.min_keep // g.step, g.size // g.step + 1)) * g.step for g in al.groups}
        per = al._state(keep)
        assert round(pr.total(sum(per))[1], 5) == al.price(keep)["p90"]
        for g in al.groups:
            if keep[g.name] - g.step >= g.min_keep:
                trial = {**keep, g.name: keep[g.name] - g.step}
                assert al._p90_moved(per, sum(per), trial, [g.name])[0] == pytest.approx(al.price(trial)["p90"], abs=1e-5)
                checked += 1
    assert checked > 20


class _GroupedBlock(torch.nn.Module):
    """RegNet-X's block: 1x1, a 3x3 conv in 3 groups of 16 channels, 1x1, a residual add."""

    def __init__(self):
        super().__init__()
        cbr = lambda i, o, k, g=1: torch.nn.Sequential(  # noqa: E731
            torch.nn.Conv2d(i, o, k, padding=k // 2, groups=g, bias=False), torch.nn.BatchNorm2d(o), torch.nn.ReLU())
        self.stem, self.a, self.b = cbr(1, 24, 3), cbr(24, 48, 1), cbr(48, 48, 3, g=3)
        self.c = torch.nn.Sequential(torch.nn.Conv2d(48, 24, 1, bias=False), torch.nn.BatchNorm2d(24))
        self.fc = torch.nn.Linear(24, 10)

    def forward(self, x):
        s = self.stem(x)
        return self.fc(torch.relu(s + self.c(self.b(self.a(s)))).mean((2, 3)))


def test_allocation_narrows_a_grouped_conv_evenly():
    """A grouped conv's channels go one position of every group at a time, so the shrunk conv still has its 3 equal
    groups (removing the least important channels wherever they were left it 45 channels in 3 groups of 16 inputs,
    and the pruned network did not run: RegNet's failure in the zoo)."""
    from edge_sparse.allocate import Allocator
    from edge_sparse.pruning import replay

    torch.manual_seed(0)
    m, ex = _GroupedBlock().eval(), torch.zeros(1, 1, 16, 16)
    with torch.no_grad():  # every slice's weakest channels sit at different positions: an uneven pick is the easy one
        m.a[1].weight.copy_(torch.rand(48) + 0.1)
        m.b[1].weight.copy_(torch.rand(48) + 0.1)
    pr = _pricer(m, ex)
    al = Allocator(m, ex, pr, 8)
    steps = {g.name: g.step for g in al.groups}
    assert steps.pop("a.0") == steps.pop("b.0") == 24 and set(steps.values()) == {8}, steps  # lcm(8, 3 groups)
    floor = al.price({g.name: g.min_keep for g in al.groups})["p90"]
    a = al.allocate(floor + 0.3 * (pr.dense_p90_ms - floor), "importance")
    assert a is not None and a.keep["a.0"] < 48 and a.keep["b.0"] < 48, a
    res = al.apply(a)
    b = res.model.b[0]
    assert b.groups == 3 and b.out_channels == a.keep["b.0"] and b.in_channels == a.keep["a.0"]
    assert b.weight.shape[1] == b.in_channels // 3
    x = torch.randn(2, *ex.shape[1:])
    assert torch.allclose(replay(m, res.record, ex)(x), res.model(x), atol=1e-5)
    assert pr.predict(res.model, ex)["p90"] == pytest.approx(a.p90_ms, rel=1e-6)
    # within each group of b's outputs, the kept positions are the same, and they are the best on average
    kept = sorted(set(range(48)) - {i for n, out, idx in res.record["history"] if n == "b.0" and out for i in idx})
    per = [[i % 16 for i in kept if i // 16 == s] for s in range(3)]
    assert per[0] == per[1] == per[2]
    mean = m.b[1].weight.detach().view(3, 16).mean(0)
    assert min(mean[per[0]]) >= max(mean[[p for p in range(16) if p not in per[0]]])


class _GhostBlock(torch.nn.Module):
    """GhostNet's module: a 1x1 conv's 32 outputs concatenated with a depthwise conv of them (64 channels), an SE
    gate over the concat, a 1x1 conv reading it back to the stream, a residual add."""

    def __init__(self):
        super().__init__()
        bn = torch.nn.BatchNorm2d
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, 24, 3, padding=1, bias=False), bn(24), torch.nn.ReLU())
        self.primary = torch.nn.Sequential(torch.nn.Conv2d(24, 32, 1, bias=False), bn(32), torch.nn.ReLU())
        self.cheap = torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), bn(32),
                                         torch.nn.ReLU())
        self.reduce, self.expand = torch.nn.Conv2d(64, 16, 1), torch.nn.Conv2d(16, 64, 1)
        self.back = torch.nn.Sequential(torch.nn.Conv2d(64, 24, 1, bias=False), bn(24))
        self.fc = torch.nn.Linear(24, 10)

    def forward(self, x):
        s = self.stem(x)
        p = self.primary(s)
        g = torch.cat([p, self.cheap(p)], 1)
        g = g * torch.sigmoid(self.expand(torch.relu(self.reduce(g.mean((2, 3), keepdim=True)))))
        return self.fc(torch.relu(s + self.back(g)).mean((2, 3)))


def test_allocation_narrows_a_ghost_module_at_both_halves():
    """A ghost module's concat holds a conv's channel j at j and the depthwise conv of it at j + 32: the two go
    together, 8 positions (16 concat channels) at a time, so the primary conv stays on the multiple-of-8 grid and the
    concat's halves stay equal. Before, ranking the group raised inside Torch-Pruning (its importance sum was sized
    by the 32-wide BatchNorm, not the 64-wide group) and the group was kept whole: GhostNet never reached a budget."""
    from edge_sparse.allocate import Allocator
    from edge_sparse.pruning import replay

    torch.manual_seed(0)
    m, ex = _GhostBlock().eval(), torch.zeros(1, 1, 16, 16)
    with torch.no_grad():
        m.primary[1].weight.copy_(torch.rand(32) + 0.1)
        m.cheap[1].weight.copy_(torch.rand(32) + 0.1)
    pr = _pricer(m, ex)
    al = Allocator(m, ex, pr, 8)
    assert not al.unprunable, al.unprunable
    ghost = [g for g in al.groups if g.size == 64]
    assert len(ghost) == 1 and ghost[0].step == 16, [(g.name, g.size, g.step) for g in al.groups]
    floor = al.price({g.name: g.min_keep for g in al.groups})["p90"]
    a = al.allocate(floor + 0.2 * (pr.dense_p90_ms - floor), "importance")
    assert a is not None and a.keep[ghost[0].name] < 64, a
    res = al.apply(a)
    k = a.keep[ghost[0].name]
    assert res.model.primary[0].out_channels == res.model.cheap[0].out_channels == k // 2
    assert res.model.back[0].in_channels == res.model.expand.out_channels == k and (k // 2) % 8 == 0
    x = torch.randn(2, *ex.shape[1:])
    assert torch.allclose(replay(m, res.record, ex)(x), res.model(x), atol=1e-5)
    assert pr.predict(res.model, ex)["p90"] == pytest.approx(a.p90_ms, rel=1e-6)
    # the shrunk module is the dense one with the weakest positions (mean |gamma| of both halves) removed
    cut = [i for n, out, idx in res.record["history"] if n == ghost[0].name and out for i in idx]  # of 64
    gone = {i % 32 for i in cut}
    assert len(cut) == 64 - k and {i for i in cut if i < 32} == {i - 32 for i in cut if i >= 32}  # both halves alike
    mean = (m.primary[1].weight + m.cheap[1].weight).detach() / 2
    kept = [i for i in range(32) if i not in gone]
    assert len(kept) == k // 2 and min(mean[kept]) >= max(mean[sorted(gone)])
    # fixed-sparsity pruning (Torch-Pruning's pruner, channel by channel) keeps the module whole and says why
    from edge_sparse.pruning import prune

    fixed = prune(m, ex, sparsity=0.5)
    assert any("ghost module" in u["why"] and "primary.0" in u["layers"] for u in fixed.record["unprunable"])
    assert fixed.model.primary[0].out_channels == 32 and fixed.model(x).shape == (2, 10)


def test_allocation_keeps_the_important_channels():
    """With one group's BN scales tiny, the importance scoring prunes that group first."""
    from edge_sparse.allocate import Allocator

    m, ex = _tiny()
    with torch.no_grad():
        m.layer3[0].bn1.weight.mul_(1e-3)  # layer3.0.conv1's outputs barely matter
    pr = _pricer(m, ex)
    al = Allocator(m, ex, pr, 8)
    full = {g.name: g.size for g in al.groups}
    saved = {g: pr.dense_p90_ms - al.price({**full, g: full[g] - 8})["p90"] for g in full}
    # a budget that one multiple off any group meets: the cheapest in importance per ms goes, nothing else
    a = al.allocate(pr.dense_p90_ms - min(saved.values()) * 0.9, "importance")
    assert a.keep == {**full, "layer3.0.conv1": 8}, a
    assert "conv1" not in a.keep  # 8 wide: not prunable on an 8-grid


def test_allocation_ranks_by_the_criterion_asked_for():
    """--criterion l2 ranks channels by their group's weight magnitude, not BN |gamma|; taylor needs a batch."""
    from edge_sparse.allocate import Allocator

    m, ex = _tiny()
    with torch.no_grad():
        m.layer3[0].bn1.weight.mul_(1e-3)  # tiny |gamma| ...
        m.layer3[0].conv1.weight.mul_(1e3)  # ... behind the largest filters
    pr = _pricer(m, ex)
    bn, l2 = Allocator(m, ex, pr, 8), Allocator(m, ex, pr, 8, criterion="l2")
    assert (bn.criterion, l2.criterion) == ("bn_scale", "l2")
    mean = lambda al, name: float(np.mean(next(g for g in al.groups if g.name == name).importance))  # noqa: E731
    others = [g.name for g in bn.groups if g.name != "layer3.0.conv1"]
    assert all(mean(bn, "layer3.0.conv1") < mean(bn, o) for o in others)  # BN |gamma|: the least important
    assert all(mean(l2, "layer3.0.conv1") > mean(l2, o) for o in others)  # L2 magnitude: the most important
    with pytest.raises(EdgeSparseError, match="taylor.*needs a batch"):
        Allocator(m, ex, pr, 8, criterion="taylor")


def test_taylor_reaches_every_search_path_and_is_the_no_train_default(fmnist_small, tmp_path):
    """--criterion taylor ranks by the loss gradient on the one-threshold search too (it used to fail there only
    after training, for want of a batch); --no-train means taylor unless a criterion is named."""
    import argparse

    from edge_sparse.cli import _build_args, _config
    from edge_sparse.data import to_tensor
    from edge_sparse.search import search

    m, ex = _tiny()
    pr = _pricer(m, ex)
    pr.target = dataclasses.replace(pr.target, latency_budget_ms=1e3)
    idx = np.arange(64)
    batch = (to_tensor(fmnist_small.train.images(idx), fmnist_small.mean, fmnist_small.std),
             torch.as_tensor(fmnist_small.train.y[idx], dtype=torch.long))
    chosen, res, _ = search(m, fmnist_small, pr.target, [0.3], "taylor", log=lambda *_: None, fixed=0.3, pricer=pr,
                            taylor_batch=batch)
    assert chosen.sparsity == 0.3 and res.record["criterion"] == "taylor"
    with pytest.raises(EdgeSparseError, match="taylor"):
        search(m, fmnist_small, pr.target, [0.3], "taylor", log=lambda *_: None, fixed=0.3, pricer=pr)
    p = argparse.ArgumentParser()
    _build_args(p)
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")  # only its existence is checked here
    crit = lambda *a: _config(p.parse_args(["--target", "rpi4", *a])).criterion  # noqa: E731
    assert crit() == "bn_scale" and crit("--no-train", "--weights", str(w)) == "taylor"
    assert crit("--no-train", "--weights", str(w), "--criterion", "bn_scale") == "bn_scale"
    assert crit("--criterion", "l2") == "l2"


def test_search_ships_dense_when_it_fits_and_fails_clearly_when_nothing_does(fmnist_small):
    from edge_sparse.search import search_allocations

    m, ex = _tiny()
    t = dataclasses.replace(load_target("rpi4"), latency_budget_ms=1e3)
    pr = _pricer(m, ex)
    pr.target = t
    chosen, res, tried = search_allocations(m, fmnist_small, t, pr, log=lambda *_: None)
    assert res is None and chosen.sparsity == 0 and chosen.method == "dense"
    pr.target = dataclasses.replace(t, latency_budget_ms=1e-6)
    with pytest.raises(BudgetError, match="narrowest allowed widths predict"):
        search_allocations(m, fmnist_small, pr.target, pr, log=lambda *_: None)


# ------------------------------------------------------------------ probes timed by the harness

@pytest.mark.slow
def test_probe_suite_timed_by_the_harness_prices_a_real_model(tmp_path):
    """Probes -> bench.py --probes -> table; the table's p50 of the tiny ResNet vs its real .tflite."""
    from edge_sparse.latency import measure_many, probes
    from edge_sparse.latency.host import host_table

    m, ex = _tiny()
    ops = extract_ops(m, ex)
    t = host_table(ops, 1, cache_dir=tmp_path / "lat", runs=200)
    assert t.provenance["source"] == "measured" and t.provenance["threads"] == 1
    assert all(o.replace(name="").key in t.entries for o in ops)
    again = host_table(ops, 1, cache_dir=tmp_path / "lat")  # cached: nothing probed twice
    assert again.entries == t.entries
    suite = probes.write_suite(ops[:2], tmp_path / "suite")
    meta = json.loads((suite / "probes.json").read_text())
    assert meta["probes"][0]["name"] == "overhead" and len(meta["probes"]) == 3
    from edge_sparse.export import onnx as eonnx, tflite as etflite

    eonnx.export_fp32(m, (1, 28, 28), tmp_path / "m.onnx")
    etflite.export(tmp_path / "m.onnx", np.random.default_rng(0).standard_normal((8, 28, 28, 1)).astype(np.float32),
                   None, tmp_path / "m.tflite")
    # a loose bound (shared CI machine); BENCHMARKS.md holds the real accuracy figures. The table and the model are
    # timed at different moments, and a shared machine has moved by 1.86x between two such moments: up to three
    # tries, each probing the table afresh right before timing the model; a wrong predictor fails all three.
    seen = []
    for _ in range(3):
        measured = measure_many([tmp_path / "m.tflite"], threads=1, runs=300)[0]["p50"]
        seen.append((t.predict(ops)["p50"], measured))
        if 0.5 < seen[-1][0] / measured < 2.0:
            break
        t = host_table(ops, 1, cache_dir=tmp_path / "lat", runs=200, refresh=True)
    assert 0.5 < seen[-1][0] / seen[-1][1] < 2.0, seen


def test_ops_that_cost_otherwise_in_a_model_are_probed_in_context_and_priced_less_it(tmp_path):
    """A HARD_SWISH (which XNNPACK leaves to the builtin kernel, splitting its partition) is probed between two 1x1
    convs and priced less the two convs; a SiLU's MUL is probed as x * sigmoid(x), less the LOGISTIC; the rest as
    before, less the per-invoke overhead."""
    from edge_sparse.latency import probes
    from edge_sparse.latency.ops import KINDS

    hs, silu, mul = Op("hardswish", 8, 8, 16, 16), Op("mul", 8, 8, 16, 16, act="silu"), Op("mul", 8, 8, 16, 16)
    assert probes.baseline(hs) == Op("pwpair", 8, 8, 16, 16) and "pwpair" in KINDS
    assert probes.baseline(silu) == Op("sigmoid", 8, 8, 16, 16) and probes.baseline(mul) is None
    assert probes.baseline(Op("gelu", 8, 8, 16, 16)) == probes.baseline(hs)
    suite = json.loads((probes.write_suite([hs, silu, mul], tmp_path / "s") / "probes.json").read_text())
    by = {p["key"]: p for p in suite["probes"]}
    assert set(by) == {o.key for o in (probes.OVERHEAD, hs, silu, mul, probes.baseline(hs), probes.baseline(silu))}
    assert by[hs.key]["minus"] == by[probes.baseline(hs).key]["name"]
    assert by[silu.key]["minus"] == by[probes.baseline(silu).key]["name"] and "minus" not in by[mul.key]
    from edge_sparse.latency.ops import tflite_ops as read

    assert [o.kind for o in read(tmp_path / "s" / by[hs.key]["file"])] == ["conv", "hardswish", "conv"]
    assert [(o.kind, o.act) for o in read(tmp_path / "s" / by[silu.key]["file"])] == [("sigmoid", "none"), ("mul", "silu")]
    ms = {hs.key: 0.50, probes.baseline(hs).key: 0.30, silu.key: 0.013, probes.baseline(silu).key: 0.012,
          mul.key: 0.030, "overhead": 0.001}
    t = LatencyTable.from_timings(suite, {"timings": {p["name"]: {"p50": ms.get(p["key"], ms["overhead"]) if
                                                      p["name"] != "overhead" else ms["overhead"], "p90": 1.1 *
                                                      (ms.get(p["key"]) or ms["overhead"])} for p in suite["probes"]}},
                                  {"source": "measured"})
    assert t.op_ms(hs) == pytest.approx(0.20) and t.op_ms(silu) == pytest.approx(0.001)
    assert t.op_ms(mul) == pytest.approx(0.029) and t.op_ms(probes.baseline(hs)) == pytest.approx(0.299)
    # a difference of two probes is not a probe's tail: the curve reads the others alone
    assert probes.priced_in_context(hs.key) and probes.priced_in_context(silu.key) and not probes.priced_in_context(mul.key)
    t.entries[hs.key] = {"p50": 0.2, "p90": 0.9}  # a wild difference of tails
    plain = LatencyTable(t.provenance, t.overhead, {k: v for k, v in t.entries.items() if k not in (hs.key, silu.key)})
    assert t.jitter(0.2) == plain.jitter(0.2)
    # a context whose timing did not come back: the op is left out, never priced less the per-invoke overhead
    timings = {p["name"]: {"p50": 0.1, "p90": 0.11} for p in suite["probes"] if p["key"] != probes.baseline(hs).key}
    assert hs.key not in LatencyTable.from_timings(suite, {"timings": timings}, {"source": "measured"}).entries


def test_a_layer_scale_folds_only_into_the_sole_reader_of_a_layer_and_only_per_channel():
    """A per-channel parameter times a conv's output folds into the conv's weights (onnx2tf leaves no MUL); a conv read
    twice, or a parameter that is not per channel, leaves a MUL that is priced."""
    c = torch.nn.Conv2d(3, 8, 3, padding=1)

    class Scaled(torch.nn.Module):
        def __init__(self, shape, twice=False):
            super().__init__()
            self.c, self.g, self.twice = c, torch.nn.Parameter(torch.ones(shape)), twice
            self.drop = torch.nn.Dropout()

        def forward(self, x):
            y = self.c(x)
            return ((y + self.g * self.drop(y)) if self.twice else self.g * self.drop(y)).mean((2, 3))

    kinds = lambda m: [o.kind for o in extract_ops(m.eval(), torch.zeros(1, 3, 8, 8))]  # noqa: E731
    assert kinds(Scaled((8, 1, 1))) == ["conv", "mean"]
    assert "mul" in kinds(Scaled((8, 1, 1), twice=True))
    assert "mul" in kinds(Scaled((1, 8, 8, 8)))


def test_a_layer_norm_and_a_linear_per_pixel_get_probes_that_read_back_as_themselves(tmp_path):
    """ConvNeXt's channels-last ops: a LayerNorm over the channels (ten int8 ops XNNPACK leaves to the builtin kernels)
    is probed between two 1x1 convs and priced less them; a Linear on every pixel is a FULLY_CONNECTED on H*W rows."""
    from edge_sparse.latency import probes

    ln, fc = Op("layernorm", 6, 6, 24, 24), Op("fc", 6, 6, 24, 40)
    assert probes.priced_in_context(ln.key) and probes.baseline(ln) == Op("pwpair", 6, 6, 24, 24)
    assert fc.macs == 6 * 6 * 24 * 40 and (fc.out_h, fc.out_w) == (6, 6) and Op("fc", 1, 1, 24, 40).macs == 960
    # and a TRANSPOSE, which onnx2tf writes around some GELUs (FastViT's): read back from a .tflite, it is priced
    for op, kinds in ((ln, ["conv", "layernorm", "conv"]), (fc, ["fc"]), (Op("transpose", 6, 6, 24, 24), ["transpose"])):
        (tmp_path / "p.tflite").write_bytes(probes.build_probe(op))
        assert [o.kind for o in tflite_ops(tmp_path / "p.tflite")] == kinds
        assert [o.key for o in tflite_ops(tmp_path / "p.tflite") if o.kind == op.kind] == [op.key]


def test_a_device_table_of_older_probes_is_refused_for_ops_now_probed_in_context(targets_copy):
    """A device table profiled before hard-swish, GELU and a SiLU's MUL were probed in context priced them alone: a
    model with such an op is refused with the command that re-profiles, not priced by the old probes."""
    from edge_sparse.latency.predict import resolve

    old = LatencyTable({"source": "measured", "runtime": "tflite", "runtime_version": "x", "threads": 4,
                        "date": "2026-01-01"}, {"p50": 0.01, "p90": 0.011}, {})
    old.save(targets_copy / "rpi4.latency.json")
    p = targets_copy / "rpi4.toml"
    p.write_text('latency_table = "rpi4.latency.json"\n\n' + p.read_text())
    with pytest.raises(EdgeSparseError, match=r"profiled with probes of version 1.*hardswish.*re-profile: make profile "
                                              r"TARGET=rpi4"):
        resolve(load_target("rpi4"), *_tiny("tiny_mbv3"))


def test_profile_refuses_emulated_and_wrong_thread_timings():
    from edge_sparse.latency.device import table_from_run

    t = load_target("rpi4")
    suite = {"probes": [{"name": "overhead", "key": "x"}]}
    base = {"format": "edge_sparse.probe_timings/1", "threads": 4, "timings": {"overhead": {"p50": 1, "p90": 1}}}
    with pytest.raises(EdgeSparseError, match="emulation"):
        table_from_run(suite, {**base, "emulated": True}, t, "pi")
    with pytest.raises(EdgeSparseError, match="used 2 threads"):
        table_from_run(suite, {**base, "threads": 2}, t, "pi")
    with pytest.raises(EdgeSparseError, match="not a bench.py --probes result"):
        table_from_run(suite, {"threads": 4}, t, "pi")


def test_extract_ops_tells_a_model_that_does_not_run_from_one_fx_cannot_trace():
    """A graph that traces but does not run (wrong channel count) is named as that, not as a tracing failure; a
    forward no tracer can follow (a loop over a tensor's value) is named with its line."""
    class Loop(torch.nn.Module):
        def forward(self, x):
            for _ in range(x.sum().long()):
                x = x + 1
            return x

    m = _GroupedBlock().eval()
    with pytest.raises(EdgeSparseError, match=r"_GroupedBlock does not run on a \(3, 16, 16\) input \(fx node stem_0: "
                                              r"RuntimeError: .*expected input.*3 channels"):
        extract_ops(m, torch.zeros(1, 3, 16, 16))
    with pytest.raises(EdgeSparseError, match=r"cannot trace Loop with torch.fx .*`for _ in range\(x.sum"):
        extract_ops(Loop(), torch.zeros(1, 3, 16, 16))


class _ShapeBranches(torch.nn.Module):
    """What timm's MobileViT and EfficientViT blocks do: branch on the input's shape, read `x.device`, unpack
    `x.shape`, reshape by it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.pw = torch.nn.Conv2d(16, 16, 1)

    def forward(self, x):
        if x.shape[-1] % 2:  # plain fx: "symbolically traced variables cannot be used as inputs to control flow"
            x = torch.nn.functional.pad(x, (0, 1, 0, 1))
        y = torch.relu(self.conv(x))
        if y.device.type != "meta" and len(y) == 1:
            b, c, h, w = y.shape
            y = y.reshape(b, c, h * w).reshape(b, c, h, w)
        return self.pw(y).mean((2, 3))


def test_a_forward_that_branches_on_its_shape_is_priced_on_the_path_its_input_takes():
    from torch.fx import symbolic_trace
    from torch.fx.proxy import TraceError

    m = _ShapeBranches().eval()
    with pytest.raises(TraceError):
        symbolic_trace(m)
    ops = extract_ops(m, torch.zeros(1, 3, 16, 16))
    assert [(o.kind, o.cin, o.cout, o.h) for o in ops if o.kind in ("conv", "pad")] == [
        ("conv", 3, 16, 16), ("conv", 16, 16, 16)], ops
    with pytest.raises(EdgeSparseError, match=r"node pad \(call_function pad\): no latency class"):
        extract_ops(m, torch.zeros(1, 3, 15, 15))  # an odd image takes the other branch, whose F.pad is not priced
