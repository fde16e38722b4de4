"""Segmenting every scan of an input (a file, a folder, DICOM series): what ``mosmos segment`` and every
segmentation bundle's ``inference.json`` run."""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mosmos_components.inference.model import SegmentationModel, compiled, load_model
from mosmos_components.inference.predictor import segment_scan
from mosmos_components.inference.preprocess import preprocessing
from mosmos_components.inference.writers import (
    _write_outputs,
    _write_statistics,
    case_name,
    planned_outputs,
    plot_preview,
    structure_statistics,
)

logger = logging.getLogger(__name__)


def _subset(names: list[str], roi_subset: str | list[str] | tuple | None, flag: str = "--roi_subset") -> list[int]:
    """Label values kept (1..K) for ``--roi_subset`` names (comma-separated or a list); all when None."""
    if roi_subset is None:
        return list(range(1, len(names) + 1))
    wanted = [s.strip() for s in (roi_subset.split(",") if isinstance(roi_subset, str) else roi_subset) if s.strip()]
    if not wanted:
        raise ValueError(f"{flag} {roi_subset!r} names no structure; give names of {names}, or leave it out")
    lower = {n.lower(): i for i, n in enumerate(names, start=1)}
    unknown = [w for w in wanted if w.lower() not in lower]
    if unknown:
        raise ValueError(f"{flag}: {unknown} are not structures of this model; it knows {names}")
    return [lower[w.lower()] for w in wanted]


def _largest(names: list[str], keep_largest: bool | str | list[str] | tuple | None) -> list[int]:
    """Label values whose largest connected component alone is kept, for ``--keep_largest`` (True: every structure;
    names: those); none when False."""
    if keep_largest is None or keep_largest is False:
        return []
    if keep_largest is True:
        return list(range(1, len(names) + 1))
    if not isinstance(keep_largest, (str, list, tuple)):
        raise ValueError(f"--keep_largest takes no value (every structure) or structure names, got {keep_largest!r}")
    return _subset(names, keep_largest, "--keep_largest")


def segment(
    input: str | os.PathLike,
    output_dir: str | os.PathLike,
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
    modality: str | None = None,
    nonfinite: str = "error",
    output_postfix: str = "",
    output_labels: str | None = None,
    keep_largest: bool | str | list[str] = False,
) -> dict:
    """Segment every scan of INPUT (a NIfTI file, a folder of them, or DICOM series folders) with MODEL into
    OUTPUT_DIR (a folder; ``<case>.nii.gz`` per scan, or ``<case>/<structure>.nii.gz`` with ``split``). A scan that
    fails is reported and the others go on; the returned summary lists both (``failed``). ``amp``: mixed precision
    (:func:`autocast`; default on a GPU only); ``compile``: the network through ``torch.compile`` (:func:`compiled`);
    ``crop_foreground``, ``geometry_limits``, ``nonfinite``: see :func:`preprocessing`. ``modality``: ``"ct"`` or
    ``"mri"`` for every scan (a model trained on both, AMOS); default the model's. ``output_postfix``: ends the
    label map's name. ``output_labels``: how outputs become labels (:mod:`~mosmos_components.inference.labels`);
    default the sidecar's. ``keep_largest``: only the largest connected component of each structure kept (``True``),
    or of the named ones (comma-separated or a list); the rest of it becomes background (fragments far from an
    organ go, and so does a second piece of a structure that has two); off by default, as in every evaluation of
    the bundles unless they are asked.

    A scan is done when every output asked of it exists (:func:`planned_outputs`; each is written under a
    temporary name and renamed into place): it is skipped then, unless ``overwrite``; a scan with some of its
    outputs (an interrupted run, or new ones asked for) is segmented again and only the missing ones written."""
    from tqdm import tqdm

    from mosmos_components.data.datalist import inference_inputs

    if output_type not in ("nifti", "dicom_seg"):
        raise ValueError(f"--output_type must be 'nifti' or 'dicom_seg', got {output_type!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if modality not in (None, "ct", "mri"):
        raise ValueError(f"--modality must be 'ct' or 'mri', got {modality!r}")
    m = model if isinstance(model, SegmentationModel) else load_model(model, device)
    if compile:
        m = compiled(m)
    if output_labels is not None:
        m = replace(m, output_labels=output_labels)
        _ = m.decoding  # a decoding that does not fit the model's outputs is an error here, before any scan
    keep = _subset(m.structures, roi_subset)
    largest = _largest(m.structures, keep_largest)
    if largest:
        from mosmos_components.transforms import largest_component

        largest_component(largest, is_onehot=False)  # scikit-image missing: said here, not once per scan
    kept = [m.structures[k - 1] for k in keep]
    items = inference_inputs(input, series_uid, keep_going=True)
    if modality is not None:
        items = [dict(i, modality=modality) for i in items]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    done, skipped, failed = [], [], []
    pre = preprocessing(
        m, device=device, crop_foreground=crop_foreground, geometry_limits=geometry_limits, nonfinite=nonfinite
    )
    say = tqdm.write if progress else print
    window_bar = progress and len(items) == 1  # several scans: one bar over the scans
    for item in tqdm(items, desc="scans", unit="scan", disable=not progress or len(items) < 2):
        case = case_name(item)
        planned = planned_outputs(case, out, kept, split, statistics, preview, output_type, output_postfix)
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
                res = segment_scan(item, m, device, sw_batch_size, overlap, window_bar, pre, amp, largest)
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
    return {
        "model": str(m.path),
        "device": str(device),
        "output_dir": str(out),
        "done": done,
        "skipped": skipped,
        "failed": failed,
    }


def report(res: dict, seconds: float | None = None) -> str:
    """The one-line summary of :func:`segment`'s result; an error listing every failed scan when one failed
    (after the others were done), so a command or a bundle run that lost a scan never ends with success."""
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    line = (
        f"{len(res['done'])} scan(s) segmented, {len(res['skipped'])} skipped, {len(res['failed'])} failed{took} "
        f"on {res['device']} -> {res['output_dir']}"
    )
    if res["failed"]:
        raise RuntimeError(line + "; failed: " + "; ".join(f"{f['scan']}: {f['error']}" for f in res["failed"]))
    logger.info(line)
    return line
