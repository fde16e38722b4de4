"""Datalists for the segmentation bundles: find image/label pairs in a data set's real layout, check their
headers, and split them reproducibly into a datalist file (docs/method.md §6)."""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from mosmos_components.checkpoint import atomic_json_save

__all__ = [
    "btcv_pairs",
    "msd_pairs",
    "amos_pairs",
    "mmwhs_pairs",
    "split_pairs",
    "check_headers",
    "load_or_create_datalist",
    "label_fraction",
    "training_units",
    "inference_inputs",
]

logger = logging.getLogger(__name__)

_NIFTI = re.compile(r"\.nii(\.gz)?$")


def msd_pairs(json_file: str | os.PathLike, sections: Sequence[str] = ("training", "validation")) -> list[dict]:
    """Image/label pairs listed in an MSD-style JSON (``dataset_0.json`` / ``dataset.json``), paths made
    absolute relative to the JSON's folder; listed files that do not exist are an error naming them."""
    json_file = Path(json_file)
    with open(json_file, encoding="utf-8") as fh:
        data = json.load(fh)
    items = []
    for section in sections:
        for it in data.get(section, []):
            if not isinstance(it, dict) or "image" not in it or "label" not in it:
                continue
            item = {k: str((json_file.parent / v).resolve()) if isinstance(v, str) else v for k, v in it.items()}
            items.append(item)
    if not items:
        raise ValueError(f"{json_file} lists no image/label pairs under {list(sections)}")
    missing = [p for it in items for p in (it["image"], it["label"]) if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"{json_file} points at {len(missing)} missing file(s), e.g. {missing[:3]}")
    return items


def _pair_images(images: Sequence[Path], label_of, dataset: str, folder: Path) -> list[dict]:
    """``[{"image", "label"}]`` for each image and its label file; a missing label or no image is an error."""
    items = []
    for img in images:
        lab = label_of(img)
        if not lab.is_file():
            raise FileNotFoundError(f"{dataset} image {img} has no label {lab}")
        items.append({"image": str(img), "label": str(lab)})
    if not items:
        raise FileNotFoundError(f"no {dataset} NIfTI images in {folder}")
    return items


def btcv_pairs(dataset_dir: str | os.PathLike) -> list[dict]:
    """BTCV pairs: ``RawData/Training/img/imgXXXX.nii.gz`` with ``label/labelXXXX.nii.gz``, or an MSD-style
    ``dataset_0.json`` in ``dataset_dir``."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"BTCV dataset folder not found: {root}")
    if (root / "dataset_0.json").is_file():
        return msd_pairs(root / "dataset_0.json")
    img_dir = next(
        (d for d in (root / "RawData" / "Training" / "img", root / "Training" / "img", root / "img") if d.is_dir()),
        None,
    )
    if img_dir is None:
        raise FileNotFoundError(f"no BTCV data under {root}: expected RawData/Training/img/ or dataset_0.json")
    lab_dir = img_dir.parent / "label"
    images = sorted(p for p in img_dir.iterdir() if _NIFTI.search(p.name))
    return _pair_images(images, lambda img: lab_dir / img.name.replace("img", "label", 1), "BTCV", img_dir)


def amos_pairs(dataset_dir: str | os.PathLike, modality: str = "both") -> list[dict]:
    """AMOS 2022 pairs from ``dataset.json`` (its ``training`` and ``validation`` lists, i.e. ``imagesTr/labelsTr``
    and ``imagesVa/labelsVa``), each tagged ``"modality": "ct" | "mri"`` (case ids above 500 are MRI) and kept
    if ``modality`` is ``"ct"``, ``"mri"`` or ``"both"``."""
    if modality not in ("ct", "mri", "both"):
        raise ValueError(f"modality must be 'ct', 'mri' or 'both', got {modality!r}")
    root = Path(dataset_dir)
    if not (root / "dataset.json").is_file():
        raise FileNotFoundError(f"AMOS dataset.json not found in {root}")
    items = []
    for it in msd_pairs(root / "dataset.json"):
        m = re.search(r"amos_(\d+)", os.path.basename(it["image"]))
        if m is None:
            raise ValueError(f"{it['image']}: not an AMOS file name (amos_XXXX.nii.gz)")
        it["modality"] = "mri" if int(m.group(1)) > 500 else "ct"
        if modality in ("both", it["modality"]):
            items.append(it)
    if not items:
        raise ValueError(f"{root}/dataset.json has no {modality.upper()} case")
    return items


def mmwhs_pairs(dataset_dir: str | os.PathLike) -> list[dict]:
    """MM-WHS MRI pairs: ``mr_train/mr_train_XXXX_image.nii.gz`` with ``mr_train_XXXX_label.nii.gz``."""
    root = Path(dataset_dir)
    folder = root / "mr_train" if (root / "mr_train").is_dir() else root
    if not folder.is_dir():
        raise FileNotFoundError(f"MM-WHS dataset folder not found: {root}")
    images = sorted(folder.glob("*_image.nii*"))
    return _pair_images(images, lambda img: img.with_name(img.name.replace("_image", "_label")), "MM-WHS", folder)


def acdc_pairs(dataset_dir: str | os.PathLike) -> list[dict]:
    """ACDC in its official layout: ``database/training/patientNNN/`` with ``Info.cfg`` (``ED:``, ``ES:`` and, in the
    official files, ``Group:``) and ``patientNNN_frameFF.nii.gz`` + ``patientNNN_frameFF_gt.nii.gz`` for both frames.
    Both frames are cases of one patient: each item carries ``patient`` (the split keeps a patient's frames
    together), ``group`` (stratifies the split when present) and ``phase`` (``ED``/``ES``).
    ``dataset_dir`` may be the ACDC folder, its ``database/`` or ``database/training/``."""
    root = Path(dataset_dir)
    for folder in (root / "database" / "training", root / "training", root):
        if folder.is_dir() and any(folder.glob("patient*/Info.cfg")):
            break
    else:
        raise FileNotFoundError(
            f"no ACDC patient folder (patientNNN/Info.cfg) under {root} (expected {root}/database/training/patientNNN/)"
        )
    items = []
    for info in sorted(folder.glob("patient*/Info.cfg")):
        fields = {}
        for line in info.read_text(encoding="utf-8", errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        patient = info.parent.name
        for phase in ("ED", "ES"):
            if phase not in fields:
                raise ValueError(f"{info}: no '{phase}:' frame number")
            try:
                frame = int(float(fields[phase]))
            except ValueError as e:
                raise ValueError(f"{info}: '{phase}: {fields[phase]}' is not a frame number") from e
            image = info.parent / f"{patient}_frame{frame:02d}.nii.gz"
            label = info.parent / f"{patient}_frame{frame:02d}_gt.nii.gz"
            for f in (image, label):
                if not f.is_file():
                    raise FileNotFoundError(f"ACDC {patient}: {f} (the {phase} frame of {info}) not found")
            items.append(
                {
                    "image": str(image),
                    "label": str(label),
                    "patient": patient,
                    "phase": phase,
                    "group": fields.get("Group", ""),
                }
            )
    return items


def check_headers(items: Sequence[dict], in_channels: int = 1) -> None:
    """Open every image/label header (cheap): a corrupt file, a wrong channel count or an image/label grid
    mismatch (shape or affine) is an error naming the files."""
    for it in items:
        headers = {}
        for key in ("image", "label"):
            path = it[key]
            if not _NIFTI.search(path):
                return  # DICOM or other formats are checked after loading (ValidateSegmentationPaird)
            try:
                img = nib.load(path)
                headers[key] = (img.shape, img.affine)
            except Exception as e:  # noqa: BLE001 - any nibabel failure means an unreadable file
                raise ValueError(f"cannot read NIfTI file {path}: {e}") from e
        (ishape, iaff), (lshape, laff) = headers["image"], headers["label"]
        channels = ishape[3] if len(ishape) == 4 else 1
        if channels != in_channels:
            raise ValueError(f"{it['image']}: {channels} channel(s), expected {in_channels}")
        if tuple(ishape[:3]) != tuple(lshape[:3]) or not np.allclose(iaff, laff, atol=1e-3):
            raise ValueError(
                f"image/label grid mismatch: {it['image']} is {tuple(ishape[:3])} with affine "
                f"{np.round(iaff, 3).tolist()}, {it['label']} is {tuple(lshape[:3])} with affine "
                f"{np.round(laff, 3).tolist()}"
            )


def split_pairs(
    items: Sequence[dict],
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    group_key: str | None = None,
    strata_key: str | None = None,
) -> dict:
    """Seeded shuffle, then ``training``/``validation``/``test`` by ``fractions`` (at least one unit each when
    there are three or more).

    With ``group_key`` (ACDC: ``"patient"``) the units are the groups: a group's items stay in one split. With
    ``strata_key`` too (ACDC's ``"group"``, the diagnosis) the groups are dealt round-robin from each stratum's own
    shuffle, so every split gets its share of each stratum."""
    if len(fractions) not in (2, 3) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be 2 or 3 numbers summing to 1, got {list(fractions)}")
    rng = random.Random(seed)
    if group_key is None:
        units = [[it] for it in items]
        rng.shuffle(units)
    else:
        groups: dict[str, list[dict]] = {}
        for it in items:
            groups.setdefault(str(it[group_key]), []).append(it)
        units = [groups[g] for g in _stratified_order(groups, rng, strata_key, shuffle_strata=False)]
    n = len(units)
    n_val = max(1, int(round(fractions[1] * n))) if n >= 2 else 0
    n_test = (max(1, int(round(fractions[2] * n))) if n >= 3 else 0) if len(fractions) == 3 else 0
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"{n} case(s) are too few to split by {list(fractions)}")

    def join(us):
        return [it for u in us for it in u]

    return {
        "training": join(units[:n_train]),
        "validation": join(units[n_train : n_train + n_val]),
        "test": join(units[n_train + n_val :]),
    }


def load_or_create_datalist(
    pairs: Sequence[dict],
    datalist_file: str | os.PathLike,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    in_channels: int = 1,
    group_key: str | None = None,
    strata_key: str | None = None,
) -> dict:
    """The split written in ``datalist_file`` if it exists (checked against the files on disk and against
    ``pairs``), else a new seeded split of ``pairs`` written there (atomically), so later runs and evaluations use
    the same cases.

    An existing split is reused only for the data it was made from: when ``pairs`` are a subset of its cases (AMOS
    ``--modality ct`` after a split of both modalities) it is narrowed to them, split kept and the log says so;
    when ``pairs`` hold cases it does not (another ``--dataset_dir``, or ``--modality both`` after a CT-only split)
    it is an error naming the file and the difference, never a silent evaluation of other data."""
    path = Path(datalist_file)
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            dl = json.load(fh)
        missing = [p for sec in dl.values() for it in sec for p in (it["image"], it["label"]) if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(
                f"datalist {path} lists {len(missing)} missing file(s), e.g. {missing[:3]}; "
                "delete it to split the current data afresh"
            )
        return _reuse(dl, pairs, path)
    check_headers(pairs, in_channels)
    dl = split_pairs(pairs, fractions, seed, group_key, strata_key)
    atomic_json_save(dl, path)
    return dl


def _reuse(dl: dict, pairs: Sequence[dict], path: Path) -> dict:
    """``dl`` narrowed to the images of ``pairs``; an error if ``pairs`` hold images that ``dl`` does not."""

    def key(p: str) -> str:
        return os.path.realpath(p)

    wanted = {key(p["image"]) for p in pairs}
    listed = {key(it["image"]) for sec in dl.values() for it in sec}
    new = sorted(wanted - listed)
    if new:
        raise ValueError(
            f"datalist {path} was made from other data: {len(new)} of the {len(wanted)} current images "
            f"are not in it (e.g. {new[:2]}); delete it, or give another datalist_file, to split the "
            "current data (e.g. a new --dataset_dir, or --modality both after a single-modality split)"
        )
    if wanted != listed:
        dl = {sec: [it for it in items if key(it["image"]) in wanted] for sec, items in dl.items()}
        logger.info(
            "datalist %s: using the %d of its %d cases selected now (e.g. one --modality), split kept",
            path,
            len(wanted),
            len(listed),
        )
    return dl


def _stratified_order(
    groups: dict[str, list[dict]], rng: random.Random, strata_key: str | None, shuffle_strata: bool = True
) -> list[str]:
    """The group names in a seeded order that deals the strata round-robin: each stratum shuffled on its own and
    (``shuffle_strata``) the strata themselves in a seeded order, so any prefix of the order holds every stratum
    as evenly as it can."""
    strata: dict[str, list[str]] = {}
    for g in sorted(groups):
        strata.setdefault(str(groups[g][0].get(strata_key, "")) if strata_key else "", []).append(g)
    for members in strata.values():
        rng.shuffle(members)
    queues = [list(v) for _, v in sorted(strata.items())]
    if shuffle_strata:
        rng.shuffle(queues)
    order = []
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    return order


def label_fraction(
    datalist: dict,
    fraction: float = 1.0,
    seed: int = 0,
    group_key: str | None = None,
    strata_key: str | None = None,
) -> dict:
    """The label-efficiency study (docs/method.md §8): train on ``fraction`` of the training *units* (at least
    one), the first of a seeded order, so that for one seed 3 patients are a subset of 7, of 70 ...; validation
    and test stay whole, so the runs are compared on the same cases.

    The unit is the case, or with ``group_key`` (ACDC: ``"patient"``) the group: every case of a chosen group is
    kept (both frames of a patient). With ``strata_key`` too (ACDC's ``"group"``, the diagnosis) the order deals
    the strata round-robin, so a small subset spans as many strata as it has units. ``seed`` is the run's seed:
    below 100 % different seeds train on different units. The units kept are logged.

    >>> dl = {"training": [{"label": f"p{i}_{f}", "patient": f"p{i}", "group": "AB"[i % 2]}
    ...                    for i in range(6) for f in "12"], "validation": [], "test": []}
    >>> few = label_fraction(dl, 0.34, seed=0, group_key="patient", strata_key="group")["training"]
    >>> len(few), len({it["patient"] for it in few}), len({it["group"] for it in few})
    (4, 2, 2)
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    train = list(datalist["training"])
    if fraction == 1.0 or not train:
        return datalist
    missing = [it.get("image") for it in train if group_key and group_key not in it]
    if missing:
        raise ValueError(f"label_fraction by {group_key!r}: training case(s) {missing[:3]} have no {group_key!r}")
    keys = [str(it[group_key]) if group_key else f"{i:07d}" for i, it in enumerate(train)]
    groups: dict[str, list[dict]] = {}
    for k, it in zip(keys, train):
        groups.setdefault(k, []).append(it)
    order = _stratified_order(groups, random.Random(seed), strata_key)
    chosen = set(order[: max(1, int(round(float(fraction) * len(order))))])
    kept = [it for k, it in zip(keys, train) if k in chosen]
    unit = group_key or "case"
    logger.info(
        "label_fraction %.3g (seed %d): training on %d of %d %s unit(s), %d case(s): %s",
        fraction,
        seed,
        len(chosen),
        len(order),
        unit,
        len(kept),
        ", ".join(sorted(chosen) if group_key else (os.path.basename(str(it["label"])) for it in kept)),
    )
    return {**datalist, "training": kept}


def training_units(datalist: dict, group_key: str | None = None) -> list[str]:
    """The units a datalist trains on: its training groups (``group_key``), else its label file names."""
    if group_key:
        return sorted({str(it[group_key]) for it in datalist["training"]})
    return [os.path.basename(str(it["label"])) for it in datalist["training"]]


def is_dicom_file(path: str | os.PathLike) -> bool:
    """DICOM by content: the ``DICM`` marker after the 128-byte preamble (scanners rarely write a ``.dcm`` suffix)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _dicom_files(folder: Path) -> list[Path]:
    return [f for f in sorted(folder.iterdir()) if f.is_file() and is_dicom_file(f)]


def _series_key(ds) -> str:
    """What names the series a DICOM instance belongs to: its SeriesInstanceUID, or, where an anonymiser left it
    empty, what else identifies a series (study, series number and description, orientation, matrix size)."""
    import hashlib

    uid = str(getattr(ds, "SeriesInstanceUID", "") or "").strip()
    if uid:
        return uid
    parts = [
        getattr(ds, "StudyInstanceUID", ""),
        getattr(ds, "SeriesNumber", ""),
        getattr(ds, "SeriesDescription", ""),
        [round(float(v), 3) for v in getattr(ds, "ImageOrientationPatient", []) or []],
        getattr(ds, "Rows", ""),
        getattr(ds, "Columns", ""),
    ]
    return "no-uid-" + hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def dicom_series(folder: str | os.PathLike) -> dict[str, dict]:
    """The DICOM series of ``folder`` (its files, not sub-folders), keyed by SeriesInstanceUID, or for instances
    without one by a key made of what else identifies their series (:func:`_series_key`, ``no-uid-...``):
    ``{"description", "files", "positions", "orientation", "variants"}`` read from the headers (pydicom, without
    pixel data); ``variants`` lists the values of the attributes every slice of one series must share
    (description, acquisition number, orientation, matrix size, pixel spacing), one entry per distinct value."""
    import pydicom

    series: dict[str, dict] = {}
    for f in _dicom_files(Path(folder)):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the file named
            raise OSError(f"{f}: unreadable DICOM header ({type(e).__name__}: {e})") from e
        key = _series_key(ds)
        s = series.setdefault(
            key,
            {
                "description": str(getattr(ds, "SeriesDescription", "") or ""),
                "files": [],
                "positions": [],
                "orientation": None,
                "variants": {},
            },
        )
        s["files"].append(str(f))
        if hasattr(ds, "ImagePositionPatient") and hasattr(ds, "ImageOrientationPatient"):
            s["positions"].append([float(v) for v in ds.ImagePositionPatient])
            s["orientation"] = [float(v) for v in ds.ImageOrientationPatient]
        for name in _SERIES_CONSTANTS:
            value = getattr(ds, name, None)
            value = (
                [round(float(v), 4) for v in value]
                if name in ("ImageOrientationPatient", "PixelSpacing") and value
                else value
            )
            s["variants"].setdefault(name, set()).add(str(value) if value is not None else "")
    return series


# attributes every slice of one series shares: slices that differ in one of these are two series under one UID
_SERIES_CONSTANTS = (
    "SeriesDescription",
    "AcquisitionNumber",
    "ImageOrientationPatient",
    "Rows",
    "Columns",
    "PixelSpacing",
)


def _sorted_files(s: dict) -> list[str]:
    """The files of a series in the order of their position along the slice normal (as ITK stacks them)."""
    if len(s["positions"]) != len(s["files"]) or s["orientation"] is None:
        return list(s["files"])
    o = np.asarray(s["orientation"], dtype=float)
    z = np.asarray(s["positions"], dtype=float) @ np.cross(o[:3], o[3:])
    return [s["files"][i] for i in np.argsort(z, kind="stable")]


def check_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> str:
    """The key of the series to read from ``folder`` (see :func:`dicom_series`): its only series, or
    ``series_uid``; several series without a choice are an error listing them (key and description). The chosen
    series must be one acquisition with evenly spaced slices: slices that disagree on description, acquisition,
    orientation or size are two series sharing one UID, and a missing or duplicated slice would be read with the
    wrong geometry; each is an error naming the problem."""
    return _checked_series(folder, series_uid)[0]


def _checked_series(folder: str | os.PathLike, series_uid: str | None = None) -> tuple[str, list[str]]:
    series = dicom_series(folder)
    if not series:
        raise FileNotFoundError(f"{folder}: no DICOM file (by content: 'DICM' after the 128-byte preamble)")
    listing = "; ".join(
        f"{uid} ({s['description'] or 'no description'}, {len(s['files'])} files)" for uid, s in series.items()
    )
    if series_uid is None:
        if len(series) > 1:
            raise ValueError(f"{folder} holds {len(series)} DICOM series: {listing}; choose one with series_uid")
        series_uid = next(iter(series))
    if series_uid not in series:
        raise ValueError(f"{folder}: no DICOM series {series_uid}; it holds {listing}")
    s = series[series_uid]
    mixed = {k: sorted(v) for k, v in s["variants"].items() if len(v) > 1}
    if mixed:
        what = "; ".join(f"{k} {v[:4]}" for k, v in mixed.items())
        raise ValueError(
            f"{folder}: the slices of DICOM series {series_uid} disagree on {what}: two series share one UID "
            "(interleaved, they would be read as one volume at the wrong spacing); separate them into two folders"
        )
    if len(s["positions"]) >= 2 and s["orientation"] is not None:
        o = np.asarray(s["orientation"], dtype=float)
        normal = np.cross(o[:3], o[3:])
        z = np.sort(np.asarray(s["positions"], dtype=float) @ normal)
        steps = np.diff(z)
        duplicated = np.abs(steps) < 1e-3
        if duplicated.any():
            at = ", ".join(f"{z[i]:.2f} mm" for i in np.flatnonzero(duplicated)[:5])
            raise ValueError(
                f"{folder}: DICOM series {series_uid} has several slices at one position ({at}): duplicated "
                "slices, or two series under one UID"
            )
        if len(steps) >= 2:
            step = float(np.median(steps))
            irregular = np.abs(steps - step) > max(0.01, 0.05 * abs(step))
            if irregular.any():
                gaps = [f"{z[i]:.2f}->{z[i + 1]:.2f} mm" for i in np.flatnonzero(irregular)]
                raise ValueError(
                    f"{folder}: DICOM series {series_uid} is not evenly spaced (slice step {step:.2f} mm, "
                    f"irregular at {', '.join(gaps[:5])}): a slice is missing or duplicated; it would be read "
                    "with the wrong geometry"
                )
    return series_uid, _sorted_files(s)


def inference_inputs(path: str | os.PathLike, series_uid: str | None = None, keep_going: bool = False) -> list[dict]:
    """``[{"image": ...}]`` for a NIfTI file, a DICOM series folder, or a folder of NIfTI files and/or DICOM
    series folders. DICOM is recognised by content; each series folder is checked (:func:`check_dicom_series`:
    one series or ``series_uid``, one acquisition, evenly spaced) and its item carries ``series_uid`` (the
    series' key) and ``series_files`` (exactly its files, in slice order: what is read).

    ``keep_going``: in a folder of scans, a series that fails its check becomes ``{"image": ..., "error": why}``
    so that the caller reports it and goes on with the others (a single scan given alone still raises)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"inference input not found: {p}")

    def is_series(d: Path) -> bool:
        return d.is_dir() and any(is_dicom_file(f) for f in d.iterdir() if f.is_file())

    def item(c: Path) -> dict:
        if c.is_dir():
            key, files = _checked_series(c, series_uid)
            return {"image": str(c), "series_uid": key, "series_files": files}
        return {"image": str(c)}

    def checked(c: Path) -> dict:
        try:
            return item(c)
        except (OSError, ValueError) as e:
            if not keep_going:
                raise
            return {"image": str(c), "error": str(e)}

    if p.is_file() or is_series(p):
        return [item(p)]
    found = [checked(c) for c in sorted(p.iterdir()) if (c.is_file() and _NIFTI.search(c.name)) or is_series(c)]
    if not found:
        raise FileNotFoundError(f"no NIfTI file or DICOM series in {p}")
    return found
