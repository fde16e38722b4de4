"""What a segmentation writes: the label map on the scan's grid (its own NIfTI header), one mask per structure,
statistics, a preview, unique bounded file names, and the list of outputs a scan is asked for."""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mosmos_components.checkpoint import (
    _atomic_write,
    atomic_json_save,
)

logger = logging.getLogger(__name__)


_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


def case_name(item: dict) -> str:
    p = Path(str(item["image"]))
    return _NIFTI.sub("", p.name) if p.is_file() else p.name


def write_nifti(array: np.ndarray, item: dict, affine: np.ndarray, path: Path) -> None:
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


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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

    img, zooms = to_ras(intensity, affine)
    lab, _ = to_ras(label, affine)
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
    case: str,
    out: Path,
    names: list[str],
    split: bool,
    statistics: bool,
    preview: bool,
    output_type: str,
    output_postfix: str = "",
) -> list[Path]:
    """Every file one scan's segmentation is asked to write (a scan is done only when all of them exist);
    ``output_postfix`` ends the label map's name (``"_seg"``: ``<case>_seg.nii.gz``, as the bundles write it)."""
    if output_type == "dicom_seg":
        files = [out / f"{case}_seg.dcm"]
    elif split:
        files = [out / case / f"{n}.nii.gz" for n in file_names(names)]
    else:
        files = [out / f"{case}{output_postfix}.nii.gz"]
    if statistics:
        files += [out / f"{case}_statistics.json", out / f"{case}_statistics.csv"]
    if preview:
        files.append(out / f"{case}_preview.png")
    return files


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
        write_nifti(label, item, res["affine"], planned[0])
        return [str(planned[0])]
    written = []
    for k, path in zip(keep, planned):
        if str(path) in wanted:
            write_nifti((label == k).astype(np.uint8), item, res["affine"], path)
            written.append(str(path))
    return written
