import math

import pytest
import torch

from mosmos_components.losses import MosmosPretrainLoss, image_report_contrastive_loss, weak_assume_negative_loss


def test_irc_by_hand():
    # two orthogonal unit features matched with themselves: s = scale * I
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised inside
    scale = 2.0
    # each row (and column) softmax over [2, 0]: -log(e^2 / (e^2 + 1))
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert image_report_contrastive_loss(g, t, scale).item() == pytest.approx(expected, rel=1e-6)


def test_irc_asymmetric_by_hand():
    g = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # s = [[1, 0], [1, 0]]; i2r: rows -> -log(e/(e+1)), -log(1/(e+1)); r2i: columns [1,1] and [0,0] -> log 2 each
    e = math.e
    i2r = (-math.log(e / (e + 1)) - math.log(1 / (e + 1))) / 2
    r2i = math.log(2)
    assert image_report_contrastive_loss(g, t, 1.0).item() == pytest.approx((i2r + r2i) / 2, rel=1e-6)


def test_wan_by_hand():
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    y = torch.tensor([[1.0, 0.0, 0.0]])
    gamma = 1 / 2  # 1/(K-1), K = 3
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    terms = [math.log(sig(0.0)), gamma * math.log(1 - sig(2.0)), gamma * math.log(1 - sig(-1.0))]
    assert weak_assume_negative_loss(logits, y).item() == pytest.approx(-sum(terms) / 3, rel=1e-6)
    assert weak_assume_negative_loss(logits, y, gamma=1.0).item() > weak_assume_negative_loss(logits, y).item()


def test_wan_is_stable_for_large_logits():
    v = weak_assume_negative_loss(torch.tensor([[100.0, -100.0]]), torch.tensor([[1.0, 0.0]]))
    assert torch.isfinite(v) and v.item() < 1e-6


def test_pretrain_loss_sum_and_ablation():
    torch.manual_seed(0)
    pred = {
        "image_features": torch.randn(4, 8),
        "text_features": torch.randn(4, 8),
        "tag_logits": torch.randn(4, 5),
        "logit_scale": torch.tensor(14.0),
    }
    y = (torch.rand(4, 5) > 0.5).float()
    total = MosmosPretrainLoss()(pred, y)
    assert total.item() == pytest.approx((pred["loss_irc"] + pred["loss_mlr"]).item(), rel=1e-6)
    only_mlr = MosmosPretrainLoss(use_irc=False)(dict(pred, text_features=None), y)
    assert only_mlr.item() == pytest.approx(weak_assume_negative_loss(pred["tag_logits"], y).item())
    with pytest.raises(ValueError, match="report features"):
        MosmosPretrainLoss()(dict(pred, text_features=None), y)
