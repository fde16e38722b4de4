"""Speed of the MOSMOS networks as ratios against the plain MONAI / open_clip equivalents, in one process.

    python scripts/benchmark.py --size tiny      # seconds on a CPU
    python scripts/benchmark.py --size paper     # UNETR ViT-B/16 at 96^3, CLIP RN50/ViT-B-16 at 224 (use a GPU)
    python scripts/benchmark.py --scan --size paper --json scan.json   # mosmos segment on a 512x512x100 CT

Ratios > 1 mean MOSMOS is slower. Absolute times depend on the machine; the ratios are what to compare.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import fire
import open_clip
import torch
from monai.networks.nets import UNETR

from mosmos_components.losses import MosmosPretrainLoss
from mosmos_components.networks import MosmosPretrainNet, MosmosUNETR

SIZES = {
    "tiny": {"unetr": dict(img_size=(64, 64, 32), hidden_size=64, num_layers=4, num_heads=2, embed_dim=64,
                           feature_size=8, decoder_heads=4), "clip": "mosmos-tiny-vit", "batch": 8},
    "paper": {"unetr": dict(img_size=(96, 96, 96), hidden_size=768, num_layers=12, num_heads=12, embed_dim=512,
                            feature_size=16, decoder_heads=8), "clip": "ViT-B-16", "batch": 64},
}


def _time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats


def scan_benchmark(size: str, device: torch.device, shape=(512, 512, 100), spacing=(0.8, 0.8, 2.5),
                   overlap: float = 0.5) -> dict:
    """``mosmos segment``'s whole path (read, preprocess, sliding window, label map back to the input grid, write)
    on a CT-like volume of ``shape`` at ``spacing`` mm, with the ``size`` network (random weights) at the
    paper's spacing (1.5 x 1.5 x 2 mm) and window: wall time per stage and the process's peak RSS."""
    import resource
    import tempfile
    from pathlib import Path

    import nibabel as nib
    import numpy as np

    from mosmos_components.checkpoint import save_network
    from mosmos_components.segment import load_model, segment

    u = SIZES[size]["unetr"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        net = MosmosUNETR(1, 14, class_names=[f"c{i}" for i in range(14)], **u)
        net.pta.set_class_embeddings(torch.randn(14, u["embed_dim"]))
        save_network(net, tmp / "models" / "model.pt", extra={
            "data": {"pixdim": [1.5, 1.5, 2.0], "intensity_range": [-175.0, 250.0], "modality": "ct"},
            "inference": {"roi_size": list(u["img_size"]), "overlap": overlap, "axcodes": "RAS"}})
        del net
        rng = np.random.default_rng(0)
        xx, yy = np.mgrid[: shape[0], : shape[1]]
        body = (xx - shape[0] / 2) ** 2 + (yy - shape[1] / 2) ** 2 < (0.45 * shape[0]) ** 2  # soft tissue in air
        vol = np.where(body[..., None], rng.normal(40, 20, shape), -1000).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, np.diag([*spacing, 1.0])), tmp / "scan.nii.gz")
        m = load_model(tmp / "models", device)
        t = time.perf_counter()
        res = segment(tmp / "scan.nii.gz", tmp / "out", m, device=str(device), progress=False,
                      sw_batch_size=4 if device.type == "cuda" else 2)
        total = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the ONNX run below
        out = {"scan_shape": list(shape), "scan_spacing_mm": list(spacing), "overlap": overlap, "scan_seconds": total,
               "scan_stage_seconds": res["done"][0]["stage_seconds"], "scan_peak_rss_bytes": peak}
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            onnxruntime = None
        if onnxruntime is not None and device.type == "cpu":  # the same scan through ONNX Runtime
            from mosmos_components.export import export_onnx

            export_onnx(tmp / "models" / "model.pt", tmp / "models" / "model.onnx")
            t = time.perf_counter()
            segment(tmp / "scan.nii.gz", tmp / "out_onnx", tmp / "models" / "model.onnx", device="cpu", progress=False)
            out["onnx_scan_seconds"] = time.perf_counter() - t
            out["onnx_ratio_vs_pytorch"] = out["onnx_scan_seconds"] / total
            a = np.asarray(nib.load(tmp / "out" / "scan.nii.gz").dataobj)
            b = np.asarray(nib.load(tmp / "out_onnx" / "scan.nii.gz").dataobj)
            out["onnx_label_agreement"] = float((a == b).mean())
    if device.type == "cuda":
        out["scan_peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return out


def main(size: str = "tiny", repeats: int = 5, device: str | None = None, scan: bool = False,
         json_file: str | None = None, overlap: float = 0.5) -> None:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if scan:
        results = {"device": str(dev), "size": size, "threads": torch.get_num_threads(),
                   **scan_benchmark(size, dev, overlap=overlap)}
        print(json.dumps(results, indent=2))
        if json_file:
            Path(json_file).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        return
    cfg = SIZES[size]
    u = cfg["unetr"]
    results = {"device": str(dev), "size": size}

    # segmentation inference: MosmosUNETR (with and without PTA) vs MONAI's UNETR of the same size
    ours = MosmosUNETR(1, 14, class_names=[f"c{i}" for i in range(14)], **u).to(dev).eval()
    ours.pta.set_class_embeddings(torch.randn(14, u["embed_dim"], device=dev))
    plain = MosmosUNETR(1, 14, use_pta=False, **u).to(dev).eval()
    ref = UNETR(1, 14, img_size=u["img_size"], feature_size=u["feature_size"], hidden_size=u["hidden_size"],
                mlp_dim=4 * u["hidden_size"], num_heads=u["num_heads"], proj_type="conv",
                norm_name="instance", res_block=True).to(dev).eval()
    score = MosmosUNETR(1, 14, class_names=[f"c{i}" for i in range(14)], pta_mode="score", **u).to(dev).eval()
    score.pta.set_class_embeddings(torch.randn(14, u["embed_dim"], device=dev))
    x = torch.rand(1, 1, *u["img_size"], device=dev)
    with torch.no_grad():
        traced = torch.jit.trace(ours, x)  # what `ckpt_export --use_trace True` writes
        times = {
            "mosmos_pta": _time(lambda: ours(x), repeats, dev),
            "mosmos_pta_torchscript": _time(lambda: traced(x), repeats, dev),
            "clip_denseclip_score_maps": _time(lambda: score(x), repeats, dev),
            "mosmos_no_pta": _time(lambda: plain(x), repeats, dev),
            "monai_unetr": _time(lambda: ref(x), repeats, dev),
        }
    results["unetr_window_s"] = times
    results["unetr_ratio_vs_monai"] = {k: v / times["monai_unetr"] for k, v in times.items() if k != "monai_unetr"}

    # pre-training step (forward + loss + backward) vs open_clip's CLIP with its ClipLoss
    net = MosmosPretrainNet(cfg["clip"], decoder_heads=u["decoder_heads"]).to(dev).train()
    clip = open_clip.create_model(cfg["clip"]).to(dev).train()
    b, s = cfg["batch"], net.image_size
    img = torch.randn(b, 3, s, s, device=dev)
    txt = torch.randint(1, 49000, (b, net.context_length), device=dev)
    tags = (torch.rand(b, len(net.tags), device=dev) > 0.8).float()
    loss_ours, loss_ref = MosmosPretrainLoss(), open_clip.ClipLoss()

    def step_ours():
        net.zero_grad()
        loss_ours(net(img, txt), tags).backward()

    def step_ref():
        clip.zero_grad()
        f_i, f_t, scale = clip(img, txt)
        loss_ref(f_i, f_t, scale).backward()

    t1, t2 = _time(step_ours, repeats, dev), _time(step_ref, repeats, dev)
    results["pretrain_step_s"] = {"mosmos": t1, "open_clip": t2}
    results["pretrain_ratio_vs_open_clip"] = t1 / t2
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    fire.Fire(main)
