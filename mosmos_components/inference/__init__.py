"""Inference, in one place: the model and its sidecar (:mod:`.model`), reading a scan (:mod:`.preprocess`), the
predictor and the decoding of its outputs into labels (:mod:`.predictor`), the files written (:mod:`.writers`) and
the run over every scan of an input (:mod:`.run`). ``mosmos segment``, every segmentation bundle's
``inference.json``, ``mosmos locate``, ``mosmos export-onnx`` and ``scripts/benchmark.py`` go through it.

A scan goes through MONAI's transforms (``Orientationd``, ``Spacingd``, the bundle's intensity transform), MONAI's
sliding-window inferer (stitching on the CPU, windows on ``--device``), then the outputs are decoded into labels
on the model's grid (argmax, or the sidecar's decoding of sigmoid regions): only the integer label map is taken
back to the input grid (``Invertd`` with nearest-neighbour interpolation), so no float map per class is ever held
at the input resolution. The output keeps the input's shape and affine exactly (its NIfTI header for NIfTI
inputs).

    mosmos segment scan.nii.gz out/ --model bundles/btcv_seg --statistics --preview
    mosmos segment dicom_folder/ out/ --model btcv_seg --split --roi_subset liver,spleen
"""

from mosmos_components.inference.labels import LABEL_DECODINGS, decode_labels
from mosmos_components.inference.model import ModelCard, SegmentationModel, compiled, load_model, resolve_model
from mosmos_components.inference.predictor import autocast, inferer, segment_scan, stitch_device
from mosmos_components.inference.preprocess import preprocessing
from mosmos_components.inference.run import segment
from mosmos_components.inference.writers import (
    case_name,
    file_names,
    planned_outputs,
    plot_preview,
    structure_statistics,
    to_ras,
    write_nifti,
)

__all__ = [
    "ModelCard",
    "SegmentationModel",
    "resolve_model",
    "load_model",
    "compiled",
    "preprocessing",
    "inferer",
    "stitch_device",
    "autocast",
    "LABEL_DECODINGS",
    "decode_labels",
    "segment_scan",
    "segment",
    "case_name",
    "file_names",
    "planned_outputs",
    "structure_statistics",
    "plot_preview",
    "to_ras",
    "write_nifti",
]
