"""The sparsity study: input checks, intervals over seeds, the Pareto front and the written verdict."""
from __future__ import annotations

import numpy as np
import pytest

from edge_sparse.errors import EdgeSparseError
from edge_sparse.study import (_check, _pack, check_attacks, check_eps_list, interval, pareto, parse_seeds, summarize,
                               verdict)


def test_bad_sparsity_lists():
    with pytest.raises(EdgeSparseError, match="at least one value"):
        _check([])
    with pytest.raises(EdgeSparseError, match="would remove every channel"):
        _check([0.3, 1.0])
    assert _check([0.5, 0, 0.5]) == [0.0, 0.5]


def test_bad_seeds_attacks_and_eps_are_named():
    assert parse_seeds("2,0, 1,2") == [0, 1, 2]
    for bad, what in (("0,one", "'one'"), ("1.5", "'1.5'"), ("-1", "'-1'"), (",", "at least one")):
        with pytest.raises(EdgeSparseError, match=what):
            parse_seeds(bad)
    with pytest.raises(EdgeSparseError, match="unknown attack 'cw'; valid: pgd, apgd-ce"):
        check_attacks(["pgd", "cw"])
    assert check_attacks(["apgd-ce", "pgd", "apgd-ce"]) == ["pgd", "apgd-ce"]  # one canonical order
    for bad in (0.0, -2.0, 256.0):
        with pytest.raises(EdgeSparseError, match=r"outside \(0, 255\]"):
            check_eps_list([2.0, bad])
    assert check_eps_list([8, 2, 255]) == [2.0, 8.0, 255.0]


def test_interval_is_student_t_over_seeds():
    m, lo, hi = interval([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.303; sd 1, n 3 -> half-width 2.484
    assert m == 2.0 and hi - m == pytest.approx(4.303 * 1 / 3 ** 0.5, rel=1e-3) and m - lo == pytest.approx(hi - m)
    assert interval([5.0]) == (5.0, 5.0, 5.0)
    a, b = np.ones(400, bool), np.ones(400, bool)
    b[:40] = False  # this point is right on 40 images the dense one gets wrong: +10 pt, paired interval excludes 0
    m, lo, hi = interval([10.0], (a, b))
    assert m == 10.0 and 0 < lo < 10 < hi


def _row(s, seed, acc, pgd, n=100):
    correct = np.zeros(n, bool)
    correct[: int(round(pgd * n / 100))] = True
    return {"sparsity": s, "seed": seed, "macs": 1000 * (1 - s), "params": 10, "size_kb": 1.0, "predicted_p90_ms": 1 - s,
            "host_p50_ms_1t": 0.1, "int8_agreement": 99.5, "acc_int8": acc, "acc_fp32": acc, "robust_n": n,
            "robust": {"pgd_fp32_eps2": pgd, "pgd_int8_eps2": pgd}, "correct": {"pgd_fp32_eps2": _pack(correct),
                                                                              "pgd_int8_eps2": _pack(correct)}}


def _verdict(rows):
    return verdict(summarize(rows, ["pgd"], [2.0]), ["pgd"], [2.0])


def test_verdict_words_follow_the_intervals():
    up = [_row(0, s, 90, 50 + s) for s in range(3)] + [_row(0.5, s, 89.8, 55 + s) for s in range(3)]
    assert _verdict(up).startswith("**TRUE.**")
    down = [_row(0, s, 90, 50 + s) for s in range(3)] + [_row(0.5, s, 89.8, 45 + s) for s in range(3)]
    assert _verdict(down).startswith("**FALSE.**")
    # the same +5 pt mean, but one seed says -3: the t-interval over seeds spans zero -> no claim either way
    noisy = [_row(0, s, 90, 50) for s in range(3)] + [_row(0.5, 0, 90, 59), _row(0.5, 1, 90, 59), _row(0.5, 2, 90, 47)]
    v = _verdict(noisy)
    assert v.startswith("**NO DETECTABLE DIFFERENCE.**"), v
    s = summarize(noisy, ["pgd"], [2.0])["points"][1]["vs_dense"]["pgd_fp32_eps2"]
    assert s["mean"] == pytest.approx(5.0) and s["lo"] < 0 < s["hi"] and s["word"] == "no detectable difference"
    acc_lost = [_row(0, s, 90, 50 + s) for s in range(3)] + [_row(0.5, s, 85, 55 + s) for s in range(3)]
    assert _verdict(acc_lost).startswith("**MIXED.**")  # more robust, but not accurate
    both = ([_row(0, s, 90, 50 + s) for s in range(3)] + [_row(0.3, s, 90, 55 + s) for s in range(3)]
            + [_row(0.6, s, 90, 40 + s) for s in range(3)])
    v = _verdict(both)
    assert v.startswith("**MIXED.**") and "(0.3, 'pgd_fp32_eps2', 5.0)" in v and "(0.6, 'pgd_fp32_eps2', -10.0)" in v


def test_one_seed_uses_the_paired_images():
    rows = [_row(0, 0, 90, 50, n=2000), _row(0.5, 0, 90, 56, n=2000)]
    s = summarize(rows, ["pgd"], [2.0])["points"][1]["vs_dense"]["pgd_fp32_eps2"]
    assert s["mean"] == pytest.approx(6.0) and s["lo"] > 0 and s["word"] == "improves"


def test_pareto_front():
    rows = [{"lat": 1.0, "acc": 90}, {"lat": 0.5, "acc": 89}, {"lat": 0.6, "acc": 88}, {"lat": 0.2, "acc": 70}]
    assert [r["lat"] for r in pareto(rows, "lat", "acc")] == [0.2, 0.5, 1.0]
