"""DICOM SEG output of ``mosmos segment --output_type dicom_seg``, written with highdicom (``pip install
"mosmos[dicom]"``): one segment per structure, referencing the source series' instances, read back and compared
with the label map before the file is kept."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["write_dicom_seg", "source_instances"]


def source_instances(item: dict) -> list:
    """The instances of the series ``item`` names (pydicom datasets): its ``series_files`` (see
    :func:`mosmos_components.data.datalist.inference_inputs`), in the order MONAI's ITK reader stacks them: by
    position along the slice normal, ascending."""
    import pydicom

    from mosmos_components.data.datalist import inference_inputs

    files = item.get("series_files") or inference_inputs(item["image"], item.get("series_uid"))[0]["series_files"]
    out = [pydicom.dcmread(f) for f in files]
    if not out:
        raise FileNotFoundError(f"{item['image']}: no DICOM instance of series {item.get('series_uid')}")
    iop = np.asarray(out[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(out, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))))


def write_dicom_seg(
    item: dict, label: np.ndarray, names: list[str], values: list[int], path: str | os.PathLike, model
) -> str:
    """Write ``label`` (x, y, z on the series' grid as MONAI reads it; ``values[i]`` is structure ``names[i]``) as
    a DICOM SEG of the series ``item`` names; refuses inputs that are not DICOM series."""
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError as e:
        raise ImportError('--output_type dicom_seg needs highdicom: pip install "mosmos[dicom]"') from e
    folder = Path(str(item["image"]))
    if not folder.is_dir():
        raise ValueError(
            f"{folder}: --output_type dicom_seg needs a DICOM series as input (a DICOM SEG references "
            "its source instances); write NIfTI for this scan"
        )
    sources = source_instances(item)
    if len(sources) != label.shape[2]:
        raise ValueError(f"{folder}: {len(sources)} instances but the label map has {label.shape[2]} slices")
    frames = np.stack([label[:, :, k].T for k in range(label.shape[2])])  # (slices, rows, columns)
    if frames.shape[1:] != (int(sources[0].Rows), int(sources[0].Columns)):
        raise ValueError(
            f"{folder}: label slices {frames.shape[1:]} do not match the instances' "
            f"{int(sources[0].Rows)} x {int(sources[0].Columns)}"
        )
    segment_map = np.zeros(frames.shape, dtype=np.uint8)
    for number, value in enumerate(values, start=1):
        segment_map[frames == value] = number
    from mosmos_components import __version__

    algorithm = hd.AlgorithmIdentificationSequence(
        name="MOSMOS", version=str(__version__), family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name[:64],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=hd.sr.CodedConcept(
                value=f"{value}", scheme_designator="99MOSMOS", meaning=name[:64]
            ),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, (name, value) in enumerate(zip(names, values), start=1)
    ]
    required = (
        "PatientID",
        "PatientName",
        "StudyInstanceUID",
        "FrameOfReferenceUID",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
    )
    lacking = [k for k in required if k not in sources[0]]
    if lacking:
        raise ValueError(
            f"{folder}: the series lacks the DICOM attribute(s) {lacking} that a DICOM SEG references; "
            "write NIfTI for this scan (--output_type nifti)"
        )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=segment_map,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=9001,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MOSMOS",
        manufacturer_model_name=Path(str(model.path)).parent.parent.name or "mosmos",
        software_versions=str(__version__),
        device_serial_number="0",
        omit_empty_frames=False,
        series_description=f"MOSMOS segmentation ({len(names)} structures)",
    )
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    seg.save_as(tmp)
    try:  # read back: every frame's segments must be the label map's
        back = hd.seg.segread(tmp)
        uids = [str(ds.SOPInstanceUID) for ds in sources]
        pixels = back.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)
        if not np.array_equal(np.asarray(pixels), segment_map):
            raise RuntimeError(f"{path}: the DICOM SEG read back differs from the label map (please report this)")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return str(path)
