"""MOSMOS losses (docs/method.md §3-5): pre-training (L_irc, L_mlr), fine-tuning (eq. 17, with the PTA branch) and
the SSL baseline's proxy tasks.

Functional cores first, ``nn.Module`` wrappers after (as in ``monai.losses``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks import one_hot
from torch import nn

__all__ = [
    "image_report_contrastive_loss",
    "weak_assume_negative_loss",
    "WeakAssumeNegativeLoss",
    "MosmosPretrainLoss",
    "MosmosSegLoss",
    "marginal_logits",
    "SSLProxyLoss",
]


def image_report_contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """L_irc (eq. 3-5): symmetric InfoNCE over the batch.

    ``s_ij = logit_scale * <g_i/|g_i|, t_j/|t_j|>``; ``L = (CE(s, diag) + CE(s^T, diag)) / 2``.
    ``image_features``, ``text_features``: (B, d); pair i is (image i, report i).
    """
    if image_features.shape != text_features.shape:
        raise ValueError(f"image {tuple(image_features.shape)} and text {tuple(text_features.shape)} features differ")
    s = logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t()
    target = torch.arange(s.shape[0], device=s.device)
    return (F.cross_entropy(s, target) + F.cross_entropy(s.t(), target)) / 2


def weak_assume_negative_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float | None = None) -> torch.Tensor:
    """L_mlr (eq. 10), "weak assume negative" (Cole et al. 2021).

    ``-(1/(B K)) sum_ik [ y log p + gamma (1 - y) log(1 - p) ]`` with ``p = sigmoid(logits)`` and
    ``gamma = 1 / (K - 1)`` by default. ``logits``, ``targets``: (B, K), targets in {0, 1}.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    k = logits.shape[-1]
    if gamma is None:
        gamma = 1.0 / max(k - 1, 1)
    targets = targets.to(logits.dtype)
    # log(1 - sigmoid(x)) = logsigmoid(-x): stable for large |x|
    loss = targets * F.logsigmoid(logits) + gamma * (1 - targets) * F.logsigmoid(-logits)
    return -loss.mean()


class WeakAssumeNegativeLoss(nn.Module):
    """Module form of :func:`weak_assume_negative_loss`; ``gamma=None`` means ``1/(K-1)``."""

    def __init__(self, gamma: float | None = None) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, logits, targets):
        return weak_assume_negative_loss(logits, targets, self.gamma)


class MosmosPretrainLoss(nn.Module):
    """L_pre = L_irc + L_mlr (eq. 11) on the output dict of :class:`~mosmos_components.networks.MosmosPretrainNet`.

    Args:
        use_irc: ``False`` for the "without L_irc" ablation.
        use_mlr: ``False`` drops the tag loss (CLIP-only pre-training).
        gamma: WAN weight of assumed negatives (``None``: 1/(K-1)).

    The components are written back into the prediction dict as ``loss_irc`` / ``loss_mlr`` (detached) so that
    metrics and loggers can report them.
    """

    def __init__(self, use_irc: bool = True, use_mlr: bool = True, gamma: float | None = None) -> None:
        super().__init__()
        if not (use_irc or use_mlr):
            raise ValueError("MosmosPretrainLoss needs at least one of use_irc / use_mlr")
        self.use_irc, self.use_mlr = use_irc, use_mlr
        self.mlr = WeakAssumeNegativeLoss(gamma)

    def forward(self, pred: dict, tags: torch.Tensor) -> torch.Tensor:
        total = pred["tag_logits"].new_zeros(())
        irc = mlr = total.detach()
        if self.use_irc:
            if pred.get("text_features") is None:
                raise ValueError("L_irc needs report features: call the network with the report tokens")
            irc = image_report_contrastive_loss(pred["image_features"], pred["text_features"], pred["logit_scale"])
            total = total + irc
        if self.use_mlr:
            mlr = self.mlr(pred["tag_logits"], tags)
            total = total + mlr
        pred["loss_irc"], pred["loss_mlr"] = irc.detach(), mlr.detach()
        return total


class MosmosSegLoss(nn.Module):
    """Fine-tuning loss (eq. 14-17): ``L = DiceCE(Y, Y_pred) + lambda * DiceCE(Y, Y_pta)``.

    Args:
        lambda_pta: weight of the pixel-tag-attention branch (0.8).
        sigmoid: multi-label (overlapping regions, BraTS) instead of softmax classes.
        kwargs: passed to ``monai.losses.DiceCELoss`` (e.g. ``include_background``).

    ``input``: the network's training output, either ``(B, K, *spatial)`` logits (no PTA), or with PTA a
    :class:`~mosmos_components.networks.base.TrainingOutput` (any pair ``(segmentation, pta)`` of such logits; a
    ``(B, 2, K, *spatial)`` tensor with the two stacked, as earlier networks returned, is read too); ``target``:
    ``(B, 1, *spatial)`` class indices (softmax) or ``(B, K, *spatial)`` binary maps (sigmoid), or ``(target,
    class_mask)`` with a ``(B, K)`` 0/1 mask of the classes annotated in each case: a class a case does not annotate
    (AMOS MRI: bladder, prostate/uterus) is merged into background for that case (marginal loss), so predicting it
    there is not penalised.

    Each branch is ``monai.losses.DiceCELoss``'s own Dice and cross-entropy terms; with softmax the one-hot target
    they share is made once, not once per branch (the same values).
    """

    def __init__(self, lambda_pta: float = 0.8, sigmoid: bool = False, **kwargs) -> None:
        super().__init__()
        from monai.losses import DiceCELoss

        self.lambda_pta = lambda_pta
        self.sigmoid = sigmoid
        # softmax: the target is one-hot encoded here (once for both branches), so the loss itself does not
        self.dice_ce = DiceCELoss(sigmoid=True, **kwargs) if sigmoid else DiceCELoss(softmax=True, **kwargs)

    def _one(self, logits: torch.Tensor, target: torch.Tensor, onehot: torch.Tensor | None, class_mask) -> torch.Tensor:
        if class_mask is not None:
            logits = marginal_logits(logits, class_mask)
        if onehot is None:
            return self.dice_ce(logits, target)
        loss = self.dice_ce
        return loss.lambda_dice * loss.dice(logits, onehot) + loss.lambda_ce * loss.ce(logits, target)

    def forward(self, input, target) -> torch.Tensor:
        class_mask = None
        if isinstance(target, (tuple, list)):
            target, class_mask = target
        if isinstance(input, (tuple, list)):
            if len(input) != 2:
                raise ValueError(f"MosmosSegLoss reads (segmentation, pta) logits, got {len(input)} tensors")
            branches = tuple(input)
        elif input.dim() == target.dim() + 1:  # stacked (segmentation, PTA)
            branches = tuple(input.unbind(1))
        else:
            branches = (input,)
        if branches[0].dim() != target.dim():
            raise ValueError(
                f"logits {tuple(branches[0].shape)} and target {tuple(target.shape)} differ in dimensions: the "
                "target is (B, 1, *spatial) class indices or (B, K, *spatial) maps"
            )
        onehot = None
        if not self.sigmoid:
            if target.shape[1] != 1:
                raise ValueError(f"softmax segmentation loss: target {tuple(target.shape)} is not (B, 1, *spatial)")
            onehot = one_hot(target, branches[0].shape[1])
        total = self._one(branches[0], target, onehot, class_mask)
        if len(branches) == 2:
            total = total + self.lambda_pta * self._one(branches[1], target, onehot, class_mask)
        return total


def marginal_logits(logits: torch.Tensor, class_mask: torch.Tensor) -> torch.Tensor:
    """Merge the classes a case does not annotate into its background: ``logit_bg <- logsumexp(logit_bg,
    logit_missing)`` and the missing classes' logits to a large negative value, so the softmax gives background
    their summed probability. ``logits`` (B, K, *spatial), ``class_mask`` (B, K) with 0 for missing classes."""
    missing = (class_mask.to(logits.device) < 0.5).view(*class_mask.shape, *([1] * (logits.dim() - 2)))
    if not bool(missing.any()):
        return logits
    missing = missing.expand_as(logits)
    only_missing = logits.masked_fill(~missing, float("-inf"))
    background = torch.logsumexp(torch.cat([logits[:, :1], only_missing], dim=1), dim=1, keepdim=True)
    out = logits.masked_fill(missing, -1e4)
    return torch.cat([background, out[:, 1:]], dim=1)


class SSLProxyLoss(nn.Module):
    """``L = L_inpaint (L1 on the whole image) + L_rot (cross-entropy) + L_contrast (InfoNCE between the two
    views of each image, temperature ``tau``)``, Swin UNETR's sum with unit weights. Called as
    ``loss(pred, label)``; ``label`` (the tags) is ignored. Writes ``loss_inpaint``, ``loss_rotation``,
    ``loss_contrast`` (detached) back into ``pred`` for the metrics."""

    def __init__(self, tau: float = 0.5) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, pred: dict, label: torch.Tensor | None = None) -> torch.Tensor:
        rec = F.l1_loss(pred["reconstruction"], pred["target"])
        rot = F.cross_entropy(pred["rotation_logits"].flatten(0, 1), pred["rotation"].flatten())
        z = F.normalize(pred["embedding"].transpose(0, 1).flatten(0, 1), dim=-1)  # view 1 of every image, then view 2
        b = z.shape[0] // 2
        sim = z @ z.t() / self.tau
        sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
        partner = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
        con = F.cross_entropy(sim, partner)
        pred["loss_inpaint"], pred["loss_rotation"], pred["loss_contrast"] = rec.detach(), rot.detach(), con.detach()
        return rec + rot + con
