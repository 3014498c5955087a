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
