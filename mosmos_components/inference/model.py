"""The model a scan is segmented with: its weights (PyTorch, TorchScript or ONNX) and its sidecar, read once
into a typed :class:`ModelCard` (how the model reads a scan and what its outputs mean)."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from mosmos_components.checkpoint import (
    check_expectations,
    is_2d_network,
    load_segmentation_network,
    read_sidecar,
)
from mosmos_components.inference.labels import LABEL_DECODINGS, decoding_of

logger = logging.getLogger(__name__)


@dataclass
class ModelCard:
    """A segmentation model's sidecar (``model.json``) as inference reads it, in one place: how a scan is read
    for the model and what its outputs mean. Sidecars written before an entry was recorded get the documented
    default (the CT window :data:`~mosmos_components.transforms.CT_WINDOW`, overlap 0.5, RAS); entries without a
    default are errors naming the file."""

    class_names: list[str]  # channel order; index 0 is the background for softmax models
    in_channels: int
    pixdim: list[float]
    modality: str
    intensity_range: list[float]
    roi_size: list[int]
    overlap: float
    axcodes: str
    slice_inference: bool  # 2D networks: windows are slices of the volume
    sigmoid: bool  # overlapping regions (one channel per region, no background channel)
    output_labels: str | None = None  # a key of LABEL_DECODINGS; None: argmax (softmax) or regions (sigmoid)

    @classmethod
    def read(cls, path: str | os.PathLike, cfg: dict | None = None) -> ModelCard:
        """The card of the model at ``path`` (its sidecar beside it, or ``cfg`` already read from it)."""
        from mosmos_components.transforms import CT_WINDOW

        path = Path(path)
        side = path.with_suffix(".json")
        cfg = read_sidecar(path) if cfg is None else cfg
        if not isinstance(cfg.get("class_names"), list) or len(cfg["class_names"]) < 1:
            raise ValueError(
                f"{side}: the sidecar gives no class_names (the names of the model's output channels, in order); it "
                "is not the sidecar of a segmentation model"
            )
        data = cfg.get("data") or {}
        infer = cfg.get("inference") or {}
        missing = [k for k in ("pixdim", "modality") if k not in data]
        if missing:
            raise ValueError(
                f"{side}: the sidecar does not say the model's {missing} (written before MOSMOS 0.3?); retrain, or "
                'add them under "data" as the bundle\'s checkpoint_expect'
            )
        roi = infer.get("roi_size") or cfg.get("img_size")
        if roi is None:
            raise ValueError(f"{side}: the sidecar gives no window size (inference.roi_size)")
        sigmoid = bool(infer.get("sigmoid", cfg.get("pta_sigmoid", False)))
        output_labels = infer.get("output_labels")
        decoding_of(output_labels, sigmoid)  # a name that does not fit is an error here, naming the values
        return cls(
            class_names=[str(c) for c in cfg["class_names"]],
            in_channels=int(cfg.get("in_channels", 1)),
            pixdim=[float(v) for v in data["pixdim"]],
            modality=str(data["modality"]),
            intensity_range=[float(v) for v in data.get("intensity_range", CT_WINDOW)],
            roi_size=[int(v) for v in roi],
            overlap=float(infer.get("overlap", 0.5)),
            axcodes=str(infer.get("axcodes", "RAS")),
            slice_inference=bool(infer.get("slice_inference", is_2d_network(cfg))),
            sigmoid=sigmoid,
            output_labels=output_labels,
        )


@dataclass(kw_only=True)
class SegmentationModel(ModelCard):
    """A loaded segmentation network with its :class:`ModelCard` (what it needs to read a scan)."""

    network: torch.nn.Module
    path: Path
    sidecar: dict = field(repr=False, default_factory=dict)

    @property
    def decoding(self) -> str:
        """How the outputs become labels: a key of :data:`~mosmos_components.inference.labels.LABEL_DECODINGS`."""
        return decoding_of(self.output_labels, self.sigmoid)

    @property
    def structures(self) -> list[str]:
        """The names of the label values 1..N of the output label map."""
        names = LABEL_DECODINGS[self.decoding].names
        if names is not None:
            return list(names)
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
    card = ModelCard.read(path, cfg)
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
    return SegmentationModel(network=net, path=path, sidecar=cfg, **dataclasses.asdict(card))


def compiled(m: SegmentationModel) -> SegmentationModel:
    """``m`` with its network compiled by ``torch.compile`` (PyTorch weights only: an exported ``.ts``/``.onnx`` model
    is a fixed graph already). The first window pays the compilation (tens of seconds on a CPU); the outputs are the
    same to float rounding. Worth it for many scans in one process (``docs/benchmarks.md``)."""
    if m.path.suffix in (".ts", ".onnx"):
        raise ValueError(f"{m.path}: --compile applies to PyTorch weights (model.pt), not to an exported model")
    return replace(m, network=torch.compile(m.network))
