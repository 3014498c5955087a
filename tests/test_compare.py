"""`make compare`'s pieces on tiny real models: Torch-Pruning's recipe pruned to a latency budget, the width
multiplier re-initialised, bad budgets and methods refused, the table written from points."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import compare
from edge_sparse import models
from edge_sparse.latency.predict import resolve
from edge_sparse.pruning import count


def _dense():
    torch.manual_seed(0)
    return models.create("resnet8", in_channels=1, num_classes=10, input_size=28)


def test_tp_recipe_fits_the_budget_and_uses_it():
    dense, ex = _dense(), torch.zeros(1, 1, 28, 28)
    pr = resolve("rpi4", dense, ex)
    budget = pr.dense_p90_ms / 2.5
    grid = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    net, ratio, _ = compare._tp_prune(dense, ex, pr, budget, round_to=8, ratios=grid)
    p90 = pr.predict(net, ex)["p90"]
    assert p90 <= budget and grid[0] < ratio <= 0.9  # (above the first ratio: the check below has some to refuse)
    # the smallest ratio that fits, as a user raising the ratio would find it: every smaller one is over the budget
    # (not the model closest to the budget: upstream's round-down can empty a layer at a high ratio, TP then
    # leaves it whole, and a far harder-pruned model can land just under the budget)
    assert compare._tp_prune(dense, ex, pr, budget, round_to=8, ratios=grid[:grid.index(ratio)])[0] is None
    less, r_less, _ = compare._tp_prune(dense, ex, pr, p90 * 1.3, round_to=8, ratios=grid)
    assert r_less <= ratio and pr.predict(less, ex)["p90"] <= p90 * 1.3
    assert count(net, ex)[1] < count(dense, ex)[1]
    assert all(m.out_channels % 8 == 0 for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    # the dense model is not modified; an unreachable budget is (None, None), not an exception
    assert count(dense, ex)[1] == count(_dense(), ex)[1]
    none, r, (r_fast, p90_fast) = compare._tp_prune(dense, ex, pr, 1e-6, round_to=8, ratios=grid)
    assert (none, r) == (None, None) and r_fast in grid and p90_fast > 1e-6  # says how close it got


def test_width_multiplier_starts_from_fresh_weights():
    from edge_sparse.allocate import Allocator

    dense, ex = _dense(), torch.zeros(1, 1, 28, 28)
    pr = resolve("rpi4", dense, ex)
    al = Allocator(dense, ex, pr, 8)
    a, alpha = compare.width_multiplier(al, pr.dense_p90_ms / 2, 8)
    assert 0 < alpha < 1 and a.p90_ms <= pr.dense_p90_ms / 2
    assert all(a.keep[g.name] == max(8, round(alpha * g.size / 8) * 8) for g in al.groups)  # one factor everywhere
    wider = {g.name: min(g.size, max(8, round((alpha + 0.01) * g.size / 8) * 8)) for g in al.groups}
    assert wider == a.keep or al.price(wider)["p90"] > pr.dense_p90_ms / 2  # the largest alpha that fits
    net = al.apply(a).model
    before = net.conv1.weight.detach().clone()
    compare._reinit(net)
    assert not torch.equal(before, net.conv1.weight) and pr.predict(net, ex)["p90"] <= pr.dense_p90_ms / 2


def test_train_step_ratio_says_how_much_faster_a_narrow_net_trains():
    from edge_sparse import models

    big = models.create("resnet8", in_channels=1, num_classes=10, input_size=28)
    small = models.create("tiny_resnet", in_channels=1, num_classes=10, input_size=28)
    ex = torch.zeros(1, 1, 28, 28)
    assert compare.train_step_ratio(big, small, ex, batch_size=32, rounds=5, steps=2) > 1.2  # about 3-5x
    same = compare.train_step_ratio(big, big, ex, batch_size=32, rounds=5, steps=2)
    assert 0.5 < same < 2  # the same net against itself: about 1 (loose: the machine is shared)


@pytest.mark.parametrize("argv, msg", [
    (["--methods", "shipped,magic"], "--methods: unknown magic; valid: shipped, global, width, width-time, tp, dense"),
    (["--budgets", "host:1x"], "a relative budget is <target>:<k>x with k > 1"),
    (["--budgets", "pi9"], "--budgets 'pi9': not a target; valid:"),
    (["--seeds", "0,x"], "--seeds '0,x': expected comma-separated integers"),
    (["--model", "resnet9"], "--model 'resnet9': not a registered architecture; valid:"),
    (["--dataset", "mnist"], "--dataset 'mnist': not a dataset the build reads; valid: fashion-mnist, cifar10"),
    (["--dataset", "cifar10"], "--dataset cifar10 needs --data-dir"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "--data-dir /nonexistent/cifar: no such directory"),
    (["--device", "tpu"], "--device 'tpu': expected cpu or cuda"),
    (["--device", "cuda:7"], "--device 'cuda:7': "),  # no GPU here: "sees no CUDA device"; with one: "has 1 ..."
    (["--dataset", "cifar10", "--data-dir", "/tmp"], "data_batch_1 is missing"),  # another layout: before any build
])
def test_bad_arguments_are_one_line_errors(argv, msg, capsys):
    assert compare.main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


def test_a_relative_budget_on_any_target_is_a_profile_the_build_loads(tmp_path):
    from edge_sparse.targets import load_target

    d = compare._targets_dir(["rpi4:3x", "host:4x"], "resnet20", d=tmp_path)
    t = load_target(d / "rpi4-3x.toml")
    assert (t.name, t.latency_budget_ms, t.speedup, t.model_size_budget_kb) == ("rpi4-3x", None, 3.0, 4096)
    assert t.latency_model == load_target("rpi4").latency_model  # the same estimate, only the budget differs
    assert load_target(d / "host-4x.toml").speedup == 4.0
    d8 = compare._targets_dir(["rpi4"], d=tmp_path / "r8")  # the default model keeps the profiles' size budgets
    assert load_target(d8 / "rpi4.toml").model_size_budget_kb == load_target("rpi4").model_size_budget_kb
    dc = compare._targets_dir(["rpi4"], d=tmp_path / "c", dataset="folder")  # another dataset: its own classifier
    assert load_target(dc / "rpi4.toml").model_size_budget_kb == 4096


def test_markdown_states_every_method_and_the_paired_difference():
    pt = lambda m, acc, d=None: {"budget": "rpi4", "quick": False, "seed": 0, "method": m, "macs": 3e6,  # noqa: E731
                                 "predicted_p90_ms": 0.7, "host_p90_ms": 0.05, "recipe": f"{m} recipe",
                                 "top1": {"acc": acc, "ci95": [acc - 0.6, acc + 0.5], "n": 10000},
                                 **({"shipped_minus_this": {"diff_pt": d, "ci95_pt": [d - 0.3, d + 0.3]}} if d is not None else {})}
    md = compare.markdown([pt("shipped", 91.0), pt("global", 90.8, 0.2), pt("width", 90.5, 0.5), pt("width-time", 90.7, 0.3), pt("tp", 91.2, -0.2),
                           pt("dense", 91.6, -0.6)])
    for m in compare.METHODS:
        assert f"| rpi4 | {m} | 0 |" in md
    assert "+0.50 (+0.20…+0.80)" in md and "-0.20 (-0.50…+0.10)" in md and "`tp`: tp recipe" in md


def test_the_mean_difference_carries_its_interval_over_seeds_and_images():
    d = lambda x, h: {"diff_pt": x, "ci95_pt": [x - h, x + h]}  # noqa: E731
    assert compare.seed_interval([d(0.5, 0.4)]) == ""  # one seed: its paired interval is the only one
    # the seeds agree exactly: only the shared test images' sampling is left, however many seeds
    assert compare.seed_interval([d(0.3, 0.45)] * 5) == "[-0.15…+0.75]"
    # +0.44 / +0.15 / +0.19 (ResNet-20 at rpi4:3x), paired half-widths 0.44: seeds t(2) 4.303 * 0.157 / sqrt 3 = 0.39
    # and images 0.44 -> +/-0.59
    assert compare.seed_interval([d(0.44, 0.44), d(0.15, 0.43), d(0.19, 0.45)]) == "[-0.33…+0.85]"
    # a gain that is large against both excludes zero
    assert compare.seed_interval([d(0.9, 0.35), d(0.8, 0.35), d(1.0, 0.35)]) == "[+0.47…+1.33]"


def test_a_resumed_point_knows_which_rows_were_paired_against_another_shipped_model():
    row = lambda m, acc, **kw: {"key": "rpi4/seed0", "method": m, "top1": {"acc": acc}, **kw}  # noqa: E731
    old = [row("shipped", 92.45), row("global", 92.29), row("width", 92.44), row("tp", 92.67), row("dense", 92.24),
           {"key": "rpi4/seed0", "method": "width-time", "error": "no width fits"}, row("width", 91.0, key="rpi4/seed1")]
    same, other = {"sha": "a" * 16, "acc": 92.45}, {"sha": "b" * 16, "acc": 92.53}
    # rows from before the sha was recorded: the stored shipped row's top-1 names the model they were paired against
    assert compare.stale_rows(old, "rpi4/seed0", same) == set()
    assert compare.stale_rows(old, "rpi4/seed0", other) == {"global", "width", "tp"}  # not dense, not an error row
    assert compare.stale_rows(old, "rpi4/seed2", other) == set()  # no row yet: nothing was paired
    # rows that record the sha: a model with the same top-1 but other bytes is another model
    new = [dict(p, shipped_sha="a" * 16) for p in old]
    assert compare.stale_rows(new, "rpi4/seed0", same) == set()
    assert compare.stale_rows(new, "rpi4/seed0", {"sha": "c" * 16, "acc": 92.45}) == {"global", "width", "tp"}
    # each row by its own sha: one re-paired in a later run (sha b) is current while an older one (sha a) is not
    mixed = [dict(p, shipped_sha="b" * 16) if p["method"] in ("shipped", "width") else dict(p, shipped_sha="a" * 16)
             for p in old]
    assert compare.stale_rows(mixed, "rpi4/seed0", other) == {"global", "tp"}
    # a row without a sha kept beside a shipped row that has one was confirmed against that shipped model
    kept = [dict(p, shipped_sha="b" * 16) if p["method"] == "shipped" else p for p in old]
    assert compare.stale_rows(kept, "rpi4/seed0", other) == set()
    assert compare.stale_rows(kept, "rpi4/seed0", same) == {"global", "width", "tp"}


def test_rows_that_record_their_correct_images_pair_every_seed_at_once():
    import numpy as np

    from edge_sparse import verify

    n, y = 1000, np.zeros(1000, dtype=np.int64)
    right = np.tile([[5.0, 0.0]], (n, 1))

    def rows(wrong_sets):
        ships, peers, diffs = [], [], []
        for seed, wrong in enumerate(wrong_sets):
            peer = right.copy()
            peer[wrong] = [0.0, 5.0]
            ship = {"seed": seed, "top1": verify.top1(right, y), "correct": compare.pack_correct(right, y)}
            row = {"seed": seed, "top1": verify.top1(peer, y), "correct": compare.pack_correct(peer, y),
                   "shipped_minus_this": verify.paired_diff(right, peer, y)}
            ships.append(ship), peers.append(row), diffs.append(row["shipped_minus_this"])
        return diffs, list(zip(ships, peers))

    def half(interval):
        lo, hi = (float(v) for v in interval.strip("[]").split("…"))
        return (hi - lo) / 2

    same_diffs, same_pairs = rows([np.arange(50)] * 3)  # the peer misses the same 50 images on every seed
    apart_diffs, apart_pairs = rows([np.arange(50), np.arange(50, 100), np.arange(100, 150)])  # different ones
    assert compare.seed_interval(same_diffs, same_pairs) == compare.seed_interval(same_diffs)  # = the conservative end
    assert half(compare.seed_interval(apart_diffs, apart_pairs)) < 0.7 * half(compare.seed_interval(apart_diffs))
    assert compare.seed_interval(apart_diffs, apart_pairs[:2] + [(apart_pairs[2][0], {"seed": 2})]) == \
        compare.seed_interval(apart_diffs)  # one seed without its images: the conservative end for all


def test_a_quick_comparison_never_touches_the_committed_table(tmp_path, monkeypatch):
    """QUICK is a smoke run: its points, table and plot go under benchmarks/out/, never into compare.json,
    compare.png or BENCHMARKS.md. Every writer is intercepted: nothing outside tmp_path is written even if this fails."""
    import benchmarks
    from edge_sparse import _io

    written, seen = [], []

    def only_in_tmp(real):
        def write(path, *a, **kw):
            written.append(Path(path))
            assert tmp_path in Path(path).parents, f"a QUICK comparison wrote {path}"
            return real(path, *a, **kw)
        return write

    monkeypatch.setattr(compare, "OUT", tmp_path / "compare")
    monkeypatch.setattr(compare, "_targets_dir", lambda budgets, model, **kw: tmp_path / "targets")
    monkeypatch.setattr(_io, "write_json", only_in_tmp(_io.write_json))
    monkeypatch.setattr(_io, "write_text", only_in_tmp(_io.write_text))
    monkeypatch.setattr(compare, "plot", lambda points, path: only_in_tmp(lambda p: None)(path))
    monkeypatch.setattr(benchmarks, "splice", lambda md, tag, path=None: only_in_tmp(lambda p: None)(path or "BENCHMARKS.md"))
    monkeypatch.setattr(compare, "run_point", lambda budget, seed, quick, methods, points, save, model, data: seen.append(
        (budget, seed, quick)) or points.append({"key": "rpi4/seed0/quick", "budget": budget, "seed": seed, "quick": True,
                                                 "method": "shipped", "model": model, "error": "stopped"}) or save())
    assert compare.main(["--quick", "--write", "--seeds", "3,4"]) == 0
    assert seen == [("rpi4", 3, True)]  # one budget, one seed
    assert {p.name for p in written} == {"compare-quick.json", "compare-quick.md", "compare-quick.png"}
    assert "(QUICK)" in (tmp_path / "compare-quick.md").read_text()


def test_robustness_at_equal_latency_says_a_difference_only_when_the_interval_excludes_zero():
    from benchmarks import robust_peers

    st = {"budget": "rpi4", "n": 2000, "eps": [2.0], "steps": 10}

    def row(seed, method, pgd):
        return {"seed": seed, "method": method, "settings": st, "clean_fp32": 92.0, "clean_int8": 91.9,
                **{f"{a}_{p}_eps2": pgd for a in robust_peers.ATTACKS for p in ("fp32", "int8")}}

    clear = [row(s, "shipped", 60.0 + s) for s in range(3)] + [row(s, "width", 58.0 + s) for s in range(3)]
    by = {r["metric"]: r for r in robust_peers.summarize(clear, [2.0])}
    assert by["pgd_fp32_eps2"]["diff"] == pytest.approx(2.0) and by["pgd_fp32_eps2"]["verdict"] == "shipped more robust"
    assert by["clean_fp32"]["verdict"] == "no detectable difference"  # identical: a zero-width interval around 0
    noisy = [row(0, "shipped", 60.0), row(1, "shipped", 55.0), row(2, "shipped", 62.0),
             row(0, "width", 58.0), row(1, "width", 57.0), row(2, "width", 59.0)]
    got = {r["metric"]: r for r in robust_peers.summarize(noisy, [2.0])}["apgd-ce_int8_eps2"]
    assert got["lo"] < 0 < got["hi"] and got["verdict"] == "no detectable difference"
    md = robust_peers.markdown(noisy, robust_peers.summarize(noisy, [2.0]))
    assert "| apgd-ce_int8_eps2 |" in md and "robust-peers:begin" in md


@pytest.mark.slow
def test_a_comparison_runs_on_the_users_dataset(tmp_path, monkeypatch, cifar10_dir):
    """--dataset / --data-dir reach the build and the width peer: a QUICK comparison on real CIFAR-10 images
    (foolbox's 20, as a python-format directory) trains and exports the shipped, dense and width models for 3x32x32
    input, keys its rows by the dataset and its files (never mixed with Fashion-MNIST's) and labels its table so.
    Its work, cache, profiles and table stay in tmp_path."""
    from edge_sparse import verify

    real_targets = compare._targets_dir
    monkeypatch.setattr(compare, "OUT", tmp_path / "compare")
    monkeypatch.setattr(compare, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(compare, "_targets_dir",
                        lambda budgets, model, **kw: real_targets(budgets, model, d=tmp_path / "t", **kw))
    assert compare.main(["--quick", "--dataset", "cifar10", "--data-dir", str(cifar10_dir),
                         "--methods", "shipped,width,dense"]) == 0
    rows = json.loads((tmp_path / "compare-quick.json").read_text())
    assert {r["method"] for r in rows} == {"shipped", "width", "dense"}, [r.get("error") for r in rows]
    from edge_sparse.pipeline import data_fingerprint

    key = f"rpi4/seed0/quick/cifar10-{data_fingerprint('cifar10', cifar10_dir)[:8]}"
    assert {(r["key"], r["dataset"], r["device"]) for r in rows} == {(key, "cifar10", "cpu")}
    assert all(r["top1"]["n"] == 20 for r in rows)  # the directory's test batch, whole
    work = tmp_path / "compare" / key
    export, = (tmp_path / "cache").glob("export-*")  # the build's export stage: its shipped and dense int8 models
    for f in (work / "width" / "model.tflite", export / "model.tflite", export / "dense_int8.tflite"):
        assert list(verify.tflite_interpreter(f, 1).get_input_details()[0]["shape"]) == [1, 32, 32, 3], f
    assert "| rpi4 on cifar10 (QUICK) | width |" in (tmp_path / "compare-quick.md").read_text()
