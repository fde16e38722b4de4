"""One scan through the network: MONAI's sliding-window inferer, the outputs decoded into a label map on the
model's grid, and only that label map taken back to the scan's grid."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from mosmos_components.inference.labels import decode_labels, keep_largest_components
from mosmos_components.inference.model import SegmentationModel
from mosmos_components.inference.preprocess import preprocessing

logger = logging.getLogger(__name__)


def stitch_device(device: str | torch.device, channels: int, spatial: Sequence[int]) -> torch.device:
    """Where the sliding window's stitched output is kept: on the GPU the windows run on when the output and its
    weights (``(channels + 1) x spatial`` floats) take under a third of its free memory, else on the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.device("cpu")
    need = (channels + 1) * math.prod(int(s) for s in spatial) * 4
    free, _ = torch.cuda.mem_get_info(device)
    return device if need < free / 3 else torch.device("cpu")


def inferer(
    m: SegmentationModel,
    sw_batch_size: int = 2,
    overlap: float | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    output_device: str | torch.device = "cpu",
):
    """MONAI's sliding-window inferer with the model's window (slice by slice for 2D networks), windows on
    ``device``, the stitched output on ``output_device`` (:func:`stitch_device`)."""
    from monai.inferers import SliceInferer, SlidingWindowInferer

    overlap = m.overlap if overlap is None else overlap
    common = dict(
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        mode="gaussian",
        progress=progress,
        sw_device=None if device is None else torch.device(device),
        device=torch.device(output_device),
    )
    if m.slice_inference:
        return SliceInferer(roi_size=m.roi_size[:2], spatial_dim=2, **common)
    return SlidingWindowInferer(roi_size=m.roi_size, **common)


def autocast(device: str | torch.device, amp: bool | None = None):
    """Mixed precision for inference: fp16 on a GPU, bf16 on a CPU; ``amp=None`` turns it on for a GPU only."""
    device = torch.device(device)
    enabled = device.type == "cuda" if amp is None else bool(amp)
    return torch.autocast(
        device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16, enabled=enabled
    )


def segment_scan(
    item: dict,
    m: SegmentationModel,
    device: str | torch.device = "cpu",
    sw_batch_size: int | None = None,
    overlap: float | None = None,
    progress: bool = False,
    pre=None,
    amp: bool | None = None,
    keep_largest: Sequence[int] = (),
) -> dict:
    """Segment one scan (``{"image": path[, "series_uid": uid]}``): returns ``label`` (the label map on the input
    grid, uint8/uint16 numpy, values 1..K = :attr:`SegmentationModel.structures`), ``raw`` (the input as read,
    channel-first MetaTensor), ``affine`` (the input's) and ``seconds`` per stage. ``amp``: see :func:`autocast`
    (an ONNX model runs in the precision it was exported in). ``sw_batch_size``: windows per forward pass; by
    default 4 on a GPU; on a CPU 8 slices of a 2D network, 2 windows of a 3D one, 1 in bf16 (PyTorch's CPU kernels
    run a 3D convolution of batch 1 with few channels on a slower path, and bf16 windows in pairs on a slower one
    still; the timings are in ``docs/benchmarks.md``). ``keep_largest``: label values of which only the largest
    connected component is kept (:func:`keep_largest_components`, on the model's grid); none by default."""
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    device = torch.device(device)
    if sw_batch_size is None:
        bf16_cpu = device.type == "cpu" and bool(amp)
        sw_batch_size = 4 if device.type == "cuda" else 8 if m.slice_inference else 1 if bf16_cpu else 2
    t = {"read": time.perf_counter()}
    pre = pre or preprocessing(m, device=device)
    data = pre(dict(item))
    t["infer"] = time.perf_counter()
    image = data["image"]
    windows = inferer(
        m, sw_batch_size, overlap, device, progress, stitch_device(device, len(m.class_names), image.shape[1:])
    )
    with torch.inference_mode(), autocast(device, amp):
        logits = windows(image.as_tensor()[None].float(), m.network.to(device).eval())[0].float()
        label = decode_labels(logits, m.decoding)
    del logits
    t["restore"] = t["keep"] = time.perf_counter()
    if keep_largest:
        with torch.inference_mode():  # the label map is an inference tensor
            label = keep_largest_components(label, keep_largest)
        t["restore"] = time.perf_counter()
    meta = {k: v for k, v in image.meta.items() if k != "affine"}
    pred = MetaTensor(label[None].float(), affine=image.affine, meta=meta)
    pred.applied_operations = list(image.applied_operations)
    restored = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True)(
        {"image": image, "pred": pred}
    )["pred"]
    raw = data["raw"]
    out = np.asarray(restored.detach().cpu())[0].round()
    if out.shape != tuple(raw.shape[1:]):
        raise RuntimeError(
            f"{item['image']}: the label map came back as {out.shape}, the scan is "
            f"{tuple(raw.shape[1:])} (please report this)"
        )
    k = len(m.structures)
    label_np = out.astype(np.uint8 if k < 256 else np.uint16)
    t["end"] = time.perf_counter()
    seconds = {"read_preprocess": t["infer"] - t["read"], "sliding_window": t["keep"] - t["infer"]}
    if keep_largest:
        seconds["keep_largest"] = t["restore"] - t["keep"]
    seconds["to_input_grid"] = t["end"] - t["restore"]
    return {"label": label_np, "raw": raw, "affine": np.asarray(raw.affine, dtype=float), "seconds": seconds}
