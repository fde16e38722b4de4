"""ACDC's official layout from the preprocessed HDF5 volumes of the HiLab-git/WSL4MIS repository.

    python scripts/acdc_from_h5.py SRC_DIR OUT_DIR [--spacing 1.5625 1.5625 10] [--overwrite]

SRC_DIR holds ``patientNNN_frameFF.h5`` (WSL4MIS ``data/ACDC/ACDC_training_volumes/``: ``image`` float32 (z, y, x)
scaled to [0, 1], ``label`` uint8: 1 right-ventricle cavity, 2 myocardium, 3 left-ventricle cavity). OUT_DIR gets
``database/training/patientNNN/patientNNN_frameFF.nii.gz`` + ``..._gt.nii.gz`` and ``Info.cfg`` as ACDC ships them
(images (x, y, z)), which the ``acdc_seg`` bundle reads, plus a README saying what differs from the original:

* the files carry no spacing: the nominal 1.5625 x 1.5625 x 10 mm (ACDC's most common) is written in the affine,
  so distances and volumes (HD95 in mm) are approximate;
* ``ED``/``ES`` are the lower/higher of a patient's two frame numbers (ACDC's end-diastole is its first frame);
* ``Group`` follows ACDC's training-set order (001-020 DCM, 021-040 HCM, 041-060 MINF, 061-080 NOR, 081-100 RV).

Needs ``h5py``. Existing output files are kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

GROUPS = ((20, "DCM"), (40, "HCM"), (60, "MINF"), (80, "NOR"), (100, "RV"))
_NAME = re.compile(r"^(patient\d{3})_frame(\d{2})\.h5$")


def group_of(patient: str) -> str:
    number = int(patient[-3:])
    return next((g for top, g in GROUPS if number <= top), "")


def convert(src: Path, out: Path, spacing=(1.5625, 1.5625, 10.0), overwrite: bool = False) -> list[str]:
    try:
        import h5py
    except ImportError as e:  # an optional dependency of this script only
        raise SystemExit("acdc_from_h5.py needs h5py: pip install h5py") from e
    frames: dict[str, list[tuple[int, Path]]] = {}
    for f in sorted(Path(src).glob("*.h5")):
        m = _NAME.match(f.name)
        if m:
            frames.setdefault(m.group(1), []).append((int(m.group(2)), f))
    if not frames:
        raise FileNotFoundError(f"no patientNNN_frameFF.h5 file in {src}")
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    written = []
    for patient, items in sorted(frames.items()):
        if len(items) != 2:
            raise ValueError(f"{src}: {patient} has {len(items)} frame file(s); ACDC has two (ED and ES)")
        folder = Path(out) / "database" / "training" / patient
        folder.mkdir(parents=True, exist_ok=True)
        for frame, path in items:
            with h5py.File(path, "r") as h5:
                if "image" not in h5 or "label" not in h5:
                    raise ValueError(f"{path}: expected datasets 'image' and 'label', found {list(h5)}")
                image = np.asarray(h5["image"], dtype=np.float32).transpose(2, 1, 0)
                label = np.asarray(h5["label"]).astype(np.uint8).transpose(2, 1, 0)
            if image.shape != label.shape:
                raise ValueError(f"{path}: image {image.shape} and label {label.shape} differ")
            if set(np.unique(label).tolist()) - {0, 1, 2, 3}:
                raise ValueError(f"{path}: label values {sorted(set(np.unique(label).tolist()))} outside 0-3")
            stem = f"{patient}_frame{frame:02d}"
            for arr, name in ((image, f"{stem}.nii.gz"), (label, f"{stem}_gt.nii.gz")):
                target = folder / name
                if target.exists() and not overwrite:
                    continue
                nib.save(nib.Nifti1Image(arr, affine), target)
                written.append(str(target))
        (ed, _), (es, _) = sorted(items)
        info = folder / "Info.cfg"
        if overwrite or not info.exists():
            info.write_text(f"ED: {ed}\nES: {es}\nGroup: {group_of(patient)}\n", encoding="utf-8")
    readme = Path(out) / "README.md"
    readme.write_text(
        "# ACDC training set in its official layout, from HiLab-git/WSL4MIS's preprocessed HDF5 volumes\n\n"
        f"Written by MOSMOS's scripts/acdc_from_h5.py from {src}: {len(frames)} patients, both frames each.\n\n"
        f"* Voxel spacing: **nominal** {spacing[0]} x {spacing[1]} x {spacing[2]} mm (the HDF5 files carry none): "
        "distances and volumes are approximate.\n"
        "* Intensities: as preprocessed there (clipped at the 99th percentile, scaled to [0, 1]).\n"
        "* Info.cfg: ED/ES = the lower/higher frame number; Group from ACDC's training-set order.\n"
        "* Labels: 0 background, 1 right-ventricle cavity, 2 myocardium, 3 left-ventricle cavity.\n\n"
        "ACDC: research use; cite Bernard et al., IEEE TMI 37(11), 2018.\n",
        encoding="utf-8",
    )
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--spacing", type=float, nargs=3, default=(1.5625, 1.5625, 10.0))
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    written = convert(Path(a.src), Path(a.out), tuple(a.spacing), a.overwrite)
    print(f"wrote {len(written)} NIfTI file(s) under {Path(a.out) / 'database' / 'training'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
