"""es.prune on tiny real models (registered like the real ones) and on torchvision-style nets:
physically smaller, masked == shrunk, replayable record, kernel-friendly widths, clear errors."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import edge_sparse as es
from edge_sparse import models
from edge_sparse.errors import EdgeSparseError
from edge_sparse.pruning import count, profile

TINY = ["tiny_resnet", "tiny_mobilenet", "tiny_vgg"]
ALL = models.MODELS.names()


def _model(name, c=3, size=32):
    torch.manual_seed(0)
    m = models.create(name, in_channels=c, num_classes=10, input_size=size)
    # non-trivial BN statistics and scales, as after training
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.weight.data.uniform_(0.0, 1.0)
            bn.bias.data.uniform_(-0.2, 0.2)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("criterion", ["bn_scale", "l1"])
def test_prune_shrinks_every_model(name, criterion):
    m = _model(name)
    x = torch.randn(4, 3, 32, 32)
    before = [p.clone() for p in m.parameters()]
    res = es.prune(m, x, sparsity=0.5, criterion=criterion, round_to=None)
    assert res.params < res.dense_params and res.macs < res.dense_macs
    assert res.shrink_max_abs_diff <= 1e-4
    # a plain module: no hooks, no masks, really smaller tensors
    assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in res.model.modules())
    assert not any("mask" in n for n, _ in res.model.named_buffers())
    assert sum(p.numel() for p in res.model.parameters()) == res.params
    # classifier outputs and input channels are never pruned
    assert res.model(x).shape == (4, 10)
    first = next(l for l in res.layers)
    assert first.in_channels == 3
    # the caller's model is untouched
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    # the record is JSON and replays on the dense model to the same network
    rec = json.loads(json.dumps(res.record))
    again = es.replay(m, rec)
    assert torch.allclose(again.eval()(x), res.model(x), atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_masked_equals_shrunk_on_real_images(name, fmnist_small):
    from edge_sparse.data import to_tensor

    m = _model(name, c=1, size=28)
    x = to_tensor(fmnist_small.val.images(range(16)), fmnist_small.mean, fmnist_small.std)
    res = es.prune(m, x[:1], sparsity=0.4, criterion="bn_scale", check_batch=x)
    assert res.shrink_max_abs_diff <= 1e-4


def test_round_to_and_monotone_macs():
    m = _model("resnet8", c=1, size=28)
    x = torch.zeros(1, 1, 28, 28)
    macs = []
    for s in (0.1, 0.3, 0.5, 0.7):
        res = es.prune(m, x, sparsity=s, round_to=8)
        for l in res.layers:
            if l.name != "fc":
                assert l.out_channels % 8 == 0, (l.name, l.out_channels)
        macs.append(res.macs)
    assert macs == sorted(macs, reverse=True) and macs[0] > macs[-1]


def test_taylor_needs_data_and_works():
    m = _model("tiny_vgg", c=1, size=28)
    x = torch.randn(8, 1, 28, 28)
    y = torch.randint(0, 10, (8,))
    with pytest.raises(EdgeSparseError, match="taylor"):
        es.prune(m, x, sparsity=0.3, criterion="taylor")
    res = es.prune(m, x, sparsity=0.3, criterion="taylor", taylor_batch=(x, y))
    assert res.macs < res.dense_macs
    assert all(p.grad is None for p in res.model.parameters())


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "half"])
def test_bad_sparsity(bad):
    with pytest.raises(EdgeSparseError, match=r"\[0, 1\)"):
        es.prune(_model("tiny_vgg"), torch.zeros(1, 3, 32, 32), sparsity=bad)


def test_bad_criterion_layer_ratio_and_untraceable():
    m = _model("tiny_vgg")
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(KeyError, match="valid: bn_scale, l1, l2, taylor"):
        es.prune(m, x, criterion="magic")
    with pytest.raises(EdgeSparseError, match="would remove every channel"):
        es.prune(m, x, sparsity=0.2, layer_sparsity={"features.0": 1.0})
    with pytest.raises(EdgeSparseError, match=r"does not run on .*5, 32, 32.*3 channels, but got 5"):
        es.prune(m, torch.zeros(1, 5, 32, 32), sparsity=0.3)  # wrong input: the model cannot run it


def test_record_for_another_model_is_refused():
    a = _model("tiny_resnet")
    res = es.prune(a, torch.zeros(1, 3, 32, 32), sparsity=0.5)
    with pytest.raises(EdgeSparseError, match="does not fit"):
        es.replay(_model("tiny_vgg"), res.record)


def test_save_load_without_pickles(tmp_path):
    m = _model("tiny_mobilenet", c=1, size=28)
    x = torch.randn(2, 1, 28, 28)
    res = es.prune(m, x, sparsity=0.4)
    kw = {"in_channels": 1, "num_classes": 10, "input_size": 28}
    models.save(res.model, tmp_path / "m", arch="tiny_mobilenet", kwargs=kw, record=res.record)
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"model.json", "model.safetensors"}
    back, spec = models.load(tmp_path / "m")
    assert torch.allclose(back(x), res.model(x), atol=1e-6)
    spec_text = (tmp_path / "m" / "model.json").read_text()
    (tmp_path / "m" / "model.json").write_text(spec_text.replace("tiny_mobilenet", "tiny_vgg"))
    with pytest.raises(EdgeSparseError):
        models.load(tmp_path / "m")


def test_table_and_profile():
    m = _model("tiny_resnet")
    res = es.prune(m, torch.zeros(1, 3, 32, 32), sparsity=0.5)
    t = res.table()
    assert "layer1.0.conv1" in t and "total" in t and f"{res.dense_macs:,}" in t
    assert sum(l.macs for l in profile(res.model, torch.zeros(1, 3, 32, 32))) == res.macs
    assert count(res.model, torch.zeros(1, 3, 32, 32)) == (res.params, res.macs)


def test_registry_errors():
    with pytest.raises(KeyError, match="valid: .*resnet8"):
        models.MODELS.get("resnet9000")
    with pytest.raises(KeyError, match="already registered"):
        models.MODELS.register("resnet8")(lambda **k: None)


class UserNet(nn.Module):
    """A user-brought (unregistered) CNN with a concat of two branches, a depthwise conv and an add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                               nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32))
        self.skip = nn.Sequential(nn.Conv2d(32, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        self.head = nn.Linear(32, 7)

    def forward(self, x):
        x = self.stem(x)
        cat = torch.cat([self.a(x), self.b(x)], 1)
        y = torch.relu(self.mix(cat) + self.skip(cat))
        return self.head(y.mean((2, 3)))


def test_user_model_with_concat_depthwise_add():
    torch.manual_seed(0)
    m = UserNet().eval()
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.weight.data.uniform_(0, 1)
            bn.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 3, 24, 24)
    res = es.prune(m, x, sparsity=0.5, criterion="bn_scale", round_to=4)
    assert res.macs < res.dense_macs and res.shrink_max_abs_diff <= 1e-4
    assert res.model(x).shape == (3, 7)
    assert torch.allclose(es.replay(m, res.record)(x), res.model(x), atol=1e-5)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_models(arch):
    tv = pytest.importorskip("torchvision", reason="torchvision has no build for the pinned torch 2.13 here")
    m = getattr(tv.models, arch)(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    res = es.prune(m, x, sparsity=0.5, criterion="l2", round_to=8)
    assert res.macs < 0.7 * res.dense_macs and res.shrink_max_abs_diff <= 1e-4


def test_iterative_prune_then_finetune_steps():
    m = _model("resnet8", c=1, size=28)
    x = torch.randn(4, 1, 28, 28)
    seen = []

    def between(model, step):  # a stand-in fine-tune: perturb weights in place, as training would
        seen.append((step, sum(p.numel() for p in model.parameters())))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))

    res = es.prune(m, x, sparsity=0.5, criterion="l2", round_to=8, iterative_steps=3, between_steps=between)
    assert [s for s, _ in seen] == [0, 1] and seen[0][1] > seen[1][1] > res.params  # shrinks step by step
    assert res.record["iterative_steps"] == 3 and res.shrink_max_abs_diff <= 1e-4
    assert any("=>" in line for line in res.record["plan"])  # coupled channels, printed like a plan
    # the record replays the whole sequence on the dense model (weights differ: they were fine-tuned)
    assert [l.out_channels for l in profile(es.replay(m, res.record), x)] == [l.out_channels for l in res.layers]
    with pytest.raises(EdgeSparseError, match="iterative_steps"):
        es.prune(m, x, sparsity=0.5, iterative_steps=0)


def test_mobile_blocks_prune_coupled_and_shuffles_are_kept_and_listed():
    """SE: the excite conv's outputs are coupled with the depthwise channels they gate, so both shrink together.
    Grouped convs keep their group count. A channel shuffle permutes channels Torch-Pruning's graph cannot follow:
    the layers on its sides are kept whole and listed in the record, the rest still shrinks."""
    x = torch.randn(4, 3, 32, 32)
    mb = es.prune(_model("tiny_mbv3"), x, sparsity=0.5, round_to=8)
    blk = mb.model.features[2].block
    assert blk[3].out_channels == blk[6].fc2.out_channels == blk[6].fc1.in_channels < 32  # dw = SE gate = SE input
    assert mb.record["unprunable"] == [] and mb.shrink_max_abs_diff <= 1e-4
    gr = es.prune(_model("tiny_grouped"), x, sparsity=0.5, round_to=8)
    convs = [m for m in gr.model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert [m.groups for m in convs] == [2, 4] and all(m.in_channels % m.groups == 0 for m in convs)
    sh = es.prune(_model("tiny_shufflenet"), x, sparsity=0.5, round_to=None)
    kept = {n for u in sh.record["unprunable"] for n in u["layers"]}
    assert {"conv.0", "units.0.left.2"} <= kept and all("channel shuffle" in u["why"] for u in sh.record["unprunable"])
    assert sh.macs < sh.dense_macs and sh.shrink_max_abs_diff <= 1e-4
    assert all(c % 2 == 0 for c in (m.out_channels for m in sh.model.modules() if isinstance(m, nn.Conv2d)))


def test_bn_scale_ranking_does_not_read_a_renormalised_batchnorm():
    """The stem's BatchNorm is coupled to the first depthwise BatchNorm, which re-normalises it: a channel the
    depthwise BatchNorm has switched off ranks last however large its stem gamma."""
    import torch_pruning as tp
    from edge_sparse.pruning import bn_scale_importance, renormalized_batchnorms

    torch.manual_seed(0)
    m = models.create("tiny_mbv3", in_channels=1, num_classes=10, input_size=28).eval()
    stem_bn, dw_bn = m.features[0][1], m.features[1].block[1]
    with torch.no_grad():
        stem_bn.weight.fill_(1.0)
        stem_bn.weight[3] = 50.0
        dw_bn.weight.copy_(torch.linspace(0.5, 1.5, 16))
        dw_bn.weight[3] = 0.0
    x = torch.zeros(1, 1, 28, 28)
    skip = renormalized_batchnorms(m, x)
    assert stem_bn in skip and dw_bn not in skip
    dg = tp.DependencyGraph().build_dependency(m, example_inputs=x)
    group = dg.get_pruning_group(m.features[0][0], tp.prune_conv_out_channels, idxs=list(range(16)))
    assert int(bn_scale_importance(skip, normalizer=None)(group).argmin()) == 3
    assert int(bn_scale_importance((), normalizer=None)(group).argmax()) == 3  # read naively: the most important
