"""benchmarks/zoo.py's table counts the builds that did not ship apart, by kind, as issue 32 asks (budget
unreachable, an op with no latency class, a failed export or gate, a bug of ours); no model is built here."""
from __future__ import annotations

from benchmarks import zoo


def _row(model: str, budget: str, why: str) -> dict:
    return {"model": model, "budget": budget, "shipped": False, "why_not": why, "build_s": 1.0, "commit": "x"}


def test_refusals_are_counted_apart_by_kind():
    rows = [
        _row("ghostnet_100", "rpi4:2x", "error: no width allocation meets target 'rpi4-2x': budget p90 <= 1.253 ms"),
        _row("convnext_tiny", "rpi4:2x", "error: node permute in module features.0.1 (LayerNorm2d): no latency class"),
        _row("squeezenet1_1", "host:1.5x", "error: the int8 .tflite converted from x does not load with XNNPACK (...)"),
        _row("shufflenet_v2_x0_5", "host:1.5x", "ZeroDivisionError: integer division or modulo by zero"),
        _row("resnet8", "host:1.5x", "error: no width allocation meets target"),  # registered, not one of the twenty
    ]
    c = zoo.claim({"results": rows})
    got = {k: v for k, v in c["refused"].items() if v}
    assert got == {"budget unreachable at the narrowest widths": ["ghostnet_100 rpi4:2x"],
                   "an op or module the latency model has no class for": ["convnext_tiny rpi4:2x"],
                   "export or a gate failed": ["squeezenet1_1 host:1.5x"],
                   "a bug of ours (a traceback, a latency table without the width asked)": ["shufflenet_v2_x0_5 host:1.5x"]}
    md = zoo.markdown({"results": rows})
    assert "**budget unreachable at the narrowest widths**: 1 (ghostnet_100 rpi4:2x)" in md
    assert "0 of the 20 zoo models shipped at both budgets" in md


def _host(model: str, pred: float, meas: float, again: float) -> dict:
    return {"model": model, "budget": "host:1.5x", "shipped": True, "predicted_p90_ms": pred, "host_measured_p90_ms": meas,
            "host_measured_p90_ms_again": again, "host_measured_p90_ms_at_build": pred, "build_s": 1.0,
            "sparsity": 0.5, "dense_macs": 2e6, "macs": 1e6, "dense_params": 2e4, "params": 1e4, "budget_ms": 1.5,
            "int8_agreement_pct": 99.0, "tflite_int8_acc": 50.0, "torch_fp32_acc": 50.0,
            "retimed": {"date": "2026-12-06 09:22", "rounds": 100, "runs": 1000, "with_probes": 3,
                        "load_avg_1min": [0.1, 0.2]}}


def test_the_retime_reports_how_often_the_machine_agrees_with_itself():
    """A prediction cannot be judged more finely than the same timing repeats: the claim counts the bundles whose
    second interleaved timing is within ±10 % of the first, beside the predictions within ±10 %."""
    rows = [_host("lcnet_050", 1.0, 1.0, 1.05), _host("tinynet_e", 1.0, 1.0, 1.25), _host("mnasnet0_5", 1.3, 1.0, 0.95)]
    c = zoo.claim({"results": rows})
    assert (c["host_within_10"], c["host_in_run"]) == (2, 3)
    assert (c["again_within_10"], c["again"]) == (2, 3)
    md = zoo.markdown({"results": rows})
    assert "the machine against itself (the same run again, right after): 2 of 3 within ±10 %" in md
    assert "interleaved with the 3 probes of their ops, 1000 invokes each in 100 rounds" in md
