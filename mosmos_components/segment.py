"""``mosmos segment``: a scan in, a label map on the scan's own grid out, with numbers and a picture.

Everything needed to read a scan the way the model was trained (orientation, spacing, intensity window or
normalisation, channels, window size and overlap, class names) comes from the model's sidecar (``model.json``, written
by the bundles next to ``model.pt``); the user only names the scan and the model, so a mismatch cannot happen
silently. A scan goes through MONAI's transforms (``Orientationd``, ``Spacingd``, the bundle's intensity transform),
MONAI's sliding-window inferer (stitching on the CPU, windows on ``--device``), then ``argmax`` on the model's grid:
only the integer label map is taken back to the input grid (``Invertd`` with nearest-neighbour interpolation), so
no float map per class is ever held at the input resolution. The output keeps the input's shape and affine
exactly (its NIfTI header for NIfTI inputs).

    mosmos segment scan.nii.gz out/ --model bundles/btcv_seg --statistics --preview
    mosmos segment dicom_folder/ out/ --model btcv_seg --split --roi_subset liver,spleen
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from mosmos_components.checkpoint import (
    _atomic_write,
    atomic_json_save,
    check_expectations,
    is_2d_network,
    load_segmentation_network,
    read_sidecar,
)

__all__ = [
    "SegmentationModel",
    "resolve_model",
    "load_model",
    "preprocessing",
    "inferer",
    "stitch_device",
    "autocast",
    "compiled",
    "segment_scan",
    "segment",
    "structure_statistics",
    "plot_preview",
]

logger = logging.getLogger(__name__)

_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


@dataclass
class SegmentationModel:
    """A loaded segmentation network and what it needs to read a scan (from its sidecar)."""

    network: torch.nn.Module
    path: Path
    class_names: list[str]  # channel order; index 0 is the background for softmax models
    in_channels: int
    pixdim: list[float]
    modality: str
    intensity_range: list[float]
    roi_size: list[int]
    overlap: float
    axcodes: str
    slice_inference: bool  # 2D networks: windows are slices of the volume
    sigmoid: bool  # BraTS-style overlapping regions (one channel per region, no background channel)
    sidecar: dict = field(repr=False, default_factory=dict)

    @property
    def structures(self) -> list[str]:
        """The names of the label values 1..K of the output label map."""
        return self.class_names if self.sigmoid else self.class_names[1:]


def resolve_model(model: str | os.PathLike) -> Path:
    """``model.pt`` of MODEL: a ``model.pt`` (sidecar next to it), an exported TorchScript ``model.ts`` (the zoo's
    ``ckpt_export``) or ONNX ``model.onnx`` (``mosmos export-onnx``), each with the ``model.json`` of the weights
    it was exported from next to it, a folder holding a
    ``model.pt`` (a bundle's ``models/``), a bundle folder, or the name of one of this installation's bundles."""
    p = Path(model)
    candidates = [p, p / "model.pt", p / "models" / "model.pt"]
    if not p.exists() and not p.is_absolute() and len(p.parts) == 1:
        from mosmos_components.bundle_runner import bundles_dir

        try:
            candidates.append(bundles_dir() / p.name / "models" / "model.pt")
        except FileNotFoundError:
            pass
    for c in candidates:
        if c.is_file() and c.suffix in (".pt", ".ts", ".onnx"):
            return c
    tried = ", ".join(str(c) for c in candidates[1:])
    raise FileNotFoundError(
        f"--model {model}: no model.pt found (looked for {tried}); give a segmentation "
        "bundle folder, its models/ folder or a model.pt with its model.json"
    )


def load_model(
    model: str | os.PathLike, device: str | torch.device = "cpu", expect: dict | None = None
) -> SegmentationModel:
    """Load MODEL (see :func:`resolve_model`) and read from its sidecar how scans must be prepared; ``expect``:
    what a bundle requires of it (class names, channels; :func:`~mosmos_components.checkpoint.check_expectations`)."""
    path = resolve_model(model)
    cfg = read_sidecar(path)
    if not isinstance(cfg.get("class_names"), list) or len(cfg["class_names"]) < 1:
        raise ValueError(
            f"{path.with_suffix('.json')}: the sidecar gives no class_names (the names of the model's output "
            "channels, in order); it is not the sidecar of a segmentation model"
        )
    if path.suffix in (".ts", ".onnx"):  # exported: the network is the exported graph; how to read scans, the sidecar's
        if expect:
            check_expectations(path, cfg, expect)
        if path.suffix == ".ts":
            net = torch.jit.load(str(path), map_location=device).eval()
        else:
            from mosmos_components.export import OnnxNetwork

            net = OnnxNetwork(path, threads=torch.get_num_threads())
    else:
        net = load_segmentation_network(path, expect=expect).to(device)
    data = cfg.get("data") or {}
    infer = cfg.get("inference") or {}
    missing = [k for k in ("pixdim", "modality") if k not in data]
    if missing:
        raise ValueError(
            f"{path.with_suffix('.json')}: the sidecar does not say the model's {missing} (written "
            'before MOSMOS 0.3?); retrain, or add them under "data" as the bundle\'s checkpoint_expect'
        )
    slice_inference = bool(infer.get("slice_inference", is_2d_network(cfg)))
    roi = infer.get("roi_size") or cfg.get("img_size")
    if roi is None:
        raise ValueError(f"{path.with_suffix('.json')}: the sidecar gives no window size (inference.roi_size)")
    return SegmentationModel(
        network=net,
        path=path,
        class_names=list(cfg["class_names"]),
        in_channels=int(cfg.get("in_channels", 1)),
        pixdim=[float(v) for v in data["pixdim"]],
        modality=str(data["modality"]),
        intensity_range=[float(v) for v in data.get("intensity_range", (-175.0, 250.0))],
        roi_size=[int(v) for v in roi],
        overlap=float(infer.get("overlap", 0.5)),
        axcodes=str(infer.get("axcodes", "RAS")),
        slice_inference=slice_inference,
        sigmoid=bool(infer.get("sigmoid", cfg.get("pta_sigmoid", False))),
        sidecar=cfg,
    )


def compiled(m: SegmentationModel) -> SegmentationModel:
    """``m`` with its network compiled by ``torch.compile`` (PyTorch weights only: an exported ``.ts``/``.onnx`` model
    is a fixed graph already). The first window pays the compilation (tens of seconds on a CPU); the outputs are the
    same to float rounding. Worth it for many scans in one process (``docs/benchmarks.md``)."""
    if m.path.suffix in (".ts", ".onnx"):
        raise ValueError(f"{m.path}: --compile applies to PyTorch weights (model.pt), not to an exported model")
    return replace(m, network=torch.compile(m.network))


def preprocessing(
    m: SegmentationModel,
    keep_raw: bool = True,
    nonfinite: str = "error",
    device: str | torch.device | None = None,
    crop_foreground: bool = True,
    geometry_limits: dict | None = None,
):
    """MONAI's transforms that read a scan as the model was trained (its sidecar's orientation, spacing and
    intensity handling; the channel count checked): ``{"image": path}`` -> ``image`` on the model's grid, and with
    ``keep_raw`` the input as read under ``raw``. Invertible: ``Invertd`` takes predictions back to the input.
    With a GPU ``device`` the resampling and intensity steps run there (``raw`` stays on the CPU).

    ``crop_foreground``: cut the image to the box around the body (:func:`~mosmos_components.transforms.crop_to_body`),
    as training and validation do, so that no window is spent on the air around it; ``Invertd`` pads the prediction
    back with background.

    Before any resampling the scan's geometry is checked (:class:`~mosmos_components.transforms.CheckNiftiHeaderd`,
    :class:`~mosmos_components.transforms.CheckGeometryd`; ``geometry_limits`` overrides
    :data:`~mosmos_components.transforms.GEOMETRY_LIMITS`, ``False`` skips the checks)."""
    from monai.transforms import Compose, CopyItemsd, EnsureChannelFirstd, EnsureTyped, Orientationd, Spacingd

    from mosmos_components.transforms import (
        RAS_LABELS,
        CheckGeometryd,
        CheckNiftiHeaderd,
        LoadImageNamed,
        ModalityIntensityd,
        ValidateSegmentationPaird,
        crop_to_body,
    )

    check = geometry_limits is not False
    limits = geometry_limits if isinstance(geometry_limits, dict) else None
    return Compose(
        [
            *([CheckNiftiHeaderd(keys="image")] if check else []),
            LoadImageNamed(keys="image", image_only=True),
            EnsureChannelFirstd(keys="image"),
            ValidateSegmentationPaird(keys=["image", "label"], in_channels=m.in_channels, nonfinite=nonfinite),
            *([CheckGeometryd("image", m.pixdim, len(m.class_names) + 1, limits)] if check else []),
            *([CopyItemsd(keys="image", names="raw")] if keep_raw else []),  # the input grid and intensities
            *(
                [EnsureTyped(keys="image", device=device)]
                if device is not None and torch.device(device).type == "cuda"
                else []
            ),
            Orientationd(keys="image", axcodes=m.axcodes, labels=RAS_LABELS),
            Spacingd(keys="image", pixdim=m.pixdim, mode="bilinear"),
            ModalityIntensityd(keys="image", default=m.modality, ct_range=m.intensity_range),
            *([crop_to_body("image")] if crop_foreground else []),
        ]
    )


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
) -> dict:
    """Segment one scan (``{"image": path[, "series_uid": uid]}``): returns ``label`` (the label map on the input
    grid, uint8/uint16 numpy, values 1..K = :attr:`SegmentationModel.structures`), ``raw`` (the input as read,
    channel-first MetaTensor), ``affine`` (the input's) and ``seconds`` per stage. ``amp``: see :func:`autocast`
    (an ONNX model runs in the precision it was exported in). ``sw_batch_size``: windows per forward pass; by
    default 4 on a GPU; on a CPU 8 slices of a 2D network, 2 windows of a 3D one, 1 in bf16 (PyTorch's CPU kernels
    run a 3D convolution of batch 1 with few channels on a slower path, and bf16 windows in pairs on a slower one
    still; the timings are in ``docs/benchmarks.md``)."""
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
        if m.sigmoid:  # overlapping regions (BraTS): the larger ones first, so nested regions stay visible
            probs = torch.sigmoid(logits) > 0.5
            label = torch.zeros(logits.shape[1:], dtype=torch.int16, device=logits.device)
            for k in sorted(range(probs.shape[0]), key=lambda c: -int(probs[c].sum())):
                label[probs[k]] = k + 1
        else:
            label = torch.argmax(logits, dim=0).to(torch.int16)
    del logits
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
    seconds = {
        "read_preprocess": t["infer"] - t["read"],
        "sliding_window": t["restore"] - t["infer"],
        "to_input_grid": t["end"] - t["restore"],
    }
    return {"label": label_np, "raw": raw, "affine": np.asarray(raw.affine, dtype=float), "seconds": seconds}


def case_name(item: dict) -> str:
    p = Path(str(item["image"]))
    return _NIFTI.sub("", p.name) if p.is_file() else p.name


def _write_nifti(array: np.ndarray, item: dict, affine: np.ndarray, path: Path) -> None:
    """``array`` on the input grid: a NIfTI input's own header (qform/sform codes, units) is kept."""
    import nibabel as nib

    src = Path(str(item["image"]))
    if src.is_file() and _NIFTI.search(src.name):
        ref = nib.load(str(src))
        header = ref.header.copy()
        header.set_data_dtype(array.dtype)
        header.set_slope_inter(1.0, 0.0)
        img = nib.Nifti1Image(array, ref.affine, header)
        img.set_qform(ref.get_qform(), int(ref.header["qform_code"]))
        img.set_sform(ref.get_sform(), int(ref.header["sform_code"]))
    else:  # DICOM: MONAI's RAS affine of the series
        img = nib.Nifti1Image(array, affine)
    data = img.to_bytes()
    _atomic_write(path, lambda fh: fh.write(data if not str(path).endswith(".gz") else _gzip(data)))


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, compresslevel=1, mtime=0)


def structure_statistics(label: np.ndarray, intensity: np.ndarray, affine: np.ndarray, names: list[str]) -> list[dict]:
    """Per structure (label value k+1 = ``names[k]``): voxel count, volume in mL, intensity mean/sd/median over its
    voxels (HU for CT), the bounding box of its voxel centres in world mm (the affine's space, RAS for MONAI),
    or ``present: false``."""
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    rows = []
    for k, name in enumerate(names, start=1):
        mask = label == k
        n = int(mask.sum())
        if n == 0:
            rows.append({"structure": name, "label": k, "present": False, "voxels": 0, "volume_ml": 0.0})
            continue
        vals = intensity[mask].astype(np.float64)
        idx = np.argwhere(mask)
        lo, hi = idx.min(0), idx.max(0)
        corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        world = (affine @ corners.T).T[:, :3]
        rows.append(
            {
                "structure": name,
                "label": k,
                "present": True,
                "voxels": n,
                "volume_ml": n * voxel_ml,
                "intensity_mean": float(vals.mean()),
                "intensity_sd": float(vals.std()),
                "intensity_median": float(np.median(vals)),
                "bbox_min_mm": [round(float(v), 2) for v in world.min(0)],
                "bbox_max_mm": [round(float(v), 2) for v in world.max(0)],
            }
        )
    return rows


def _write_statistics(rows: list[dict], case: str, out: Path, extra: dict, wanted: set | None = None) -> list[str]:
    """``<case>_statistics.json`` and ``.csv`` (those of them in ``wanted``, when given)."""
    js, cs = out / f"{case}_statistics.json", out / f"{case}_statistics.csv"
    written = []
    if wanted is None or str(js) in wanted:
        atomic_json_save({**extra, "structures": rows}, js)
        written.append(str(js))
    if wanted is not None and str(cs) not in wanted:
        return written
    cols = [
        "structure",
        "label",
        "present",
        "voxels",
        "volume_ml",
        "intensity_mean",
        "intensity_sd",
        "intensity_median",
        "bbox_min_mm",
        "bbox_max_mm",
    ]

    def write(fh):
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})
        fh.write(buf.getvalue().encode("utf-8"))

    _atomic_write(cs, write)
    return written + [str(cs)]


def _to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``array`` (x, y, z) reoriented to the closest RAS axes, and its voxel sizes (for display only)."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    out = nib.orientations.apply_orientation(array, ornt)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))[ornt[:, 0].astype(int)]
    return out, zooms


def plot_preview(
    intensity: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    names: list[str],
    out_png: str | os.PathLike,
    title: str = "",
    window: tuple[float, float] | None = None,
    max_rows: int = 8,
) -> str:
    """Axial, coronal and sagittal overlays through the centre of each structure found (one row each, at most
    ``max_rows``, largest first), in radiological display (patient right on the image's left), with a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from mosmos_components.visualize import draw_labels, radiological_view

    img, zooms = _to_ras(intensity, affine)
    lab, _ = _to_ras(label, affine)
    found = [(int((lab == k).sum()), k) for k in range(1, len(names) + 1)]
    found = [k for n, k in sorted(found, reverse=True) if n > 0][:max_rows]
    colours = plt.get_cmap("tab20")(np.arange(len(names)) % 20)
    cmap = ListedColormap(colours)
    lo, hi = window if window is not None else np.percentile(img, [1, 99])
    rows = found or [0]
    fig, axes = plt.subplots(len(rows), 3, figsize=(8.4, 2.8 * len(rows)), squeeze=False)
    for r, k in enumerate(rows):
        centre = np.argwhere(lab == k).mean(0).round().astype(int) if k else np.array(lab.shape) // 2
        views = [
            ("axial", img[:, :, centre[2]], lab[:, :, centre[2]], zooms[1] / zooms[0]),
            ("coronal", img[:, centre[1], :], lab[:, centre[1], :], zooms[2] / zooms[0]),
            ("sagittal", img[centre[0], :, :], lab[centre[0], :, :], zooms[2] / zooms[1]),
        ]
        for c, (view, im, lb, aspect) in enumerate(views):
            ax = axes[r, c]
            im, lb = radiological_view(im, view), radiological_view(lb, view)
            ax.imshow(im, cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
            draw_labels(ax, lb, cmap, len(names), alpha=0.45, first=1, aspect=aspect)
            ax.set_title(f"{names[k - 1] if k else 'no structure found'}: {view}", fontsize=8)
            ax.axis("off")
    present = sorted({int(v) for v in np.unique(lab)} - {0})
    fig.legend(
        handles=[Patch(color=colours[k - 1], label=names[k - 1]) for k in present],
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        fontsize=7,
        frameon=False,
    )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _atomic_write(out_png, lambda fh: fig.savefig(fh, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)
    return str(out_png)


def _subset(names: list[str], roi_subset: str | list[str] | tuple | None) -> list[int]:
    """Label values kept (1..K) for ``--roi_subset`` names (comma-separated or a list); all when None."""
    if roi_subset is None:
        return list(range(1, len(names) + 1))
    wanted = [s.strip() for s in (roi_subset.split(",") if isinstance(roi_subset, str) else roi_subset) if s.strip()]
    if not wanted:
        raise ValueError(f"--roi_subset {roi_subset!r} names no structure; give names of {names}, or leave it out")
    lower = {n.lower(): i for i, n in enumerate(names, start=1)}
    unknown = [w for w in wanted if w.lower() not in lower]
    if unknown:
        raise ValueError(f"--roi_subset: {unknown} are not structures of this model; it knows {names}")
    return [lower[w.lower()] for w in wanted]


#: longest file name stem derived from a structure or query name (file systems allow 255 bytes)
MAX_NAME_LENGTH = 60


def file_names(names: Sequence[str]) -> list[str]:
    """One file name stem per name, unique and bounded: the name's letters and digits joined by ``_``
    (at most :data:`MAX_NAME_LENGTH` characters), with a short hash of the exact name added where that stem is
    empty, shortened or shared with another name ("left kidney" and "left-kidney"), so no output replaces another.

    >>> file_names(["liver", "left kidney", "left-kidney", "肝臓"])[:2]
    ['liver', 'left_kidney_a4a3461c']
    """
    import hashlib

    stems = [re.sub(r"[^A-Za-z0-9]+", "_", n).strip("_")[:MAX_NAME_LENGTH].strip("_") for n in names]
    out = []
    for name, stem in zip(names, stems):
        plain = (
            stem and stems.count(stem) == 1 and len(re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")) <= MAX_NAME_LENGTH
        )
        tag = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
        out.append(stem if plain else f"{stem}_{tag}" if stem else tag)
    return out


def planned_outputs(
    case: str, out: Path, names: list[str], split: bool, statistics: bool, preview: bool, output_type: str
) -> list[Path]:
    """Every file one scan's segmentation is asked to write (a scan is done only when all of them exist)."""
    if output_type == "dicom_seg":
        files = [out / f"{case}_seg.dcm"]
    elif split:
        files = [out / case / f"{n}.nii.gz" for n in file_names(names)]
    else:
        files = [out / f"{case}.nii.gz"]
    if statistics:
        files += [out / f"{case}_statistics.json", out / f"{case}_statistics.csv"]
    if preview:
        files.append(out / f"{case}_preview.png")
    return files


def segment(
    input: str | os.PathLike,
    output: str | os.PathLike,
    model: str | os.PathLike | SegmentationModel,
    device: str | None = None,
    split: bool = False,
    roi_subset: str | list[str] | None = None,
    statistics: bool = False,
    preview: bool = False,
    output_type: str = "nifti",
    series_uid: str | None = None,
    overwrite: bool = False,
    sw_batch_size: int | None = None,
    overlap: float | None = None,
    progress: bool = True,
    amp: bool | None = None,
    compile: bool = False,
    crop_foreground: bool = True,
    geometry_limits: dict | bool | None = None,
) -> dict:
    """Segment every scan of INPUT (a NIfTI file, a folder of them, or DICOM series folders) with MODEL into
    OUTPUT (a folder; ``<case>.nii.gz`` per scan, or ``<case>/<structure>.nii.gz`` with ``split``). A scan that
    fails is reported and the others go on; the returned summary lists both (``failed``). ``amp``: mixed precision
    (:func:`autocast`; default on a GPU only); ``compile``: the network through ``torch.compile`` (:func:`compiled`);
    ``crop_foreground``, ``geometry_limits``: see :func:`preprocessing`.

    A scan is done when every output asked of it exists (:func:`planned_outputs`; each is written under a
    temporary name and renamed into place): it is skipped then, unless ``overwrite``; a scan with some of its
    outputs (an interrupted run, or new ones asked for) is segmented again and only the missing ones written."""
    from tqdm import tqdm

    from mosmos_components.data.datalist import inference_inputs

    if output_type not in ("nifti", "dicom_seg"):
        raise ValueError(f"--output_type must be 'nifti' or 'dicom_seg', got {output_type!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    m = model if isinstance(model, SegmentationModel) else load_model(model, device)
    if compile:
        m = compiled(m)
    keep = _subset(m.structures, roi_subset)
    kept = [m.structures[k - 1] for k in keep]
    items = inference_inputs(input, series_uid, keep_going=True)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    done, skipped, failed = [], [], []
    pre = preprocessing(m, device=device, crop_foreground=crop_foreground, geometry_limits=geometry_limits)
    say = tqdm.write if progress else print
    window_bar = progress and len(items) == 1  # several scans: one bar over the scans
    for item in tqdm(items, desc="scans", unit="scan", disable=not progress or len(items) < 2):
        case = case_name(item)
        planned = planned_outputs(case, out, kept, split, statistics, preview, output_type)
        missing = planned if overwrite else [f for f in planned if not f.exists()]
        if not missing:
            logger.warning("%s: all outputs exist: skipped (--overwrite to replace them)", case)
            say(f"{case}: its outputs exist, skipped (--overwrite to replace them)")
            skipped.append(str(planned[0]))
            continue
        if len(missing) < len(planned):
            say(
                f"{case}: {len(planned) - len(missing)} of {len(planned)} outputs exist; "
                f"writing the other {len(missing)}"
            )
        t0 = time.perf_counter()
        try:
            if "error" in item:
                raise ValueError(item["error"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                res = segment_scan(item, m, device, sw_batch_size, overlap, window_bar, pre, amp)
            label = res["label"]
            if len(keep) < len(m.structures):
                label = np.where(np.isin(label, keep), label, 0).astype(label.dtype)
            t_write = time.perf_counter()
            wanted = {str(f) for f in missing}
            written = _write_outputs(item, label, res, m, keep, planned, wanted, split, output_type)
            intensity = np.asarray(res["raw"][0].detach().cpu()) if statistics or preview else None
            if statistics and {str(out / f"{case}_statistics.{x}") for x in ("json", "csv")} & wanted:
                rows = [
                    r for r in structure_statistics(label, intensity, res["affine"], m.structures) if r["label"] in keep
                ]
                written += _write_statistics(
                    rows,
                    case,
                    out,
                    {"scan": str(item["image"]), "model": str(m.path), "modality": m.modality},
                    wanted,
                )
            if preview and str(out / f"{case}_preview.png") in wanted:
                window = tuple(m.intensity_range) if m.modality == "ct" else None
                written.append(
                    plot_preview(
                        intensity,
                        label,
                        res["affine"],
                        m.structures,
                        out / f"{case}_preview.png",
                        title=f"{case}: {m.path.parent.parent.name or m.path.name}",
                        window=window,
                    )
                )
            secs = dict(res["seconds"], write=time.perf_counter() - t_write)
            total = time.perf_counter() - t0
            found = [m.structures[k - 1] for k in keep if (label == k).any()]
            say(
                f"{case}: {len(found)}/{len(keep)} structures found, {total:.1f} s "
                f"({', '.join(f'{k} {v:.1f} s' for k, v in secs.items())}) -> {planned[0]}"
            )
            done.append(
                {
                    "case": case,
                    "outputs": written,
                    "seconds": round(total, 2),
                    "stage_seconds": {k: round(v, 3) for k, v in secs.items()},
                    "found": found,
                }
            )
        except Exception as e:  # noqa: BLE001 - one bad scan does not stop the others; reported at the end
            from mosmos_components.errors import summary_line

            msg = summary_line(e).replace("MOSMOS error: ", "")
            logger.error("%s failed: %s", item["image"], msg)
            say(f"{case}: FAILED: {msg}")
            failed.append({"scan": str(item["image"]), "error": msg})
    return {"model": str(m.path), "device": str(device), "done": done, "skipped": skipped, "failed": failed}


def _write_outputs(
    item, label, res, m, keep, planned: list[Path], wanted: set, split: bool, output_type: str
) -> list[str]:
    """Write the label outputs among ``planned`` that are ``wanted`` (the others exist already)."""
    if output_type == "dicom_seg":
        if str(planned[0]) not in wanted:
            return []
        from mosmos_components.dicom_seg import write_dicom_seg

        return [write_dicom_seg(item, label, [m.structures[k - 1] for k in keep], keep, planned[0], m)]
    if not split:
        if str(planned[0]) not in wanted:
            return []
        _write_nifti(label, item, res["affine"], planned[0])
        return [str(planned[0])]
    written = []
    for k, path in zip(keep, planned):
        if str(path) in wanted:
            _write_nifti((label == k).astype(np.uint8), item, res["affine"], path)
            written.append(str(path))
    return written
