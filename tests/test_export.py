"""Export on a tiny real model trained on real data: ONNX fp32/int8 and TFLite fp32/int8 compute
what torch computes (numbers, with gates), lint catches what it promises, and nothing is fetched."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import edge_sparse as es
from edge_sparse import data, models, verify
from edge_sparse.config import TrainConfig
from edge_sparse.errors import EdgeSparseError, GateError
from edge_sparse.export import lint, metadata, onnx as eonnx, tflite as etflite
from edge_sparse.pruning import profile
from edge_sparse.train import fit, predict


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fmnist_small):
    """tiny_resnet trained 6 epochs on a real slice, pruned 40 %, exported to all four artifacts."""
    torch.manual_seed(0)
    s = fmnist_small
    dense = models.create("tiny_resnet", in_channels=1, num_classes=10, input_size=28)
    fit(dense, s, TrainConfig(epochs=6, batch_size=64, lr=0.05, augment="none"), progress=False)
    res = es.prune(dense, torch.zeros(1, 1, 28, 28), sparsity=0.4, round_to=4)
    model = res.model.eval()
    d = tmp_path_factory.mktemp("export")
    calib = s.train.images(range(200))
    nchw = data.normalize_np(calib, s.mean, s.std, "NCHW")
    nhwc = data.normalize_np(calib, s.mean, s.std, "NHWC")
    ops = eonnx.export_fp32(model, (1, 28, 28), d / "model_fp32.onnx")
    qops = eonnx.quantize_int8(d / "model_fp32.onnx", nchw, d / "model.onnx")
    etflite.export(d / "model_fp32.onnx", nhwc, d / "model_fp32.tflite", d / "model.tflite")
    x, y = s.test.images(range(300)), s.test.y[:300]
    ref = predict(model, data.ImageSet(x, y), s.mean, s.std)
    return {"dir": d, "model": model, "dense": dense, "ops": ops, "qops": qops, "x": x, "y": y, "ref": ref, "s": s,
            "nhwc": nhwc, "nchw": nchw}


def test_onnx_graph_shape(exported):
    ops = exported["ops"]
    assert "BatchNormalization" not in ops  # folded into Conv
    assert ops.get("GlobalAveragePool") == 1 and "Transpose" not in ops and "Identity" not in ops
    mp = onnx.load(str(exported["dir"] / "model_fp32.onnx"))
    onnx.checker.check_model(mp, full_check=True)
    assert mp.opset_import[0].version == eonnx.OPSET
    q = exported["qops"]
    assert q.get("QuantizeLinear", 0) > 0 and q.get("DequantizeLinear", 0) > q["QuantizeLinear"]


def test_parity_numbers_and_gates(exported):
    d, s = exported["dir"], exported["s"]
    arts = {"model_fp32.onnx": ("float", d / "model_fp32.onnx"), "model.onnx": ("int8", d / "model.onnx"),
            "model_fp32.tflite": ("float", d / "model_fp32.tflite"), "model.tflite": ("int8", d / "model.tflite")}
    res = verify.check_all(arts, exported["ref"], exported["x"], exported["y"], s.mean, s.std, enforce=False)
    for name, p in res.items():
        assert p["n"] == 300 and 0 <= p["max_abs_diff"]
        if p["kind"] == "float":
            assert p["agreement"] >= 99.9 and p["max_abs_diff"] < 1e-3, (name, p)
        else:
            assert p["agreement"] >= 97.0 and p["max_abs_diff"] > 0, (name, p)  # int8 really quantises
    # a gate failure says by how much
    bad = verify.parity("x.tflite", "int8", -exported["ref"], exported["ref"], exported["y"])
    assert any("short by" in f for f in bad.failures())
    with pytest.raises(GateError, match="agreement"):
        verify.check_all({"model.tflite": ("int8", d / "model.tflite")}, np.roll(exported["ref"], 1, axis=1),
                         exported["x"], exported["y"], s.mean, s.std)


def test_tflite_is_full_integer_with_int8_io(exported):
    rep = lint.check(exported["dir"] / "model.tflite", profile(exported["model"], torch.zeros(1, 1, 28, 28)))
    assert rep.input_dtype == "INT8" and rep.output_dtype == "INT8"
    assert not rep.custom_ops and not rep.float_ops
    assert rep.ops.get("CONV_2D", 0) >= 5 and rep.ops.get("FULLY_CONNECTED") == 1
    it = verify.tflite_interpreter(exported["dir"] / "model.tflite")
    inp = it.get_input_details()[0]
    assert inp["dtype"] == np.int8 and tuple(inp["shape"]) == (1, 28, 28, 1) and inp["quantization"][0] > 0


def test_lint_catches_dense_widths_and_float_model(exported):
    dense_layers = profile(exported["dense"], torch.zeros(1, 1, 28, 28))
    with pytest.raises(GateError, match="channel counts differ"):
        lint.check(exported["dir"] / "model.tflite", dense_layers)
    with pytest.raises(GateError, match="INT8"):
        lint.check(exported["dir"] / "model_fp32.tflite", int8=True)
    assert not lint.check(exported["dir"] / "model_fp32.tflite", int8=False).problems(int8=False)


def test_layer_errors_are_numbers(exported):
    rows = verify.layer_errors(exported["dir"] / "model_fp32.onnx", exported["dir"] / "model.onnx", exported["nchw"][:8])
    assert rows and all(0 < r["rel_l2_error"] < 0.5 and 0.8 < r["cosine"] <= 1.0 + 1e-9 for r in rows)
    assert rows == sorted(rows, key=lambda r: -r["rel_l2_error"])


def test_metadata_round_trip_keeps_outputs(exported, tmp_path):
    src = (exported["dir"] / "model.tflite").read_bytes()
    meta = {"labels": list(exported["s"].classes), "input": {"mean": list(exported["s"].mean)}}
    out = tmp_path / "m.tflite"
    out.write_bytes(metadata.embed(src, meta))
    assert metadata.read(out.read_bytes()) == meta
    assert metadata.read(src) is None
    s = exported["s"]
    a = verify.run_tflite(exported["dir"] / "model.tflite", exported["x"][:50], s.mean, s.std)
    b = verify.run_tflite(out, exported["x"][:50], s.mean, s.std)
    assert np.array_equal(a, b)


def test_three_channel_conversion_is_offline(tmp_path, monkeypatch):
    """onnx2tf fetches a sample file for 3-channel inputs; we pre-seed it, so no request is made."""
    import requests

    calls = []

    def refuse(*a, **k):
        calls.append(a)
        raise requests.exceptions.ConnectionError("network unreachable (test)")

    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)
    torch.manual_seed(0)
    m = models.create("tiny_vgg", in_channels=3, num_classes=10, input_size=32).eval()
    eonnx.export_fp32(m, (3, 32, 32), tmp_path / "m.onnx")
    calib = np.random.default_rng(0).normal(size=(16, 32, 32, 3)).astype(np.float32)
    etflite.export(tmp_path / "m.onnx", calib, None, tmp_path / "m.tflite")
    assert (tmp_path / "m.tflite").stat().st_size > 1000 and not calls
    assert not any(p.name.endswith(".npy") for p in Path.cwd().iterdir())


class _DeadHead(torch.nn.Module):
    """A SqueezeNet-style head whose classifier conv + ReLU is 0 on every image (an untrained SqueezeNet after 3 QUICK
    epochs): its int8 output range is ~0, and XNNPACK refuses a requantisation scale over 256."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.MaxPool2d(3, 2, ceil_mode=True))
        self.classifier = torch.nn.Conv2d(16, 10, 1)
        torch.nn.init.constant_(self.classifier.bias, -100.0)

    def forward(self, x):
        return torch.relu(self.classifier(self.features(x))).mean((2, 3))


def test_a_dead_layer_exports_on_a_coarser_scale_instead_of_failing_xnnpack(tmp_path):
    """The dead layer's output (and what shares its scale) is quantised on a coarser grid, the model loads with
    XNNPACK, and it computes what torch does (zeros); the note names the tensors. A live model is left alone."""
    from ai_edge_litert.interpreter import Interpreter

    torch.manual_seed(0)
    m = _DeadHead().eval()
    eonnx.export_fp32(m, (3, 16, 16), tmp_path / "m.onnx")
    calib = np.random.default_rng(0).normal(size=(16, 16, 16, 3)).astype(np.float32)
    sm = etflite.onnx_to_saved_model(tmp_path / "m.onnx", calib, tmp_path / "sm")
    raw = etflite._convert_bytes(sm, calib)
    assert "requantisation scale is >= 256" in etflite._odd_scales(raw)  # the failure this test is about
    notes = etflite.convert(sm, tmp_path / "m.tflite", calib, correct_bias=False)
    assert any("dead layer" in n for n in notes), notes
    it = Interpreter(model_path=str(tmp_path / "m.tflite"), num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    s_in, z_in = inp["quantization"]
    it.set_tensor(inp["index"], np.clip(np.round(calib[:1] / s_in + z_in), -128, 127).astype(np.int8))
    it.invoke()
    s_out, z_out = out["quantization"]
    assert np.allclose((it.get_tensor(out["index"]).astype(np.float32) - z_out) * s_out, 0.0)
    assert m(torch.from_numpy(calib[:1]).permute(0, 3, 1, 2)).abs().max() == 0
    live = models.create("tiny_vgg", in_channels=3, num_classes=10, input_size=16).eval()
    eonnx.export_fp32(live, (3, 16, 16), tmp_path / "live.onnx")
    ok = etflite._convert_bytes(etflite.onnx_to_saved_model(tmp_path / "live.onnx", calib, tmp_path / "sm2"), calib)
    assert etflite._widen_dead_outputs(ok) == (ok, [])


def test_conversion_writes_only_the_saved_model_and_the_same_int8_bytes(tmp_path):
    """onnx2tf builds the Keras model and the export writes its SavedModel: none of onnx2tf's own .tflite files (each
    a slow from_keras_model conversion nobody read), and the int8 .tflite is byte for byte what onnx2tf's own save
    gave, tensor names aside (Keras numbers its layers per process; benchmarks/convert_speed.py times the two)."""
    from benchmarks.convert_speed import unnamed

    torch.manual_seed(0)
    m = models.create("tiny_vgg", in_channels=3, num_classes=10, input_size=16).eval()
    eonnx.export_fp32(m, (3, 16, 16), tmp_path / "m.onnx")
    calib = np.random.default_rng(0).normal(size=(16, 16, 16, 3)).astype(np.float32)
    out = {}
    for before in (False, True):
        sm, _ = etflite._onnx_to_saved_model(tmp_path / "m.onnx", calib, tmp_path / f"w{before}", onnx2tf_saves=before)
        assert bool(list(sm.glob("*.tflite"))) == before, sorted(p.name for p in sm.iterdir())
        out[before] = etflite._convert_bytes(sm, calib)
    assert unnamed(out[False]) == unnamed(out[True])


def test_conversions_in_one_process_give_the_same_bytes(tmp_path):
    """A build converts its timed finalists before it exports the shipped model: the shipped bytes must not depend on
    how many conversions came first. Keras numbers its layers per process, and without a fresh session every
    conversion got other tensor names and, from about the third, another order of a residual block's branches."""
    torch.manual_seed(0)
    m = models.create("tiny_resnet", in_channels=1, num_classes=10, input_size=16).eval()
    eonnx.export_fp32(m, (1, 16, 16), tmp_path / "m.onnx")
    calib = np.random.default_rng(0).normal(size=(8, 16, 16, 1)).astype(np.float32)
    got = [etflite._convert_bytes(etflite.onnx_to_saved_model(tmp_path / "m.onnx", calib, tmp_path / f"w{i}"), calib)
           for i in range(3)]
    assert got[0] == got[1] == got[2]


def test_bad_inputs(exported, tmp_path):
    d = exported["dir"]
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes((d / "model_fp32.onnx").read_bytes()[:500])
    with pytest.raises(EdgeSparseError, match="trunc.onnx: not a valid ONNX"):
        eonnx.quantize_int8(trunc, exported["nchw"], tmp_path / "q.onnx")
    with pytest.raises(EdgeSparseError, match="empty"):
        eonnx.quantize_int8(d / "model_fp32.onnx", np.zeros((0, 1, 28, 28), np.float32), tmp_path / "q.onnx")
    with pytest.raises(EdgeSparseError, match=r"shape \(3, 32, 32\)"):
        eonnx.quantize_int8(d / "model_fp32.onnx", np.zeros((4, 3, 32, 32), np.float32), tmp_path / "q.onnx")
    with pytest.raises(EdgeSparseError, match="float32"):
        eonnx.quantize_int8(d / "model_fp32.onnx", np.zeros((4, 1, 28, 28), np.uint8), tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()  # nothing half-written
    assert [p.name for p in tmp_path.iterdir()] == ["trunc.onnx"]
    with pytest.raises(EdgeSparseError, match="not a loadable .tflite"):
        tt = tmp_path / "t.tflite"
        tt.write_bytes((d / "model.tflite").read_bytes()[:300])
        verify.tflite_interpreter(tt)


class _Unexportable(torch.nn.Module):
    def forward(self, x):
        return torch.fft.fft2(x).real.flatten(1)


def test_unsupported_op_names_the_problem(tmp_path):
    with pytest.raises(EdgeSparseError) as e:
        eonnx.export_fp32(_Unexportable(), (1, 8, 8), tmp_path / "m.onnx")
    assert "fft" in str(e.value).lower()
    assert not (tmp_path / "m.onnx").exists()


def test_bias_correction_reads_the_fp32_reference_once_per_image_with_the_same_result(exported, tmp_path):
    """The fp32 reference's tensors are read once per image and kept (not once per layer and image); the corrected
    model is byte for byte the one that running the reference again per layer gives, with a cache too small for
    every image (the rest run again) as with none."""
    d = exported["dir"]
    sm = etflite.onnx_to_saved_model(d / "model_fp32.onnx", exported["nhwc"], tmp_path / "sm")
    int8, fp32 = etflite._convert_bytes(sm, exported["nhwc"]), etflite._convert_bytes(sm, None)
    x = exported["nhwc"][:40]
    for xnnpack in (True, False):
        cached, note = etflite._correct_biases(int8, fp32, x, xnnpack=xnnpack)
        again, _ = etflite._correct_biases(int8, fp32, x, cached_images=0, xnnpack=xnnpack)
        part, _ = etflite._correct_biases(int8, fp32, x, cached_images=17, xnnpack=xnnpack)
        assert "bias correction on" in note and cached != int8
        assert cached == again == part
    # each layer's shift is read off the int8 model cut after that layer (its ops after it cannot change it): the same
    # bytes as running the whole model for every layer, on the same (builtin) kernels
    whole, _ = etflite._correct_biases(int8, fp32, x, truncate=False)
    assert whole == cached


def test_bias_correction_runs_the_shipped_kernels_and_falls_back_where_xnnpack_refuses(exported, tmp_path, monkeypatch):
    """The cut models run through XNNPACK as the shipped model does (the int8 one and the fp32 reference with the
    compared tensors as its outputs); where the delegate refuses a graph the builtin kernels read the same tensors:
    then the bytes are those of the builtin-kernel correction."""
    import ai_edge_litert.interpreter as lit

    d = exported["dir"]
    sm = etflite.onnx_to_saved_model(d / "model_fp32.onnx", exported["nhwc"], tmp_path / "sm")
    int8, fp32 = etflite._convert_bytes(sm, exported["nhwc"]), etflite._convert_bytes(sm, None)
    x = exported["nhwc"][:24]
    kinds = []
    real_init = etflite._Runner.__init__

    def init(self, model, output_only=False):
        real_init(self, model, output_only)
        kinds.append((output_only, self.xnnpack))

    monkeypatch.setattr(etflite._Runner, "__init__", init)
    fast, _ = etflite._correct_biases(int8, fp32, x)
    assert kinds and all(k == (True, True) for k in kinds), kinds  # every runner (the reference too) on XNNPACK
    builtin, _ = etflite._correct_biases(int8, fp32, x, xnnpack=False)
    real = lit.Interpreter

    class Refusing(real):  # the delegate fails to prepare, as it did on a graph with a dead output
        def allocate_tensors(self):
            if not self._refuse_done:
                raise RuntimeError("failed to create XNNPACK runtime (refused here)")
            return super().allocate_tensors()

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self._refuse_done = "experimental_op_resolver_type" in kw

    monkeypatch.setattr(lit, "Interpreter", Refusing)
    kinds.clear()
    fell_back, note = etflite._correct_biases(int8, fp32, x)
    assert "bias correction on" in note and kinds and all(k == (True, False) for k in kinds), kinds
    assert fell_back == builtin and fast != int8
    monkeypatch.setattr(lit, "Interpreter", real)

    def failing_invoke(self, x1):  # the delegate prepared the graph, then fails while it runs
        if self.xnnpack:
            raise RuntimeError("XNNPACK invoke failed (here)")
        real_run(self, x1)

    real_run = etflite._Runner.run
    monkeypatch.setattr(etflite._Runner, "run", failing_invoke)
    again, note = etflite.correct_biases(int8, fp32, x)
    assert again == builtin and "builtin kernels, as XNNPACK failed (RuntimeError: XNNPACK invoke failed" in note


def test_finalists_are_timed_on_the_shipped_int8_graph_without_its_bias_correction(exported, tmp_path):
    """A finalist is timed on the int8 .tflite the build would ship less the bias correction: the same bytes as the
    uncorrected conversion (the correction changes int32 bias values only, which take XNNPACK no other time).
    One model timed twice in a process (the dense model in every round) is converted once."""
    from tensorflow.lite.tools import flatbuffer_utils as fu

    from edge_sparse.latency import device

    d = exported["dir"]
    sm = etflite.onnx_to_saved_model(d / "model_fp32.onnx", exported["nhwc"], tmp_path / "sm")
    etflite.convert(sm, tmp_path / "raw.tflite", exported["nhwc"], correct_bias=False)
    (tmp_path / "timed.tflite").write_bytes(etflite.int8_for_timing(d / "model_fp32.onnx", exported["nhwc"]))
    timed, raw = (fu.read_model(str(tmp_path / f"{k}.tflite")) for k in ("timed", "raw"))
    gt, gr = timed.subgraphs[0], raw.subgraphs[0]
    assert [timed.operatorCodes[o.opcodeIndex].builtinCode for o in gt.operators] == \
        [raw.operatorCodes[o.opcodeIndex].builtinCode for o in gr.operators]
    def tensors(g):  # (shape, scales) of every tensor; the converter numbers them in no fixed order
        return sorted((tuple(t.shape), tuple(np.round(t.quantization.scale, 9)) if t.quantization is not None
                       and t.quantization.scale is not None else ()) for t in g.tensors)

    assert tensors(gt) == tensors(gr)
    device._TIMED_EXPORTS.clear()
    m = exported["model"]
    got = device.time_models_on_device({"a": m, "b": m}, (1, 28, 28), exported["nhwc"][:8], None, 1, runs=20)
    assert set(got) == {"a", "b"} and all(v > 0 for v in got.values()) and len(device._TIMED_EXPORTS) == 1


def test_bias_correction_changes_only_biases_and_removes_the_mean_shift(exported, tmp_path):
    """The shipped int8 model's conv / FC biases are corrected on the calibration images: the same graph, scales
    and weights as the uncorrected conversion, only int32 bias buffers differ, and the mean int8 - fp32 shift of
    the logits on those images is smaller."""
    from tensorflow.lite.tools import flatbuffer_utils as fu

    d = exported["dir"]
    sm = etflite.onnx_to_saved_model(d / "model_fp32.onnx", exported["nhwc"], tmp_path / "sm")
    etflite.convert(sm, tmp_path / "raw.tflite", exported["nhwc"], correct_bias=False)
    etflite.convert(sm, tmp_path / "fixed.tflite", exported["nhwc"])  # as `export` makes the shipped model.tflite
    raw, fixed = (fu.read_model(str(tmp_path / f"{k}.tflite")) for k in ("raw", "fixed"))
    gr, gf = raw.subgraphs[0], fixed.subgraphs[0]
    assert [o.opcodeIndex for o in gr.operators] == [o.opcodeIndex for o in gf.operators]
    biases = {int(gf.tensors[o.inputs[2]].buffer) for o in gf.operators
              if fixed.operatorCodes[o.opcodeIndex].builtinCode in (etflite.CONV_2D, etflite.DEPTHWISE_CONV_2D, etflite.FULLY_CONNECTED)}
    changed = {i for i, (a, b) in enumerate(zip(raw.buffers, fixed.buffers))
               if (a.data is None) != (b.data is None) or (a.data is not None and bytes(a.data) != bytes(b.data))}
    assert changed and changed <= biases  # nothing but biases differ
    for tr, tf_ in zip(gr.tensors, gf.tensors):
        if tr.quantization is not None and tr.quantization.scale is not None:
            assert np.array_equal(tr.quantization.scale, tf_.quantization.scale)
    out = gf.tensors[gf.outputs[0]].name.decode()
    ref = etflite._Runner(etflite._convert_bytes(sm, None))
    shift = {k: np.abs(etflite._mean_shift((tmp_path / f"{k}.tflite").read_bytes(), ref, exported["nhwc"], out, False,
                                           output_only=True)).mean()  # as the shipped runtime (XNNPACK) computes it
             for k in ("raw", "fixed")}
    assert shift["fixed"] < shift["raw"]
