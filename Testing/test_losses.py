"""CMSL/NSL/BCE: the paper's Eq. 4 values and the CosFace identity."""

import math

import pytest
import torch
from pytorch_metric_learning.losses import CosFaceLoss

from BreastCMSLLib.network.losses import bce_loss, cmsl_loss, nsl_loss


@pytest.mark.parametrize("label", [0, 1])
def test_cmsl_at_cos_zero_is_softplus_of_s_times_m(label):
    loss = cmsl_loss(torch.tensor([0.0]), torch.tensor([label]))
    assert loss.item() == pytest.approx(7.000911, abs=1e-6)
    assert loss.item() == pytest.approx(math.log1p(math.exp(20 * 0.35)), rel=1e-7)


@pytest.mark.parametrize(("cos", "label"), [(1.0, 1), (-1.0, 0)])
def test_cmsl_at_the_right_pole(cos, label):
    loss = cmsl_loss(torch.tensor([cos], dtype=torch.float64), torch.tensor([label]))
    assert loss.item() == pytest.approx(2.2603e-6, rel=1e-4)


def test_cmsl_is_stable_at_the_wrong_pole():
    loss = cmsl_loss(torch.tensor([-1.0, 1.0]), torch.tensor([1, 0]), s=200.0, reduction="none")
    assert torch.isfinite(loss).all()
    assert loss.tolist() == pytest.approx([200 * 1.35, 200 * 1.35], rel=1e-6)


def test_nsl_is_cmsl_without_margin_and_bce_is_plain_sigmoid_loss():
    cos = torch.linspace(-1, 1, 9)
    y = (torch.arange(9) % 2).float()
    assert torch.allclose(nsl_loss(cos, y, s=20.0), cmsl_loss(cos, y, s=20.0, m=0.0))
    p = torch.sigmoid(3 * cos)
    manual = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    assert bce_loss(3 * cos, y).item() == pytest.approx(manual.item(), rel=1e-6)


def test_cmsl_equals_two_class_cosface_with_opposite_weights():
    """sigma(s(cos - I(y)m)) vs softmax over [-w, +w] with scale s/2, margin 2m: the same loss."""
    torch.manual_seed(0)
    s, m, dim = 20.0, 0.35, 16
    x = torch.randn(32, dim, dtype=torch.float64)
    y = torch.randint(0, 2, (32,))
    w = torch.randn(dim, dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(x, w.unsqueeze(0), dim=1)
    ours = cmsl_loss(cos, y, s=s, m=m, reduction="mean")

    cosface = CosFaceLoss(num_classes=2, embedding_size=dim, margin=2 * m, scale=s / 2)
    cosface.W.data = torch.stack([-w, w], dim=1).to(cosface.W.dtype)
    theirs = cosface(x.to(cosface.W.dtype), y)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
