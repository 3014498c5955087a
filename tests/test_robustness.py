"""Attacks on a tiny model trained on real data: eps 0 is clean accuracy, accuracy does not rise with
eps, PGD is at least as strong as FGSM (else gradient masking), perturbations respect eps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_sparse import models
from edge_sparse.config import TrainConfig
from edge_sparse.errors import EdgeSparseError
from edge_sparse.robustness import attack_uint8, robust_accuracy
from edge_sparse.train import fit


@pytest.fixture(scope="module")
def trained(fmnist_small):
    torch.manual_seed(0)
    m = models.create("tiny_resnet", in_channels=1, num_classes=10, input_size=28)
    fit(m, fmnist_small, TrainConfig(epochs=6, batch_size=64, lr=0.05, augment="none", sparsity_reg="none"), progress=False)
    return m.eval()


def test_attack_sanity(trained, fmnist_small):
    s = fmnist_small
    x, y = s.test.images(range(200)), s.test.y[:200]
    r = robust_accuracy(trained, x, y, [0, 2, 8, 16], mean=s.mean, std=s.std)
    clean = r["clean"]["torch"]
    assert clean > 50
    assert r["eps"]["0"]["pgd"] == clean and r["eps"]["0"]["fgsm"] == clean
    pgd = [r["eps"][e]["pgd"] for e in ("0", "2", "8", "16")]
    assert all(a >= b for a, b in zip(pgd, pgd[1:])) and pgd[-1] < clean - 10
    for e in ("2", "8", "16"):
        assert r["eps"][e]["pgd"] <= r["eps"][e]["fgsm"] + 0.5  # PGD >= FGSM in strength


def test_perturbation_respects_eps(trained, fmnist_small):
    s = fmnist_small
    x, y = s.test.images(range(50)), s.test.y[:50]
    adv = attack_uint8(trained, x, y, eps=4, attack="pgd", steps=5, mean=s.mean, std=s.std)
    assert adv.dtype == np.uint8 and adv.shape == x.shape
    d = np.abs(adv.astype(int) - x.astype(int))
    assert d.max() <= 4 and d.max() > 0


def test_transfer_hook(trained, fmnist_small):
    from edge_sparse.data import to_tensor

    s = fmnist_small
    x, y = s.test.images(range(60)), s.test.y[:60]
    same = lambda xx: trained(to_tensor(xx, s.mean, s.std)).detach().numpy()  # noqa: E731
    r = robust_accuracy(trained, x, y, [4], mean=s.mean, std=s.std, transfer_to={"copy": same})
    assert r["clean"]["copy"] == r["clean"]["torch"]
    assert r["eps"]["4"]["copy_pgd_transfer"] == r["eps"]["4"]["pgd"]


@pytest.mark.parametrize("eps", [-1, 300, "8"])
def test_bad_eps(trained, fmnist_small, eps):
    s = fmnist_small
    with pytest.raises(EdgeSparseError, match="epsilon"):
        robust_accuracy(trained, s.test.images(range(4)), s.test.y[:4], [eps], mean=s.mean, std=s.std)


def test_empty_eps_list(trained, fmnist_small):
    s = fmnist_small
    with pytest.raises(EdgeSparseError, match="at least one epsilon"):
        robust_accuracy(trained, s.test.images(range(4)), s.test.y[:4], [], mean=s.mean, std=s.std)
