"""Ignite metrics for pre-training validation: loss, image->report retrieval recall@k, tag mAP (over all
ranks' validation samples under torch.distributed)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

from mosmos_components.distributed import gather_lists

__all__ = ["PretrainLossMetric", "RetrievalRecall", "TagMeanAP", "average_precision", "retrieval_recall"]


def _pred_label(output: dict):
    return output["pred"], output["label"]


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, k: int) -> float:
    """Fraction of images whose own report is among the ``k`` most similar reports (cosine)."""
    sim = F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t()
    topk = sim.topk(min(k, sim.shape[1]), dim=1).indices
    return (topk == torch.arange(sim.shape[0]).unsqueeze(1)).any(dim=1).float().mean().item()


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-column average precision of ``scores`` (N, K) against binary ``targets``; NaN for columns without
    positives."""
    order = scores.argsort(dim=0, descending=True)
    t = targets.gather(0, order).float()
    hits = t.cumsum(0)
    precision = hits / torch.arange(1, t.shape[0] + 1, dtype=torch.float32).unsqueeze(1)
    n_pos = t.sum(0)
    ap = (precision * t).sum(0) / n_pos.clamp(min=1)
    ap[n_pos == 0] = float("nan")
    return ap


class PretrainLossMetric(Metric):
    """Sample-weighted mean of a loss (or one of its components) over an epoch.

    Args:
        loss_fn: e.g. :class:`~mosmos_components.losses.MosmosPretrainLoss`, called as ``loss_fn(pred, label)``.
        component: ``"loss"`` (the total) or a key the loss writes into ``pred`` (``"loss_irc"``, ``"loss_mlr"``).
    """

    def __init__(self, loss_fn: Callable, component: str = "loss", output_transform: Callable = _pred_label,
                 device="cpu") -> None:
        self.loss_fn, self.component = loss_fn, component
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=torch.float64)
        self._n = torch.tensor(0, dtype=torch.long)

    @reinit__is_reduced
    def update(self, output) -> None:
        pred, label = output
        with torch.no_grad():
            total = self.loss_fn(pred, label)
        value = total if self.component == "loss" else pred[self.component]
        b = label.shape[0]
        self._sum += float(value) * b
        self._n += b

    @sync_all_reduce("_sum", "_n")
    def compute(self) -> float:
        return (self._sum / self._n.clamp(min=1)).item()


class _Accumulating(Metric):
    def __init__(self, output_transform: Callable = _pred_label, device="cpu") -> None:
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._a: list[torch.Tensor] = []
        self._b: list[torch.Tensor] = []


class RetrievalRecall(_Accumulating):
    """Image->report recall@k over the whole validation set (every image against every report)."""

    def __init__(self, k: int = 1, output_transform: Callable = _pred_label, device="cpu") -> None:
        self.k = k
        super().__init__(output_transform, device)

    @reinit__is_reduced
    def update(self, output) -> None:
        pred, _ = output
        self._a.append(pred["image_features"].detach().float().cpu())
        self._b.append(pred["text_features"].detach().float().cpu())

    def compute(self) -> float:
        return retrieval_recall(torch.cat(gather_lists(self._a)), torch.cat(gather_lists(self._b)), self.k)


class TagMeanAP(_Accumulating):
    """Mean over tags (with at least one positive) of the average precision of the tag logits."""

    @reinit__is_reduced
    def update(self, output) -> None:
        pred, label = output
        self._a.append(pred["tag_logits"].detach().float().cpu())
        self._b.append(label.detach().cpu())

    def compute(self) -> float:
        ap = average_precision(torch.cat(gather_lists(self._a)), torch.cat(gather_lists(self._b)))
        return ap[~ap.isnan()].mean().item() if (~ap.isnan()).any() else float("nan")
