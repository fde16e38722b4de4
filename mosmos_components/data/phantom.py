"""Anatomical phantoms shared by every synthetic data set of the project.

One abdomen (the 13 BTCV organs) and one heart (the 7 MM-WHS structures) are described in millimetres in
patient coordinates and sampled at any set of points, so that the
2D ROCO-like slices and the 3D BTCV-like volumes come from the *same* anatomy: what pre-training learns on
the slices transfers to the volumes.

Coordinates are RAS+ as in NIfTI (x grows toward the patient's right, y anterior, z superior), so right-sided
organs (liver, right kidney, IVC) have x > 0. Intensities are CT Hounsfield units (portal-venous phase); every
subject varies in size, position, rotation and per-organ shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BTCV_CLASSES",
    "ABDOMEN_EXTRA",
    "MMWHS_VALUES",
    "AbdomenPhantom",
    "HeartPhantom",
    "BrainPhantom",
    "mri_intensities",
]

# BTCV label ids (docs/method.md §6); the names are the pre-training tags.
BTCV_CLASSES: dict[int, str] = {
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal vein and splenic vein",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}
# Organs the abdomen phantom also has, outside BTCV's 13 (AMOS annotates them); internal ids of the phantom.
ABDOMEN_EXTRA: dict[int, str] = {14: "duodenum", 15: "bladder", 16: "prostate/uterus"}
# MM-WHS raw label values -> structure (tag names).
MMWHS_VALUES: dict[int, str] = {
    205: "myocardium",
    420: "left atrium",
    500: "left ventricle",
    550: "right atrium",
    600: "right ventricle",
    820: "ascending aorta",
    850: "pulmonary artery",
}


@dataclass
class _Shape:
    kind: str  # "ellipsoid" or "tube"
    a: np.ndarray  # ellipsoid centre / tube start (mm)
    b: np.ndarray  # ellipsoid radii / tube end (mm)
    r: float = 0.0  # tube radius (mm)

    def inside(self, p: np.ndarray) -> np.ndarray:
        """``p``: (N, 3) points in mm -> (N,) bool."""
        if self.kind == "ellipsoid":
            return (((p - self.a) / self.b) ** 2).sum(-1) <= 1.0
        d = self.b - self.a
        t = np.clip(((p - self.a) @ d) / max(float(d @ d), 1e-6), 0.0, 1.0)
        return ((p - (self.a + t[:, None] * d)) ** 2).sum(-1) <= self.r**2


# (label, HU mean, shapes as (kind, a, b, r)); painted in this order, later over earlier.
_ABDOMEN = [
    (6, 100.0, [("ellipsoid", (70, 5, 40), (85, 80, 70), 0)]),
    (1, 110.0, [("ellipsoid", (-95, -40, 45), (26, 42, 45), 0)]),
    (7, 35.0, [("ellipsoid", (-55, 35, 45), (42, 35, 40), 0)]),
    (2, 160.0, [("ellipsoid", (65, -55, -15), (26, 30, 50), 0)]),
    (3, 160.0, [("ellipsoid", (-65, -55, -5), (26, 30, 50), 0)]),
    (4, 10.0, [("ellipsoid", (45, 40, -15), (16, 20, 30), 0)]),
    (11, 90.0, [("ellipsoid", (-15, -5, 5), (70, 15, 14), 0)]),
    (12, 45.0, [("ellipsoid", (45, -48, 50), (11, 7, 20), 0)]),
    (13, 45.0, [("ellipsoid", (-48, -48, 45), (11, 7, 20), 0)]),
    (5, 45.0, [("tube", (-15, -35, 50), (-12, -32, 110), 9)]),
    (9, 140.0, [("tube", (22, -42, -110), (20, -40, 70), 11)]),
    (8, 180.0, [("tube", (-20, -48, -110), (-18, -45, 110), 12)]),
    (10, 170.0, [("tube", (-80, -20, 15), (0, -8, 12), 6), ("tube", (0, -8, 12), (45, 5, 30), 8)]),
    (14, 40.0, [("tube", (40, 15, 15), (48, 5, -15), 9), ("tube", (48, 5, -15), (5, -5, -28), 9)]),
    (15, 10.0, [("ellipsoid", (0, 35, -125), (35, 28, 25), 0)]),
    (16, 45.0, [("ellipsoid", (0, 12, -150), (16, 14, 14), 0)]),
]

# MM-WHS heart: (value, HU, shapes); the myocardium is the shell left once the LV blood pool is painted over it.
_HEART = [
    (205, 110.0, [("ellipsoid", (-15, 10, 0), (42, 38, 55), 0)]),
    (600, 320.0, [("ellipsoid", (20, 35, -5), (35, 18, 45), 0)]),
    (500, 330.0, [("ellipsoid", (-15, 10, 0), (30, 26, 42), 0)]),
    (420, 310.0, [("ellipsoid", (-10, -40, 40), (28, 18, 22), 0)]),
    (550, 310.0, [("ellipsoid", (40, -10, 35), (25, 22, 28), 0)]),
    (820, 340.0, [("tube", (0, -10, 45), (8, -20, 110), 14)]),
    (850, 320.0, [("tube", (10, 30, 40), (-20, 10, 100), 13)]),
]


class _Phantom:
    """Random instance of an anatomy: global scale, shift, rotation about z and per-shape jitter."""

    table: list = []
    background_shapes: list = []

    def __init__(self, seed: int | np.random.Generator = 0, variation: float = 1.0) -> None:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.rng = rng
        self.scale = 1.0 + variation * rng.uniform(-0.08, 0.08, size=3)
        self.shift = variation * rng.uniform(-8.0, 8.0, size=3)
        angle = np.deg2rad(variation * rng.uniform(-8.0, 8.0))
        c, s = np.cos(angle), np.sin(angle)
        self.rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        self.organs = []
        for label, hu, shapes in self.table:
            size = 1.0 + variation * rng.uniform(-0.15, 0.15, size=3)
            jitter = variation * rng.uniform(-5.0, 5.0, size=3)
            built = []
            for kind, a, b, r in shapes:
                a, b = np.asarray(a, float), np.asarray(b, float)
                if kind == "ellipsoid":
                    built.append(_Shape(kind, a + jitter, b * size))
                else:
                    built.append(_Shape(kind, a + jitter, b + jitter, r * float(size.mean())))
            self.organs.append((label, hu + variation * rng.uniform(-10, 10), built))

    def _to_model(self, points: np.ndarray) -> np.ndarray:
        """World mm (N, 3) -> the phantom's reference frame."""
        return ((points - self.shift) @ self.rot) / self.scale

    def sample(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``points``: (N, 3) RAS mm -> (HU float32 (N,), label int32 (N,)), without noise."""
        p = self._to_model(np.asarray(points, dtype=np.float64))
        hu = np.full(len(p), -1000.0)
        label = np.zeros(len(p), dtype=np.int32)
        self._paint_background(p, hu)
        for value, organ_hu, shapes in self.organs:
            m = np.zeros(len(p), dtype=bool)
            for shape in shapes:
                m |= shape.inside(p)
            hu[m] = organ_hu
            label[m] = value
        return hu.astype(np.float32), label

    def _paint_background(self, p: np.ndarray, hu: np.ndarray) -> None:
        body = (p[:, 0] / 165.0) ** 2 + (p[:, 1] / 125.0) ** 2
        hu[body <= 1.0] = 55.0  # muscle wall
        hu[(p[:, 0] / 150.0) ** 2 + (p[:, 1] / 110.0) ** 2 <= 1.0] = -100.0  # fat
        spine = (p[:, 0] ** 2 + (p[:, 1] + 88.0) ** 2) <= 22.0**2
        hu[spine] = 500.0

    def volume(
        self, shape: tuple[int, int, int], spacing: tuple[float, float, float], noise_hu: float = 15.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A volume stored like a scanner export (LPS voxel axes): returns (HU int16, label, RAS affine 4x4).

        Voxel (i, j, k) is at RAS ``affine @ (i, j, k, 1)``; the first two axes run toward -x and -y.
        """
        spacing = np.asarray(spacing, float)
        extent = (np.asarray(shape) - 1) * spacing
        affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
        affine[:3, 3] = [extent[0] / 2, extent[1] / 2, -extent[2] / 2]
        ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
        xyz = ijk * np.diag(affine)[:3] + affine[:3, 3]
        hu, label = self.sample(xyz)
        hu = hu + self.rng.normal(0.0, noise_hu, size=hu.shape)
        return (
            np.clip(hu, -1024, 3071).reshape(shape).astype(np.int16),
            label.reshape(shape),
            affine,
        )

    def axial_slice(self, z_mm: float, size: int, fov_mm: float) -> tuple[np.ndarray, np.ndarray]:
        """An axial slice (size x size) at height ``z_mm``, displayed radiologically (patient's right on the
        image's left, anterior up): returns (HU float32, label)."""
        c = (np.arange(size) - (size - 1) / 2) * fov_mm / size
        rows, cols = np.meshgrid(c, c, indexing="ij")
        xyz = np.stack([-cols.ravel(), -rows.ravel(), np.full(rows.size, z_mm)], -1)
        hu, label = self.sample(xyz)
        return hu.reshape(size, size), label.reshape(size, size)


class AbdomenPhantom(_Phantom):
    """Abdomen with the 13 BTCV organs (label ids of :data:`BTCV_CLASSES`)."""

    table = _ABDOMEN
    z_range = (-100.0, 100.0)


class HeartPhantom(_Phantom):
    """Heart with the 7 MM-WHS structures (raw label values of :data:`MMWHS_VALUES`) inside a thorax."""

    table = _HEART
    z_range = (-50.0, 90.0)

    def _paint_background(self, p: np.ndarray, hu: np.ndarray) -> None:
        super()._paint_background(p, hu)
        lungs = ((np.abs(p[:, 0]) - 75.0) / 60.0) ** 2 + (p[:, 1] / 85.0) ** 2 <= 1.0
        hu[lungs] = -850.0


def mri_intensities(
    hu: np.ndarray, label: np.ndarray, organ_values: dict[int, float], rng: np.random.Generator, noise: float = 20.0
) -> np.ndarray:
    """A T1-like MR image from a phantom sample: background tissues by their CT class (air, fat, muscle/organ,
    bone), labelled structures by ``organ_values``; arbitrary units with Rician-like noise, as float32."""
    out = np.where(hu < -500, 5.0, np.where(hu < -50, 900.0, np.where(hu > 300, 150.0, 320.0)))
    for value, intensity in organ_values.items():
        out[label == value] = intensity
    out = np.abs(out + rng.normal(0, noise, size=out.shape) + 1j * rng.normal(0, noise, size=out.shape))
    return out.astype(np.float32)


class BrainPhantom:
    """A head with a brain tumour, sampled as MSD Task01 stores it: 4 channels (FLAIR, T1w, T1gd, T2w) and MSD
    labels 1 edema, 2 non-enhancing tumour, 3 enhancing tumour (the enhancing rim around a non-enhancing core,
    inside the edema). Per-subject tumour position and size vary."""

    # tissue -> (FLAIR, T1w, T1gd, T2w)
    TISSUE = {
        "air": (0, 0, 0, 0),
        "skull": (150, 300, 300, 120),
        "brain": (400, 500, 500, 400),
        "csf": (100, 150, 150, 900),
        "edema": (800, 350, 350, 800),
        "core": (300, 200, 200, 700),
        "enhancing": (500, 400, 900, 500),
    }

    def __init__(self, seed: int | np.random.Generator = 0) -> None:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.rng = rng
        self.head = np.array([70.0, 85.0, 65.0]) * rng.uniform(0.92, 1.08, 3)
        side = rng.choice([-1.0, 1.0])
        self.centre = np.array([side * rng.uniform(20, 40), rng.uniform(-30, 30), rng.uniform(-10, 25)])
        self.r_wt = rng.uniform(18, 30) * rng.uniform(0.85, 1.15, 3)
        self.r_tc = self.r_wt * rng.uniform(0.45, 0.65)
        self.r_core = self.r_tc * rng.uniform(0.4, 0.7)

    def volume(
        self, shape: tuple[int, int, int], spacing: tuple[float, float, float], noise: float = 25.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns (image float32 (H, W, D, 4), MSD label uint8 (H, W, D), RAS affine)."""
        spacing = np.asarray(spacing, float)
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = -(np.asarray(shape) - 1) * spacing / 2
        ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
        p = ijk * spacing + affine[:3, 3]
        tissue = np.full(len(p), "air", dtype=object)
        r_head = ((p / self.head) ** 2).sum(-1)
        tissue[r_head <= 1.0] = "skull"
        tissue[r_head <= 0.85] = "brain"
        ventricles = ((np.abs(p[:, 0]) - 10) / 7) ** 2 + (p[:, 1] / 25) ** 2 + ((p[:, 2] - 5) / 12) ** 2 <= 1
        tissue[ventricles] = "csf"
        label = np.zeros(len(p), np.uint8)
        for name, radii, value in (("edema", self.r_wt, 1), ("enhancing", self.r_tc, 3), ("core", self.r_core, 2)):
            inside = (((p - self.centre) / radii) ** 2).sum(-1) <= 1.0
            inside &= r_head <= 0.85
            tissue[inside] = name
            label[inside] = value
        table = np.array([self.TISSUE[t] for t in tissue], dtype=np.float32)
        image = table + self.rng.normal(0, noise, table.shape)
        image[tissue == "air"] = 0.0  # MSD volumes are skull-stripped-like with a zero background
        return (np.clip(image, 0, None).reshape(*shape, 4).astype(np.float32), label.reshape(shape), affine)
