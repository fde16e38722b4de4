"""ONNX export of a fine-tuned segmentation network, and ONNX Runtime as a network for ``mosmos segment``.

    mosmos export-onnx demo_output/btcv_mosmos/models/model.pt btcv.onnx      # + btcv.json (the sidecar)
    mosmos segment scan.nii.gz out/ --model btcv.onnx

The exported graph takes one window (batch, channels, *roi) and returns the logits, with a dynamic batch; the class
embeddings travel inside it (no text encoder). The sidecar of the weights is written beside it (``<name>.json``)
so that ``mosmos segment`` reads scans exactly as for the PyTorch model. Export checks the ONNX Runtime output
against PyTorch's on random windows before the file is kept. Needs ``pip install "mosmos[onnx]"``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from mosmos_components.checkpoint import load_segmentation_network, read_sidecar, write_sidecar

__all__ = ["export_onnx", "OnnxNetwork"]


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError('ONNX models need onnxruntime: pip install "mosmos[onnx]"') from e
    return onnxruntime


class OnnxNetwork(torch.nn.Module):
    """An ONNX Runtime session behind the ``nn.Module`` call MONAI's inferers make (windows in, logits out)."""

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None):
        super().__init__()
        ort = _ort()
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, options, providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def export_onnx(
    model_pt: str | os.PathLike,
    out_path: str | os.PathLike,
    opset: int = 17,
    atol: float = 1e-3,
    overwrite: bool = False,
) -> str:
    """Export the segmentation network of ``model_pt`` (+ its sidecar) to ``out_path`` (``.onnx``) and its
    sidecar beside it; refuses to overwrite unless asked, and keeps the file only if ONNX Runtime agrees with
    PyTorch within ``atol`` on random windows at two batch sizes."""
    out = Path(out_path)
    if out.suffix != ".onnx":
        raise ValueError(f"{out}: the exported file must end in .onnx")
    side = out.with_suffix(".json")
    shared = side.resolve() == Path(model_pt).with_suffix(".json").resolve()  # model.onnx beside model.pt
    for f in (out, side):
        if f.exists() and not overwrite and not (f == side and shared):
            raise FileExistsError(f"{f} exists (--overwrite to replace it)")
    from mosmos_components.inference.model import ModelCard

    cfg = read_sidecar(model_pt)
    card = ModelCard.read(model_pt, cfg)
    net = load_segmentation_network(model_pt).eval()
    roi = card.roi_size[:2] if card.slice_inference else card.roi_size
    x = torch.rand(2, card.in_channels, *roi)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        # with gradients on: under no_grad, nn.MultiheadAttention takes a fused kernel that ONNX cannot express
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape checks, constant for a fixed window
            torch.onnx.export(
                net,
                (x,),
                str(tmp),
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
        session = OnnxNetwork(tmp)
        for batch in (1, 3):
            probe = torch.rand(batch, *x.shape[1:])
            with torch.no_grad():
                want = net(probe)
            diff = float((session(probe) - want).abs().max())
            if not np.isfinite(diff) or diff > atol:
                raise RuntimeError(
                    f"{out}: ONNX Runtime differs from PyTorch by {diff:.3g} (> {atol}) at batch "
                    f"{batch}; the export is not kept"
                )
        os.replace(tmp, out)  # the checked file itself, renamed into place
    finally:
        if tmp.exists():
            tmp.unlink()
    if not shared:  # the weights' own sidecar serves when the export sits beside them
        write_sidecar({**cfg, "exported_from": str(model_pt), "onnx_opset": opset}, side)
    return str(out)
