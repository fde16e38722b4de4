"""MOSMOS's metrics, found here: the pre-training metrics defined in this module (ignite metrics for loss,
image->report retrieval recall@k and tag mAP, gathered over all ranks' validation samples under
torch.distributed, and the pointing game of the tag attention where organ masks are known), and the segmentation
metrics of :mod:`mosmos_components.evaluation` (per-case, per-class Dice and HD95 in mm, reports, the Wilcoxon
test), imported here under the same names."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

from mosmos_components.distributed import gather_lists
from mosmos_components.evaluation import SegmentationReport, case_scores, summarize, wilcoxon_test

__all__ = [
    "SegmentationReport",
    "case_scores",
    "summarize",
    "wilcoxon_test",
    "PretrainLossMetric",
    "RetrievalRecall",
    "TagMeanAP",
    "PointingGame",
    "average_precision",
    "retrieval_recall",
    "pointing_game",
    "tag_map_correlation",
    "mean_pairwise_cosine",
]


def _pred_label(output: dict):
    return output["pred"], output["label"]


def report_ranks(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """For each image, how many other reports are at least as similar to it (cosine) as its own: 0 when its own
    report comes first. Ties count against the image (identical captions do not make a hit)."""
    sim = F.normalize(image_features.float(), dim=-1) @ F.normalize(text_features.float(), dim=-1).t()
    return (sim >= sim.diagonal().unsqueeze(1)).sum(dim=1) - 1


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, k: int) -> float:
    """Fraction of images whose own report is among the ``k`` most similar reports (cosine; ties count against
    the image: :func:`report_ranks`)."""
    return (report_ranks(image_features, text_features) < k).float().mean().item()


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

    def __init__(
        self, loss_fn: Callable, component: str = "loss", output_transform: Callable = _pred_label, device="cpu"
    ) -> None:
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


def pointing_game(attention: torch.Tensor, mask: torch.Tensor, tag_values: dict[int, int]) -> tuple[int, int, float]:
    """Pointing game of one image: for each tag ``k`` present (``tag_values``: tag index -> mask value, for the
    tags its report names), is the peak of its attention map, bilinearly upsampled to the mask, inside the
    organ? ``attention`` (K, g0, g1) in the image tensor's axis order, ``mask`` (S0, S1) in the same order.

    Returns (hits, pairs scored, chance): ``chance`` sums each scored organ's area fraction, the expected hits of a
    peak placed uniformly at random (a flat map). Tags whose organ is not in the mask are not scored.
    """
    hits = pairs = 0
    chance = 0.0
    for k, value in tag_values.items():
        organ = mask == value
        if not bool(organ.any()):
            continue
        up = F.interpolate(
            attention[k][None, None].float(), size=tuple(mask.shape), mode="bilinear", align_corners=False
        )[0, 0]
        peak = int(up.flatten().argmax())
        hits += int(organ.flatten()[peak])
        pairs += 1
        chance += float(organ.float().mean())
    return hits, pairs, chance


def mean_pairwise_cosine(x: torch.Tensor) -> float:
    """Mean cosine similarity between the different rows of ``x`` (R, D) (the diagonal left out)."""
    x = F.normalize(x.float(), dim=-1)
    c = x @ x.t()
    r = c.shape[0]
    return float((c.sum() - c.diagonal().sum()) / max(r * (r - 1), 1))


def tag_map_correlation(attention: torch.Tensor) -> float:
    """Mean Pearson correlation between the attention maps of different tags on one image (``attention`` (K, N)):
    near 1 when every tag looks at the same place (maps that are not tag-specific), near 0 for unrelated maps."""
    a = attention.float()
    return mean_pairwise_cosine(a - a.mean(dim=-1, keepdim=True))


class PointingGame:
    """Evaluator handler: does each tag's attention peak inside that organ? (the demo data's organ masks).

    For every validation item with a ``"mask"`` (an organ-mask PNG whose values are listed in the ``labels.json``
    beside it, as :func:`mosmos_components.data.synthetic.write_roco` writes them) and every tag its report names, the
    peak of the tag decoder's last cross-attention map (upsampled to the mask) is a hit when it lies inside the
    organ. At each evaluation it puts ``pointing_acc`` (hits / pairs), ``pointing_chance`` (the same for a flat
    map: the mean organ area fraction) and ``attention_tag_corr`` (:func:`tag_map_correlation`, averaged over the
    images: are the maps tag-specific?) and ``patch_token_cosine`` (mean cosine similarity between the spatial
    features of one image: near 1, every position carries the same content) into ``engine.state.metrics``;
    attach it before the handlers that save or
    log the metrics. Items without a mask (real ROCO) are skipped, and with none the metrics are not set.

    Args:
        network: the pre-training network (``encode_image``, ``tag_queries``, ``decoder``, ``tags``).
        items: the validation data dicts (``image``, ``tags``, ``mask``).
        transform: the validation preprocessing of the image (the mask follows the image's axis order).
        device: where to run the network.
        batch_size: images per forward pass.
    """

    def __init__(
        self, network: torch.nn.Module, items: list[dict], transform: Callable, device="cpu", batch_size: int = 32
    ) -> None:
        self.network, self.transform, self.device = network, transform, torch.device(device)
        self.batch_size = batch_size
        self.items = [d for d in items if d.get("mask")]
        self._cache: list[tuple[torch.Tensor, torch.Tensor, dict[int, int]]] | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _prepared(self, tags: list[str]):
        if self._cache is None:
            import json
            from pathlib import Path

            import numpy as np
            from PIL import Image

            self._cache, names = [], {}
            for d in self.items:
                folder = Path(d["mask"]).parent
                if folder not in names:
                    labels = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
                    names[folder] = {name: int(v) for v, name in labels.items()}
                image = torch.as_tensor(self.transform(dict(d))["image"]).float()
                with Image.open(d["mask"]) as im:  # PIL (rows, cols) -> MONAI's PIL reader order (cols, rows)
                    mask = torch.as_tensor(np.asarray(im).T.copy())
                values = {k: names[folder][t] for k, t in enumerate(tags) if d["tags"][k] and t in names[folder]}
                self._cache.append((image, mask, values))
        return self._cache

    def __call__(self, engine) -> None:
        net = getattr(self.network, "module", self.network)
        if not self.items or not hasattr(net, "tag_queries"):  # no masks, or a network without tag attention (SSL)
            return
        was_training = net.training
        net.eval()
        hits = pairs = 0
        chance = 0.0
        corr, sims = [], []
        prepared = self._prepared(list(net.tags))
        with torch.no_grad():
            queries = net.tag_queries()
            for start in range(0, len(prepared), self.batch_size):
                chunk = prepared[start : start + self.batch_size]
                images = torch.stack([image for image, _, _ in chunk]).to(self.device)
                _, s, grid = net.encode_image(images)
                _, attn = net.decoder(queries, s, grid, output="attention")
                attn, s = attn.cpu(), s.cpu()
                for i, (_, mask, values) in enumerate(chunk):
                    h, p, c = pointing_game(attn[i].reshape(-1, *grid), mask, values)
                    hits, pairs, chance = hits + h, pairs + p, chance + c
                    corr.append(tag_map_correlation(attn[i]))
                    sims.append(mean_pairwise_cosine(s[i]))
        net.train(was_training)
        if pairs:
            engine.state.metrics["pointing_acc"] = hits / pairs
            engine.state.metrics["pointing_chance"] = chance / pairs
            engine.state.metrics["attention_tag_corr"] = float(sum(corr) / len(corr))
            engine.state.metrics["patch_token_cosine"] = float(sum(sims) / len(sims))


class ClassQuerySeparation:
    """Evaluator handler: how distinguishable the class embeddings of some segmentation label sets are through the
    pre-trained prompt and text tower (:func:`mosmos_components.transfer.class_query_separation`). At each
    evaluation it puts ``query_cosine_<set>`` (the mean cosine between two different classes of the set) and, per
    named pair, ``query_cosine_<a>_vs_<b>`` into ``engine.state.metrics``; near 1 the classes collapse to one query.

    Args:
        network: the pre-training network.
        name_sets: label sets by name, e.g. ``{"acdc": ["background", "right ventricle", ...]}``.
        pairs: pairs of names whose own cosine is reported (e.g. right and left ventricle).
        at_start: also measure them when the handler is attached — before training starts, or resumes, the
            network's initial state — and report those as ``<key>_at_start`` at every evaluation, the baseline
            that Gate 1 asks a pre-training to beat (the measurement changes no weight and draws no random number).
    """

    def __init__(
        self, network: torch.nn.Module, name_sets: dict, pairs: list | None = None, at_start: bool = False
    ) -> None:
        self.network, self.name_sets, self.pairs = network, dict(name_sets), [tuple(p) for p in pairs or []]
        self.at_start, self.start = at_start, {}

    def attach(self, engine) -> None:
        from ignite.engine import Events

        if self.at_start:
            self.start = {f"{k}_at_start": v for k, v in self.measure().items()}
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    @torch.no_grad()
    def measure(self) -> dict[str, float]:
        """The separation of each name set (mean cosine) and named pair (their cosine) for the network as it is."""
        from mosmos_components.transfer import class_query_separation

        net = getattr(self.network, "module", self.network)
        if not hasattr(net, "tag_queries"):  # a network without a text side (SSL)
            return {}
        out = {
            f"query_cosine_{n}": class_query_separation(net, list(v))["mean_cosine"] for n, v in self.name_sets.items()
        }
        for a, b in self.pairs:
            out[f"query_cosine_{a}_vs_{b}".replace(" ", "_")] = class_query_separation(net, [a, b])["max_cosine"]
        return out

    def __call__(self, engine) -> None:
        engine.state.metrics.update(self.measure())
        engine.state.metrics.update(self.start)


def _bootstrap_interval(statistic: Callable, n: int, n_resamples: int, seed: int, confidence: float) -> list[float]:
    """Percentile bootstrap interval (scipy's) of ``statistic(indices)`` over ``n`` units resampled with
    replacement."""
    import numpy as np
    from scipy.stats import bootstrap

    res = bootstrap(
        (np.arange(n),),
        lambda idx: statistic(torch.as_tensor(idx)),
        vectorized=False,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        random_state=seed,
    )
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def retrieval_and_tag_report(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    tag_scores: torch.Tensor,
    tag_targets: torch.Tensor,
    ks: tuple[int, ...] = (1, 5, 10),
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Held-out pre-training figures with their uncertainty: image->report recall@k (each image against every
    report of the set) and the tag mAP (over tags with a positive), each with a bootstrap confidence interval
    over the pairs (percentile, ``n_resamples``) and its chance level (recall@k: k / N; mAP: the mean prevalence
    of the scored tags, what random scores reach on average).

    >>> f = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    >>> r = retrieval_and_tag_report(f, f, torch.randn(20, 3), torch.randint(0, 2, (20, 3)), ks=(1,), n_resamples=50)
    >>> r["recall_at_1"]["value"], r["recall_at_1"]["chance"]
    (1.0, 0.05)
    """
    n = image_features.shape[0]
    rank = report_ranks(image_features, text_features)
    out: dict = {"n_pairs": n}
    for k in ks:
        hits = (rank < k).float()
        out[f"recall_at_{k}"] = {
            "value": float(hits.mean()),
            "ci95": _bootstrap_interval(lambda idx, h=hits: float(h[idx].mean()), n, n_resamples, seed, confidence),
            "chance": min(1.0, k / n),
        }
    targets = tag_targets.float()

    def tag_map(idx: torch.Tensor) -> float:
        ap = average_precision(tag_scores[idx].float(), targets[idx])
        return float(ap[~ap.isnan()].mean()) if (~ap.isnan()).any() else float("nan")

    scored = targets.sum(0) > 0
    out["tag_map"] = {
        "value": tag_map(torch.arange(n)),
        "ci95": _bootstrap_interval(tag_map, n, n_resamples, seed, confidence),
        "chance": float(targets[:, scored].mean(0).mean()) if scored.any() else float("nan"),
        "tags_scored": int(scored.sum()),
    }
    return out


class HeldOutReport:
    """Evaluator handler for a pre-training test: collects every pair's features and tag scores and, at the end,
    writes :func:`retrieval_and_tag_report` to ``<output_dir>/held_out_report.json`` and puts each figure's CI
    bounds into ``engine.state.metrics`` (``recall_at_1_ci_low``, ...).

    Args:
        output_dir: where the JSON goes.
        n_resamples: bootstrap resamples.
    """

    def __init__(self, output_dir: str, n_resamples: int = 2000) -> None:
        self.output_dir, self.n_resamples = output_dir, n_resamples
        self._clear()

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self._clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _clear(self) -> None:
        self._a, self._b, self._s, self._t = [], [], [], []

    def _collect(self, engine) -> None:
        pred, label = _pred_label(engine.state.output)
        self._a.append(pred["image_features"].detach().float().cpu())
        self._b.append(pred["text_features"].detach().float().cpu())
        self._s.append(pred["tag_logits"].detach().float().cpu())
        self._t.append(label.detach().cpu())

    def _write(self, engine) -> None:
        import json
        from pathlib import Path

        from mosmos_components.checkpoint import atomic_json_save

        parts = [torch.cat(gather_lists(x)) for x in (self._a, self._b, self._s, self._t)]
        report = retrieval_and_tag_report(*parts, n_resamples=self.n_resamples)
        for key, value in report.items():
            if isinstance(value, dict) and "ci95" in value:
                engine.state.metrics[f"{key}_ci_low"], engine.state.metrics[f"{key}_ci_high"] = value["ci95"]
        atomic_json_save(report, Path(self.output_dir) / "held_out_report.json")
        engine.logger.info("held-out pre-training figures:\n%s", json.dumps(report, indent=1))
