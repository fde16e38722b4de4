"""MONAI dictionary transforms that MONAI does not have: input checks that name the file (channels, grids, label
values, non-finite voxels), label conversions (MM-WHS values, BraTS regions, AMOS class masks), intensity by
modality, and the pre-training inputs (RGB images, tokenised reports)."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import open_clip
import torch
from monai.config import KeysCollection
from monai.transforms import CropForegroundd, LoadImaged, MapTransform, Transform

__all__ = [
    "LoadImageNamed",
    "ToRGBd",
    "ScaleBitDepthd",
    "pil_standard_mode",
    "TokenizeReportd",
    "ValidateSegmentationPaird",
    "RemapLabelsd",
    "MSDBratsRegionsd",
    "ClassMaskd",
    "ModalityIntensityd",
    "RegionsToMSDLabelsd",
    "foreground_or_all",
    "crop_to_body",
    "RAS_LABELS",
    "CT_WINDOW",
    "GEOMETRY_LIMITS",
    "CheckNiftiHeaderd",
    "CheckGeometryd",
    "nifti_header_problem",
    "largest_component",
    "keep_largest_postprocessing",
]

#: the CT intensity window (HU) of the BTCV recipe, mapped to [0, 1]: the default wherever a window is not given
CT_WINDOW = (-175.0, 250.0)

#: MONAI's axis labels for RAS, passed to ``Orientationd`` explicitly (its default argument warns on every use)
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def _source(data: Mapping, key: Hashable) -> str:
    img = data.get(key)
    meta = getattr(img, "meta", None) or data.get(f"{key}_meta_dict") or {}
    return str(meta.get("filename_or_obj", data.get("id", "<unknown file>")))


def _check_label_values(data: Mapping, key: Hashable, label, allowed, known: str) -> None:
    """An error naming the file when ``label`` holds a non-integral value or a value outside ``allowed``
    (``known`` ends the message)."""
    values = torch.unique(torch.as_tensor(label))
    if values.is_floating_point():
        bad = values[~torch.isfinite(values) | (values != values.round())]
        if bad.numel():
            shown = [float(f"{v:.6g}") for v in bad[:10].tolist()]
            raise ValueError(
                f"{_source(data, key)}: non-integer label value(s) {shown}: a label map holds class "
                "numbers (was it resampled with linear interpolation?)"
            )
    unknown = sorted({int(v) for v in values.tolist()} - set(allowed))
    if unknown:
        raise ValueError(f"{_source(data, key)}: unknown label value(s) {unknown[:10]}; {known}")


def _series_reader(files: Sequence[str]):
    """MONAI's ``ITKReader`` that reads exactly ``files`` (one DICOM series, in slice order) as one volume,
    whatever else their folder holds and however GDCM would group them."""
    from monai.data import ITKReader

    class _Files(ITKReader):
        def read(self, data, **kwargs):
            import itk

            names = [str(f) for f in files]
            return itk.imread(names if len(names) > 1 else names[0], **{**self.kwargs, **kwargs})

    return _Files()


class LoadImageNamed(LoadImaged):
    """MONAI's ``LoadImaged`` whose read errors name the file: a truncated ``.nii.gz`` otherwise fails with a bare
    ``EOFError`` ("Compressed file ended before the end-of-stream marker was reached") and no path. An item with a
    ``series_files`` (a DICOM folder, see :func:`mosmos_components.data.datalist.inference_inputs`) is read with
    ITK's reader from exactly those files."""

    def __call__(self, data, reader=None):
        files = data.get("series_files") if isinstance(data, Mapping) else None
        if reader is None and files:  # a DICOM folder: read exactly the files of the chosen series
            reader = _series_reader(files)
        try:
            return super().__call__(data, reader)
        except Exception as e:  # noqa: BLE001 - re-raised with the file named
            names = [str(data.get(k)) for k in self.keys if k in data]
            raise OSError(
                f"{', '.join(names)}: cannot be read ({type(e).__name__}: {e}); is the file complete and in "
                "a supported format?"
            ) from e


class ToRGBd(MapTransform):
    """Make a channel-first 2D image 3-channel: grey is repeated, an alpha channel dropped; anything else is
    an error that names the file."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            c = img.shape[0]
            if img.ndim != 3:
                raise ValueError(f"{_source(d, key)}: expected a 2D image (C, H, W), got shape {tuple(img.shape)}")
            if c == 1:
                img = img.repeat(3, 1, 1)
            elif c in (2, 4):  # grey+alpha / RGBA
                img = img[:1].repeat(3, 1, 1) if c == 2 else img[:3]
            elif c != 3:
                raise ValueError(f"{_source(d, key)}: image has {c} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)")
            d[key] = img
        return d


def pil_standard_mode(image):
    """``PILReader`` converter: palette images become RGB(A) by their palette (their pixel values are indices, not
    intensities), 1-bit images grey, CMYK and YCbCr RGB; grey, RGB(A) and 16/32-bit modes are kept."""
    if image.mode in ("P", "PA"):
        return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    return image


class ScaleBitDepthd(MapTransform):
    """Intensities of a PIL-read image to [0, 1] by its own bit depth (the ``mode`` its reader recorded): 8-bit
    modes / 255, 16-bit grey (``I;16``) / 65535, 32-bit integer ``I`` / 65535 when its values fit 16 bits (how
    16-bit PNGs often open) and by its maximum otherwise, float ``F`` by its own range. A 16-bit radiograph
    scaled as 0-255 would be saturated to white."""

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            mode = str((getattr(img, "meta", None) or {}).get("mode", "L"))
            x = torch.as_tensor(img).float()
            if mode.startswith("I;16"):
                out = x / 65535.0
            elif mode == "I":
                top = float(x.max()) if x.numel() else 1.0
                out = x / (65535.0 if top <= 65535 else max(top, 1.0))
            elif mode == "F":
                lo, hi = float(x.min()), float(x.max())
                out = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
            else:
                out = x / 255.0
            out = out.clamp(0.0, 1.0)
            d[key] = type(img)(out, meta=img.meta) if hasattr(img, "meta") else out
        return d


class TokenizeReportd(MapTransform):
    """Report text -> token ids (``context_length``,) long tensor under ``output_key``: CLIP's BPE, or the text
    tower's own ``tokenizer`` (``MosmosPretrainNet.tokenizer``, e.g. a Hugging Face tokenizer).

    An empty report is an error naming the sample; longer reports are truncated (EOT kept), as open_clip does.
    """

    def __init__(
        self,
        keys: KeysCollection = "report",
        context_length: int = 77,
        output_key: str = "text",
        allow_missing_keys: bool = False,
        tokenizer=None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.tokenizer = tokenizer or open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
        self.output_key = output_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            text = d[key]
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"empty report for sample {d.get('id', d.get('image', '?'))}")
            d[self.output_key] = self.tokenizer([text])[0].to(torch.long)
        return d


class ValidateSegmentationPaird(MapTransform):
    """Check a loaded channel-first image/label pair before anything else touches it: the image's channel count,
    the label's grid against the image's (shape and affine) and the label's values. Errors name the file.

    Args:
        keys: ``(image_key, label_key)``; the label may be absent (inference).
        in_channels: expected image channels.
        label_values: the allowed raw label values (e.g. ``range(14)`` for BTCV); ``None`` skips the check.
        nonfinite: what NaN/Inf image voxels do: ``"error"`` (default: refused, naming the file and the count) or
            ``"zero"`` (replaced by 0, with a warning naming the file).
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        in_channels: int = 1,
        label_values: Sequence[int] | None = None,
        nonfinite: str = "error",
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if nonfinite not in ("error", "zero"):
            raise ValueError(f"nonfinite must be 'error' or 'zero', got {nonfinite!r}")
        self.image_key, self.label_key = list(self.keys)[:2]
        self.in_channels = in_channels
        self.label_values = None if label_values is None else {int(v) for v in label_values}
        self.nonfinite = nonfinite

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        img = d[self.image_key]
        if img.shape[0] != self.in_channels:
            raise ValueError(f"{_source(d, self.image_key)}: {img.shape[0]} channel(s), expected {self.in_channels}")
        if torch.is_floating_point(torch.as_tensor(img)):
            finite = torch.isfinite(torch.as_tensor(img))
            if not bool(finite.all()):
                n = int((~finite).sum())
                if self.nonfinite == "error":
                    raise ValueError(
                        f"{_source(d, self.image_key)}: {n} NaN/Inf voxel(s); fix the file, or set "
                        "nonfinite to 'zero' to replace them by 0"
                    )
                warnings.warn(f"{_source(d, self.image_key)}: {n} NaN/Inf voxel(s) replaced by 0", stacklevel=2)
                d[self.image_key] = torch.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)
        if self.label_key not in d:
            return d
        lab = d[self.label_key]
        if lab.shape[0] != 1:
            raise ValueError(f"{_source(d, self.label_key)}: a label map has 1 channel, this one {lab.shape[0]}")
        same_affine = True
        if hasattr(img, "affine") and hasattr(lab, "affine"):
            same_affine = torch.allclose(img.affine.double(), lab.affine.double(), atol=1e-3)
        if tuple(img.shape[1:]) != tuple(lab.shape[1:]) or not same_affine:
            raise ValueError(
                f"image/label grid mismatch: {_source(d, self.image_key)} {tuple(img.shape[1:])} vs "
                f"{_source(d, self.label_key)} {tuple(lab.shape[1:])}" + ("" if same_affine else " (affines differ)")
            )
        if self.label_values is not None:
            _check_label_values(d, self.label_key, lab, self.label_values, f"allowed: {sorted(self.label_values)}")
        return d


class RemapLabelsd(MapTransform):
    """Map raw label values to class indices (e.g. MM-WHS 205, 420, ... -> 1..7); a value outside ``mapping`` is an
    error naming the file (never silently kept). ``mapping`` keys may be strings (JSON configs)."""

    def __init__(self, keys: KeysCollection, mapping: Mapping, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mapping = {int(k): int(v) for k, v in mapping.items()}

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            lab = d[key]
            _check_label_values(d, key, lab, self.mapping, f"known: {sorted(self.mapping)}")
            out = torch.zeros_like(lab)  # a MetaTensor stays one, with its affine and meta
            t = torch.as_tensor(lab)
            for src, dst in self.mapping.items():
                out[t == src] = dst
            d[key] = out
        return d


class MSDBratsRegionsd(MapTransform):
    """MSD Task01 labels (0 background, 1 edema, 2 non-enhancing tumour, 3 enhancing tumour) -> three overlapping
    binary channels: TC = {2, 3}, WT = {1, 2, 3}, ET = {3} (not BraTS' 1/2/4, not the ET = 2 of some tutorials).
    Any other value is an error naming the file."""

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            lab = d[key]
            t = torch.as_tensor(lab)
            if t.shape[0] != 1:
                raise ValueError(f"{_source(d, key)}: expected a 1-channel MSD label map, got {t.shape[0]} channels")
            _check_label_values(d, key, t, {0, 1, 2, 3}, "MSD BraTS uses 0-3")
            regions = torch.cat([(t == 2) | (t == 3), t > 0, t == 3], dim=0).to(torch.float32)
            if hasattr(lab, "meta"):
                from monai.data import MetaTensor

                regions = MetaTensor(regions, affine=lab.affine, meta=dict(lab.meta))
            d[key] = regions
        return d


class ClassMaskd(Transform):
    """Add ``mask_key``: a (K,) 0/1 float vector of the classes annotated in this case. Cases whose ``group_key``
    value (e.g. ``"modality": "mri"``) is in ``missing`` lack those classes (AMOS MRI: bladder, prostate/uterus);
    :class:`~mosmos_components.losses.MosmosSegLoss` then does not penalise predicting them there."""

    def __init__(
        self,
        num_classes: int,
        missing: Mapping[str, Sequence[int]],
        group_key: str = "modality",
        mask_key: str = "class_mask",
    ) -> None:
        self.num_classes, self.group_key, self.mask_key = num_classes, group_key, mask_key
        self.missing = {str(k): [int(c) for c in v] for k, v in missing.items()}

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        mask = torch.ones(self.num_classes)
        for c in self.missing.get(str(d.get(self.group_key, "")), []):
            mask[c] = 0.0
        d[self.mask_key] = mask
        return d


def foreground_or_all(img):
    """``CropForegroundd``'s ``select_fn`` after :class:`ModalityIntensityd`: the voxels above the intensity window's
    floor (CT above its lower HU bound, MR above its low percentile, i.e. the body, not the air around it), or every
    voxel where there are none. MONAI's default would crop a scan without foreground to an empty volume."""
    fg = img > 0
    return fg if fg.any() else fg | True


#: what a scan's geometry may be before ``mosmos segment`` spends any work on it: voxel sizes and the physical
#: extent of each axis (millimetres), and the share of the available memory the planned resampled grid may take
#: (docs/architecture.md, "Reliability"); ``mosmos segment --spacing_range 0.05,40`` etc. override them
GEOMETRY_LIMITS = {"spacing_mm": (0.1, 30.0), "field_of_view_mm": (5.0, 2500.0), "memory_share": 0.8}


def nifti_header_problem(path: str) -> str | None:
    """What is wrong with a NIfTI file's geometry, read from its header alone (no voxel data): a non-finite
    affine, zero or non-finite voxel sizes with no valid sform to stand in, or a qform and an sform that
    disagree (readers differ in which they take, so the scan would be segmented at the wrong scale)."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    header = None
    for kind in (nib.Nifti1Header, nib.Nifti2Header):  # as written: nibabel's loader would turn pixdim 0 into 1
        try:
            with ImageOpener(path) as fh:
                header = kind.from_fileobj(fh, check=False)
            if int(header["sizeof_hdr"]) == kind.sizeof_hdr:
                break
        except Exception:  # noqa: BLE001 - the reader reports unreadable files itself
            header = None
    if header is None:
        return None
    zooms = np.asarray(header["pixdim"][1:4], dtype=float)
    sform, s_code = header.get_sform(coded=True)
    qform, q_code = header.get_qform(coded=True)
    for name, aff in (("sform", sform), ("qform", qform)):
        if aff is not None and not np.isfinite(aff).all():
            return f"its {name} holds NaN/Inf values: the scan has no usable position in space"
    valid_sform = s_code and sform is not None and abs(np.linalg.det(sform[:3, :3])) > 1e-12
    if (not np.isfinite(zooms).all() or (zooms <= 0).any()) and not valid_sform:
        return (
            f"voxel sizes {zooms.round(4).tolist()} (pixdim) with no valid sform: the scan has no usable geometry; "
            "fix the header (nibabel: img.header.set_zooms)"
        )
    if valid_sform:
        s_zooms = np.linalg.norm(sform[:3, :3], axis=0)
        if not np.allclose(s_zooms, zooms, rtol=1e-3, atol=1e-4):
            return (
                f"the sform gives voxel sizes {s_zooms.round(4).tolist()} mm, pixdim (and the qform) "
                f"{zooms.round(4).tolist()}: readers differ in which they take; make them agree"
            )
        if q_code and qform is not None and not np.allclose(qform, sform, atol=1e-3 * max(1.0, float(s_zooms.max()))):
            return (
                "its qform and sform place the voxels differently: readers differ in which they take; make them agree"
            )
    return None


class CheckNiftiHeaderd(MapTransform):
    """Refuse a NIfTI input whose header geometry is impossible or ambiguous (:func:`nifti_header_problem`),
    before it is read; other formats pass."""

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            if path.lower().endswith((".nii", ".nii.gz")):
                problem = nifti_header_problem(path)
                if problem:
                    raise ValueError(f"{path}: {problem}")
        return d


def _available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class CheckGeometryd(MapTransform):
    """Refuse a loaded (channel-first) image whose geometry no scan of the model's kind has, before any
    resampling: a non-finite affine, a voxel size or a physical extent outside ``limits``
    (:data:`GEOMETRY_LIMITS`), or a resampled grid (to ``pixdim``) whose image and ``channels`` output maps would
    not fit in the available memory. Each error names the file, what was found and the limit.

    Args:
        keys: image keys.
        pixdim: the grid the scan will be resampled to (mm).
        channels: maps held per voxel of that grid besides the image (the model's outputs and the stitching
            weights).
        limits: overrides of :data:`GEOMETRY_LIMITS` entries.
    """

    def __init__(self, keys: KeysCollection, pixdim: Sequence[float], channels: int, limits: Mapping | None = None):
        super().__init__(keys)
        self.pixdim = [float(v) for v in pixdim]
        self.channels = int(channels)
        self.limits = {**GEOMETRY_LIMITS, **dict(limits or {})}

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img, src = d[key], _source(d, key)
            affine = np.asarray(torch.as_tensor(img.affine).detach().cpu(), dtype=float)
            if not np.isfinite(affine).all():
                raise ValueError(f"{src}: its affine holds NaN/Inf values: the scan has no usable position in space")
            shape = np.asarray(img.shape[1:], dtype=float)
            dims = len(shape)
            spacing = np.linalg.norm(affine[:dims, :dims], axis=0)
            lo, hi = self.limits["spacing_mm"]
            if (spacing < lo).any() or (spacing > hi).any():
                raise ValueError(
                    f"{src}: voxel size {spacing.round(4).tolist()} mm is outside {lo}-{hi} mm, not a scan this "
                    "model can read (a header in the wrong unit?); --spacing_range overrides the limit"
                )
            fov = shape * spacing
            lo, hi = self.limits["field_of_view_mm"]
            if (fov < lo).any() or (fov > hi).any():
                raise ValueError(
                    f"{src}: physical extent {fov.round(1).tolist()} mm is outside {lo}-{hi} mm per axis, not a "
                    "body part this model can read; --fov_range overrides the limit"
                )
            target = self.pixdim[:dims] + [1.0] * (dims - len(self.pixdim))
            planned = np.ceil(fov / np.asarray(target[:dims]))
            need = float(np.prod(planned)) * 4 * (img.shape[0] + self.channels)
            have = _available_memory() * float(self.limits["memory_share"])
            if need > have:
                raise MemoryError(
                    f"{src}: resampled to {self.pixdim} mm it becomes {planned.astype(int).tolist()} voxels, "
                    f"{need / 2**30:.1f} GiB with the model's outputs; {have / 2**30:.1f} GiB is available"
                )
        return d


def crop_to_body(keys: KeysCollection = "image") -> CropForegroundd:
    """The crop to the box around the body that training, validation and inference share: MONAI's ``CropForegroundd``
    of ``keys`` on the foreground of ``image`` (:func:`foreground_or_all`, after :class:`ModalityIntensityd`), a box
    smaller than a window allowed; invertible, so ``Invertd`` pads a prediction back with background."""
    return CropForegroundd(keys=keys, source_key="image", select_fn=foreground_or_all, allow_smaller=True)


class ModalityIntensityd(MapTransform):
    """Intensities to [0, 1] by modality: CT by a fixed Hounsfield window (``ct_range``, clipped), MRI per case and
    channel by percentiles (``mri_percentiles``, clipped), since MR intensities have no absolute scale.

    Args:
        keys: image keys.
        modality_key: data key holding ``"ct"`` or ``"mri"`` (AMOS mixes both); absent: ``default``.
        default: modality when the item has no ``modality_key``.
        ct_range: HU window (BTCV recipe: -175..250).
        mri_percentiles: lower/upper percentiles of each MR channel mapped to 0 and 1.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        modality_key: str = "modality",
        default: str = "ct",
        ct_range: Sequence[float] = CT_WINDOW,
        mri_percentiles: Sequence[float] = (0.5, 99.5),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if default not in ("ct", "mri"):
            raise ValueError(f"default modality must be 'ct' or 'mri', got {default!r}")
        self.modality_key, self.default = modality_key, default
        self.ct_range, self.mri_percentiles = tuple(ct_range), tuple(mri_percentiles)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        modality = str(d.get(self.modality_key, self.default)).lower()
        if modality not in ("ct", "mri"):
            raise ValueError(f"{_source(d, 'image')}: unknown modality {modality!r} (expected 'ct' or 'mri')")
        for key in self.key_iterator(d):
            img = d[key]
            t = torch.as_tensor(img).float()
            if modality == "ct":
                lo, hi = self.ct_range
                out = ((t - lo) / (hi - lo)).clamp(0, 1)
            else:
                flat = t.reshape(t.shape[0], -1)
                if flat.shape[1] > 4_000_000:  # torch.quantile's size limit; a regular subsample is plenty
                    flat = flat[:, :: flat.shape[1] // 4_000_000 + 1]
                lo = torch.quantile(flat, self.mri_percentiles[0] / 100, dim=1).view(-1, *[1] * (t.dim() - 1))
                hi = torch.quantile(flat, self.mri_percentiles[1] / 100, dim=1).view(-1, *[1] * (t.dim() - 1))
                out = ((t - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1)
            if hasattr(img, "meta"):
                new = img.clone().float()
                new[:] = out
                out = new
            d[key] = out
        return d


class RegionsToMSDLabelsd(MapTransform):
    """Binary TC/WT/ET channels (3, ...) -> one MSD label map (1, ...): 3 where ET, 2 where TC but not ET, 1 where
    WT but not TC, 0 elsewhere (the inverse of :class:`MSDBratsRegionsd` for consistent regions)."""

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            r = d[key]
            if r.shape[0] != 3:
                raise ValueError(f"{_source(d, key)}: expected 3 region channels (TC, WT, ET), got {r.shape[0]}")
            t = torch.as_tensor(r) > 0.5
            lab = torch.zeros_like(torch.as_tensor(r)[:1])
            lab[t[1:2]] = 1
            lab[t[0:1]] = 2
            lab[t[2:3]] = 3
            out = r[:1].clone()
            out[:] = lab
            d[key] = out
        return d


def largest_component(applied_labels: Sequence[int], is_onehot: bool, keys: KeysCollection | None = None):
    """MONAI's ``KeepLargestConnectedComponent`` (``...d`` on ``keys`` when given) for ``applied_labels`` (label
    values, or channels of a one-hot map), each on its own, components joined across faces only (the convention of
    nnU-Net's post-processing); what is not in a label's largest component becomes background. MONAI's connected
    components need scikit-image on a CPU: an ImportError that says how to install it, before any work."""
    from monai.transforms import KeepLargestConnectedComponent, KeepLargestConnectedComponentd
    from monai.utils import optional_import

    if not optional_import("skimage.measure")[1]:
        raise ImportError(
            "keeping the largest connected component needs scikit-image (MONAI's connected components use it): "
            'pip install "mosmos[post]"'
        )
    kw = dict(applied_labels=[int(v) for v in applied_labels], is_onehot=is_onehot, independent=True, connectivity=1)
    return KeepLargestConnectedComponent(**kw) if keys is None else KeepLargestConnectedComponentd(keys, **kw)


def keep_largest_postprocessing(keep_largest: bool, num_classes: int, sigmoid: bool) -> list:
    """What the bundles' ``keep_largest`` adds to the validation and evaluation post-processing (after the outputs
    are discretised into one channel per class): the largest component of every class channel — background
    excluded for softmax outputs — or nothing when ``keep_largest`` is false."""
    if not isinstance(keep_largest, bool):
        raise ValueError(f"keep_largest must be true or false, got {keep_largest!r}")
    if not keep_largest:
        return []
    return [largest_component(range(0 if sigmoid else 1, num_classes), is_onehot=True, keys="pred")]
