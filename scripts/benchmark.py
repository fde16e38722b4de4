"""Speed of the MOSMOS networks as ratios against the plain MONAI / open_clip equivalents, in one process.

    python scripts/benchmark.py --size tiny      # seconds on a CPU
    python scripts/benchmark.py --size paper     # UNETR ViT-B/16 at 96^3, CLIP RN50/ViT-B-16 at 224 (use a GPU)

Ratios > 1 mean MOSMOS is slower. Absolute times depend on the machine; the ratios are what to compare.
"""

from __future__ import annotations

import json
import time

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


def main(size: str = "tiny", repeats: int = 5, device: str | None = None) -> None:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
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
