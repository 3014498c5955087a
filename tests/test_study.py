"""The sparsity study: input checks, the Pareto front and the written verdict."""
from __future__ import annotations

import pytest

from edge_sparse.errors import EdgeSparseError
from edge_sparse.study import _check, pareto, verdict


def test_bad_sparsity_lists():
    with pytest.raises(EdgeSparseError, match="at least one value"):
        _check([])
    with pytest.raises(EdgeSparseError, match="would remove every channel"):
        _check([0.3, 1.0])
    assert _check([0.5, 0, 0.5]) == [0.0, 0.5]


def test_pareto_front():
    rows = [{"lat": 1.0, "acc": 90}, {"lat": 0.5, "acc": 89}, {"lat": 0.6, "acc": 88}, {"lat": 0.2, "acc": 70}]
    assert [r["lat"] for r in pareto(rows, "lat", "acc")] == [0.2, 0.5, 1.0]


def _row(s, acc, pgd):
    return {"sparsity": s, "acc_int8_tflite": acc, "pgd_fp32_eps2": pgd}


def test_verdict_words_follow_the_numbers():
    assert verdict([_row(0, 90, 50), _row(0.5, 89.8, 55)], ["2"]).startswith("**TRUE.**")
    assert verdict([_row(0, 90, 50), _row(0.5, 89.8, 45)], ["2"]).startswith("**FALSE.**")
    assert verdict([_row(0, 90, 50), _row(0.5, 85.0, 55)], ["2"]).startswith("**MIXED.**")  # robust but not accurate
    mixed = verdict([_row(0, 90, 50), _row(0.3, 90, 55), _row(0.6, 90, 40)], ["2"])
    assert mixed.startswith("**MIXED.**") and "(0.3, '2', 5)" in mixed and "(0.6, '2', -10)" in mixed
