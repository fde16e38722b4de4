"""Validation metrics under torch.distributed (two CPU processes, gloo): every rank sees a different shard of
the validation set, and the retrieval recall, tag mAP and per-class report must equal the single-process figures
over the whole set, with the report files written once."""

import csv

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ignite.engine import Engine
from monai.data import MetaTensor

from mosmos_components.distributed import gather_lists
from mosmos_components.evaluation import SegmentationReport
from mosmos_components.metrics import RetrievalRecall, TagMeanAP, average_precision, retrieval_recall

N, SPLIT = 7, 4  # rank 0 gets 4 samples, rank 1 gets 3: unequal shards


def _data():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(N, 8, generator=g), torch.randn(N, 8, generator=g)
    logits, tags = torch.randn(N, 5, generator=g), (torch.rand(N, 5, generator=g) > 0.5).long()
    label = torch.rand(N, 3, 6, 6, 6, generator=g) > 0.5
    pred = torch.rand(N, 3, 6, 6, 6, generator=g) > 0.5
    return img, txt, logits, tags, pred, label


def _case(label, i):
    return MetaTensor(label[i], meta={"filename_or_obj": f"/data/case{i}.nii.gz"})


def _worker(rank, init_file, out_dir, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        img, txt, logits, tags, pred, label = _data()
        part = slice(0, SPLIT) if rank == 0 else slice(SPLIT, N)
        assert gather_lists([rank] * (2 + rank)) == [0, 0, 1, 1, 1]
        recall, mean_ap = RetrievalRecall(k=2), TagMeanAP()
        out = {"image_features": img[part], "text_features": txt[part], "tag_logits": logits[part]}
        recall.update((out, tags[part]))
        mean_ap.update((out, tags[part]))

        report = SegmentationReport(["a", "b"], channels=[1, 2], output_dir=out_dir, hd95=False)
        engine = Engine(lambda e, b: None)
        report._reset(engine)
        idx = range(N)[part]
        engine.state.output = [{"pred": pred[i], "label": _case(label, i)} for i in idx]
        report._collect(engine)
        report._finish(engine)
        results[rank] = (recall.compute(), mean_ap.compute(), engine.state.metrics["case_mean_dice"], len(report.rows))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_metrics_gather_every_ranks_shard(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path / "report"), results), nprocs=2, join=True)
    img, txt, logits, tags, pred, label = _data()
    ap = average_precision(logits, tags)
    expected_recall, expected_map = retrieval_recall(img, txt, 2), ap[~ap.isnan()].mean().item()
    # single process, all cases: the reference report
    engine = Engine(lambda e, b: None)
    single = SegmentationReport(["a", "b"], channels=[1, 2], hd95=False)
    single._reset(engine)
    engine.state.output = [{"pred": pred[i], "label": _case(label, i)} for i in range(N)]
    single._collect(engine)
    single._finish(engine)
    for rank in (0, 1):
        recall, mean_ap, dice, n_rows = results[rank]
        assert recall == pytest.approx(expected_recall) and mean_ap == pytest.approx(expected_map)
        assert dice == pytest.approx(engine.state.metrics["case_mean_dice"]) and n_rows == 2 * N
    rows = list(csv.DictReader(open(tmp_path / "report" / "per_case.csv")))
    assert len(rows) == 2 * N and len({r["case"] for r in rows}) == N


@pytest.mark.parametrize("n", [5, 8])
def test_bundle_samplers_shard_the_cases(n):
    """The samplers of multi_gpu_train.json: validation (even_divisible=False) gives every case to exactly one of two
    ranks, training (even_divisible=True, shuffled) gives both ranks the same number of cases, covering them all."""
    from monai.data import DistributedSampler

    data = list(range(n))
    val = [list(DistributedSampler(data, num_replicas=2, rank=r, shuffle=False, even_divisible=False)) for r in (0, 1)]
    assert sorted(val[0] + val[1]) == data
    train = [DistributedSampler(data, num_replicas=2, rank=r, shuffle=True, even_divisible=True) for r in (0, 1)]
    for s in train:
        s.set_epoch(3)
    shards = [list(s) for s in train]
    assert len(shards[0]) == len(shards[1]) == (n + 1) // 2
    assert set(shards[0]) | set(shards[1]) == set(data)
