"""Small synthetic data sets in the real on-disk formats (docs/method.md §6), for the demo and the tests.

* ``roco``: the ROCO layout, ``{train,validation,test}/radiology/{captions.txt, keywords.txt, dlinks.txt,
  images/<ROCO_ID>.jpg}``; each image is an axial slice through the abdomen phantom (or the heart phantom for
  cardiac cases) and each caption a report-like sentence naming a random subset of the organs that are
  visible, with synonyms, abbreviations, sides, negated findings and omissions: noisy positive tags, as in
  real reports.
* ``btcv``: ``RawData/Training/{img,label}/img00XX.nii.gz / label00XX.nii.gz``, 3D abdomen phantoms with the 13
  BTCV labels, CT Hounsfield units with noise, scanner-like (LPS-stored) affines.
* ``amos``: AMOS 2022 ``dataset.json`` + ``imagesTr/labelsTr/imagesVa/labelsVa``, CT and MRI (ids > 500) of the
  same abdomen with AMOS label ids; ``mmwhs``: the heart phantom as MM-WHS MRI with its raw label values;
  ``brats``: a 4-channel brain phantom with a tumour, MSD Task01 layout and labels.

Everything is deterministic per seed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from mosmos_components.data.phantom import (
    BTCV_CLASSES,
    MMWHS_VALUES,
    AbdomenPhantom,
    BrainPhantom,
    HeartPhantom,
    mri_intensities,
)
from mosmos_components.tags import DEFAULT_TAGS

__all__ = [
    "write_roco",
    "write_btcv",
    "write_amos",
    "write_mmwhs",
    "write_brats",
    "DEMO_KINDS",
    "write_demo_data",
    "AMOS_FROM_PHANTOM",
]

# Ways a report names each organ; "{side}" is filled with a side word. Mentions of findings, normal or negated.
_MENTIONS: dict[str, list[str]] = {
    "spleen": [
        "splenomegaly",
        "no splenomegaly",
        "a hypodense splenic lesion",
        "the spleen is normal in size",
        "an enlarged spleen",
    ],
    "right kidney": ["a {right} renal cyst", "{right} kidney stone", "hydronephrosis of the {right} kidney"],
    "left kidney": ["a {left} renal cyst", "{left} kidney lesion", "a mass in the {left} kidney"],
    "gallbladder": [
        "gallstones",
        "a distended gall bladder",
        "gallbladder wall thickening",
        "no cholecystitis",
        "GB sludge",
    ],
    "esophagus": ["esophageal wall thickening", "a dilated oesophagus", "thickening of the esophagus"],
    "liver": [
        "hepatomegaly",
        "a hypodense liver lesion",
        "hepatic steatosis",
        "multiple hepatic metastases",
        "a cirrhotic liver",
    ],
    "stomach": ["gastric wall thickening", "a distended stomach", "a gastric mass"],
    "aorta": ["an abdominal aortic aneurysm", "aortic calcification", "a normal calibre aorta", "AAA"],
    "inferior vena cava": [
        "a filling defect in the IVC",
        "thrombus in the inferior vena cava",
        "a compressed postcava",
    ],
    "portal vein and splenic vein": ["portal vein thrombosis", "a dilated splenic vein", "patent portal vein"],
    "pancreas": ["a pancreatic head mass", "acute pancreatitis", "an atrophic pancreas", "a dilated pancreatic duct"],
    "right adrenal gland": ["a {right} adrenal nodule", "a {right} adrenal adenoma"],
    "left adrenal gland": ["a {left} adrenal mass", "a {left} suprarenal nodule"],
    "myocardium": ["myocardial thickening", "a myocardial infarct", "hypertrophic cardiomyopathy"],
    "left atrium": ["an enlarged left atrium", "a dilated LA", "thrombus in the left atrial appendage"],
    "left ventricle": ["LV dilatation", "a dilated left ventricle", "left ventricular hypertrophy"],
    "right atrium": ["a dilated right atrium", "an enlarged RA"],
    "right ventricle": ["RV enlargement", "a dilated right ventricle"],
    "ascending aorta": ["a dilated ascending aorta", "an aneurysm of the aortic root"],
    "pulmonary artery": [
        "a dilated pulmonary trunk",
        "pulmonary artery enlargement",
        "a main pulmonary artery embolus",
    ],
}
_SIDES = {"right": ["right", "right", "R", "rt"], "left": ["left", "left", "L", "lt"]}
_ABDOMEN_OPENERS = [
    "Axial contrast-enhanced CT of the abdomen showing",
    "CT abdomen demonstrates",
    "Axial CT image reveals",
    "Contrast-enhanced computed tomography shows",
]
_HEART_OPENERS = [
    "Cardiac CT angiography showing",
    "Axial CT of the chest demonstrates",
    "CT image of the heart reveals",
]
_FILLERS = ["", " (arrow)", " (arrowheads)", ", consistent with the clinical history"]
_TAG_OF_BTCV = BTCV_CLASSES
_TAG_OF_MMWHS = MMWHS_VALUES
_ROCO_SPLITS = (("train", 1.0), ("validation", 0.25), ("test", 0.25))
_ROCO_WINDOW_HU = (-175.0, 250.0)  # the same window the segmentation bundles use: what is learned transfers
_CARDIAC_FRACTION = 0.2
_MASK_VALUES = {t: i + 1 for i, t in enumerate(DEFAULT_TAGS)}  # organ masks of the demo ROCO images: tag number


def _caption(rng: np.random.Generator, visible: list[str], cardiac: bool) -> str:
    """A report sentence naming a random non-empty subset of the visible organs (the rest are omitted)."""
    n = int(rng.integers(1, min(4, len(visible)) + 1))
    chosen = [visible[i] for i in rng.choice(len(visible), size=n, replace=False)]
    findings = []
    for organ in chosen:
        m = str(rng.choice(_MENTIONS[organ]))
        m = m.replace("{right}", str(rng.choice(_SIDES["right"]))).replace("{left}", str(rng.choice(_SIDES["left"])))
        findings.append(m)
    text = findings[0] if n == 1 else ", ".join(findings[:-1]) + " and " + findings[-1]
    opener = str(rng.choice(_HEART_OPENERS if cardiac else _ABDOMEN_OPENERS))
    return f"{opener} {text}{rng.choice(_FILLERS)}."


def _to_uint8(hu: np.ndarray, window=_ROCO_WINDOW_HU) -> np.ndarray:
    lo, hi = window
    return (np.clip((hu - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def write_roco(out_dir: str | os.PathLike, n: int = 64, seed: int = 0, size: int = 128) -> Path:
    """Write a ROCO-layout data set of ``n`` training pairs (+ n/4 validation, n/4 test) under ``out_dir/data``.

    Beside ROCO's files each split gets ``masks/<ROCO_ID>.png`` (the phantom's organs, pixel value = tag number as
    listed in ``masks/labels.json``, 0 elsewhere): not part of ROCO, they let the pre-training evaluation measure
    whether the tag attention points at the organ (:class:`mosmos_components.metrics.PointingGame`).

    Returns the ``data`` folder (the one holding ``train/``, ``validation/``, ``test/``).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    root = Path(out_dir) / "data"
    counter = 0
    for split, frac in _ROCO_SPLITS:
        folder = root / split / "radiology"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        captions, keywords, dlinks = [], [], []
        for _ in range(max(2, int(round(n * frac)))):
            counter += 1
            roco_id = f"ROCO_{counter:05d}"
            cardiac = rng.random() < _CARDIAC_FRACTION
            phantom = (HeartPhantom if cardiac else AbdomenPhantom)(rng)
            names = _TAG_OF_MMWHS if cardiac else _TAG_OF_BTCV
            while True:  # a slice that shows at least one structure
                z = float(rng.uniform(*phantom.z_range))
                hu, label = phantom.axial_slice(z, size, fov_mm=360.0 if not cardiac else 260.0)
                present, counts = np.unique(label[label > 0], return_counts=True)
                visible = [names[int(v)] for v, c in zip(present, counts) if c >= 8 and int(v) in names]
                if visible:
                    break
            hu = hu + rng.normal(0, 12.0, hu.shape)
            Image.fromarray(_to_uint8(hu)).save(folder / "images" / f"{roco_id}.jpg", quality=92)
            organ_mask = np.zeros(label.shape, dtype=np.uint8)  # the phantom's organs as tag numbers (pointing game)
            for v, name in names.items():
                if name in _MASK_VALUES:
                    organ_mask[label == v] = _MASK_VALUES[name]
            (folder / "masks").mkdir(exist_ok=True)
            Image.fromarray(organ_mask).save(folder / "masks" / f"{roco_id}.png")
            caption = _caption(rng, visible, cardiac)
            captions.append(f"{roco_id}\t {caption}")
            keywords.append(f"{roco_id}\t {'cardiac ct' if cardiac else 'abdominal ct'}")
            pmc = f"PMC{1000000 + counter}"
            dlinks.append(f"{roco_id}\t wget https://example.invalid/{pmc}.tar.gz\t {pmc}_{roco_id.lower()}.jpg")
        labels = json.dumps({str(v): k for k, v in _MASK_VALUES.items()}, indent=1)
        (folder / "masks" / "labels.json").write_text(labels, encoding="utf-8")
        for name, lines in (("captions.txt", captions), ("keywords.txt", keywords), ("dlinks.txt", dlinks)):
            (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def write_btcv(
    out_dir: str | os.PathLike,
    n: int = 10,
    seed: int = 0,
    shape: tuple[int, int, int] = (96, 96, 48),
    spacing: tuple[float, float, float] = (4.0, 4.0, 4.5),
) -> Path:
    """Write ``n`` BTCV-layout cases (``RawData/Training/img|label``) under ``out_dir``; returns ``out_dir``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    img_dir, lab_dir = root / "RawData" / "Training" / "img", root / "RawData" / "Training" / "label"
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        phantom = AbdomenPhantom(rng)
        case_spacing = tuple(float(s) * float(rng.uniform(0.95, 1.05)) for s in spacing)
        hu, label, affine = phantom.volume(tuple(shape), case_spacing)
        label[label > max(BTCV_CLASSES)] = 0  # organs BTCV does not annotate stay in the image, unlabelled
        img = nib.Nifti1Image(hu, affine)
        img.header.set_xyzt_units("mm")
        lab = nib.Nifti1Image(label.astype(np.uint8), affine)
        lab.header.set_xyzt_units("mm")
        nib.save(img, img_dir / f"img{i:04d}.nii.gz")
        nib.save(lab, lab_dir / f"label{i:04d}.nii.gz")
    return root


def _save(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


# phantom ids -> AMOS 2022 ids (portal/splenic vein is not an AMOS class)
AMOS_FROM_PHANTOM = {
    1: 1,
    2: 2,
    3: 3,
    4: 4,
    5: 5,
    6: 6,
    7: 7,
    8: 8,
    9: 9,
    10: 0,
    11: 10,
    12: 11,
    13: 12,
    14: 13,
    15: 14,
    16: 15,
}
AMOS_NAMES = [
    "background",
    "spleen",
    "right kidney",
    "left kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "postcava",
    "pancreas",
    "right adrenal gland",
    "left adrenal gland",
    "duodenum",
    "bladder",
    "prostate/uterus",
]
# T1-like MR intensities of the labelled structures (phantom ids); vessels are bright with contrast
_MRI_ORGANS = {
    1: 420.0,
    2: 520.0,
    3: 520.0,
    4: 120.0,
    5: 300.0,
    6: 600.0,
    7: 250.0,
    8: 800.0,
    9: 750.0,
    10: 780.0,
    11: 480.0,
    12: 380.0,
    13: 380.0,
    14: 330.0,
    15: 100.0,
    16: 350.0,
}


def write_amos(
    out_dir: str | os.PathLike,
    n: int = 9,
    seed: int = 0,
    n_mri: int | None = None,
    shape: tuple[int, int, int] = (80, 80, 64),
    spacing: tuple[float, float, float] = (4.5, 4.5, 5.0),
) -> Path:
    """AMOS 2022 layout: ``dataset.json`` + ``imagesTr/labelsTr`` (2/3) and ``imagesVa/labelsVa`` (1/3); ids up to
    500 are CT (HU), ids above 500 MRI (no bladder and prostate/uterus labels, as in AMOS)."""
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    n_mri = max(1, n // 3) if n_mri is None else n_mri
    lut = np.zeros(max(AMOS_FROM_PHANTOM) + 1, np.uint8)
    for k, v in AMOS_FROM_PHANTOM.items():
        lut[k] = v
    cases = [(f"amos_{i:04d}", "ct") for i in range(1, n - n_mri + 1)] + [
        (f"amos_{500 + i:04d}", "mri") for i in range(1, n_mri + 1)
    ]
    entries: dict[str, list] = {"training": [], "validation": []}
    for j, (case, modality) in enumerate(cases):
        phantom = AbdomenPhantom(rng)
        hu, label, affine = phantom.volume(tuple(shape), spacing)
        amos = lut[label]
        if modality == "mri":
            image = mri_intensities(hu.astype(np.float32), label, _MRI_ORGANS, rng)
            amos[amos >= 14] = 0  # AMOS MRI has no bladder / prostate-uterus labels
        else:
            image = hu
        split = "validation" if j % 3 == 2 else "training"
        folder = "Va" if split == "validation" else "Tr"
        _save(image, affine, root / f"images{folder}" / f"{case}.nii.gz")
        _save(amos, affine, root / f"labels{folder}" / f"{case}.nii.gz")
        entries[split].append({"image": f"./images{folder}/{case}.nii.gz", "label": f"./labels{folder}/{case}.nii.gz"})
    meta = {
        "name": "AMOS (MOSMOS synthetic demo)",
        "description": "synthetic phantoms in the AMOS 2022 layout",
        "modality": {"0": "CT", "1": "MRI"},
        "labels": {str(i): n for i, n in enumerate(AMOS_NAMES)},
        "numTraining": len(entries["training"]),
        "numValidation": len(entries["validation"]),
        **entries,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=4), encoding="utf-8")
    return root


def write_mmwhs(
    out_dir: str | os.PathLike,
    n: int = 10,
    seed: int = 0,
    shape: tuple[int, int, int] = (72, 72, 56),
    spacing: tuple[float, float, float] = (2.5, 2.5, 2.5),
) -> Path:
    """MM-WHS MRI layout: ``mr_train/mr_train_10XX_image.nii.gz`` + ``..._label.nii.gz`` with the raw label values
    205, 420, 500, 550, 600, 820, 850."""
    rng = np.random.default_rng(seed)
    folder = Path(out_dir) / "mr_train"
    organs = {205: 250.0, 420: 700.0, 500: 720.0, 550: 690.0, 600: 710.0, 820: 760.0, 850: 740.0}
    for i in range(1, n + 1):
        phantom = HeartPhantom(rng)
        hu, label, affine = phantom.volume(tuple(shape), spacing, noise_hu=0.0)
        image = mri_intensities(hu.astype(np.float32), label, organs, rng)
        _save(image, affine, folder / f"mr_train_{1000 + i}_image.nii.gz")
        _save(label.astype(np.int16), affine, folder / f"mr_train_{1000 + i}_label.nii.gz")
    return Path(out_dir)


def write_brats(
    out_dir: str | os.PathLike,
    n: int = 10,
    seed: int = 0,
    shape: tuple[int, int, int] = (64, 64, 48),
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0),
) -> Path:
    """MSD Task01_BrainTumour layout: ``dataset.json`` + ``imagesTr/BRATS_XXX.nii.gz`` (4 channels: FLAIR, T1w,
    T1gd, T2w) and ``labelsTr`` (1 edema, 2 non-enhancing tumour, 3 enhancing tumour)."""
    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    training = []
    for i in range(1, n + 1):
        image, label, affine = BrainPhantom(rng).volume(tuple(shape), spacing)
        name = f"BRATS_{i:03d}.nii.gz"
        _save(image, affine, root / "imagesTr" / name)
        _save(label, affine, root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": "BRATS (MOSMOS synthetic demo)",
        "tensorImageSize": "4D",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": n,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=4), encoding="utf-8")
    return root


DEMO_KINDS = {"roco": write_roco, "btcv": write_btcv, "amos": write_amos, "mmwhs": write_mmwhs, "brats": write_brats}


def write_demo_data(out_dir: str | os.PathLike, kind: str = "roco", n: int | None = None, seed: int = 0) -> Path:
    """Dispatch to the writer of ``kind`` (see :data:`DEMO_KINDS`)."""
    if kind not in DEMO_KINDS:
        raise ValueError(f"unknown demo data kind '{kind}'; choose one of {sorted(DEMO_KINDS)}")
    kwargs = {"seed": seed} if n is None else {"seed": seed, "n": n}
    return DEMO_KINDS[kind](out_dir, **kwargs)
