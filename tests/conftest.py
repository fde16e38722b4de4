import json
import warnings
from pathlib import Path
from types import MappingProxyType

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

warnings.filterwarnings("ignore", message=".*initialised RANDOMLY.*")


# the settings every bundle run in the tests uses (the btcv_dir fixture's grid; tests override what they need)
TINY_RUN = {
    "pixdim": [8.0, 8.0, 9.0],
    "roi_size": [32, 32, 16],
    "slice_size": 32,
    "max_epochs": 1,
    "val_interval": 1,
    "warmup_epochs": 1,
    "num_workers": 0,
    "cache_rate": 0.0,
    "show_progress": False,
    "num_samples": 1,
    "sw_batch_size": 1,
}


TINY_PRETRAIN = {"batch_size": 16, "num_workers": 0, "show_progress": False}


class BundleRun:
    """Runs a bundle in the tests: its config files by name, and the overrides that point it at a data set, an
    output folder and (segmentation bundles) pre-trained weights, with the tiny settings (:data:`TINY_RUN`,
    :data:`TINY_PRETRAIN`)."""

    def settings(self, bundle: str) -> dict:
        """The tiny settings for ``bundle`` (a copy, e.g. for an experiment spec's overrides)."""
        return dict(TINY_PRETRAIN if bundle == "mosmos_pretrain" else TINY_RUN)

    def configs(self, bundle: str) -> Path:
        return REPO / "bundles" / bundle / "configs"

    def files(self, bundle: str, *names: str) -> list[str]:
        return [str(self.configs(bundle) / n) for n in names]

    def overrides(self, bundle: str, data, tmp: Path, pretrained_ckpt="unused", **kw) -> dict:
        """``dataset_dir`` is ``data``, ``ckpt_dir`` and ``output_dir`` go under ``tmp``; ``kw`` wins over
        everything (``dataset_dir=`` included)."""
        settings = self.settings(bundle)
        if bundle != "mosmos_pretrain":
            settings["pretrained_ckpt"] = str(pretrained_ckpt)
        return {
            **settings,
            "bundle_root": str(REPO / "bundles" / bundle),
            "dataset_dir": str(data),
            "ckpt_dir": str(tmp / "models"),
            "output_dir": str(tmp / "eval"),
            "logging_file": str(self.configs(bundle) / "logging.conf"),
            **kw,
        }

    def __call__(self, bundle: str, configs, data, tmp: Path, pretrained_ckpt="unused", **kw) -> dict:
        """``monai.bundle.run`` on ``configs`` (names in the bundle's configs/) with :meth:`overrides`; returns them."""
        return self.rerun(bundle, configs, self.overrides(bundle, data, tmp, pretrained_ckpt, **kw))

    def command(self, bundle: str, configs, overrides: dict) -> list[str]:
        """The same run as a command line: ``-m monai.bundle run --config_file [...] --key value ...`` (put
        ``sys.executable`` or a ``torch.distributed.run`` launcher before it)."""
        args = ["-m", "monai.bundle", "run", "--config_file", str(self.files(bundle, *configs))]
        for k, v in overrides.items():
            args += [f"--{k}", json.dumps(v) if isinstance(v, list) else str(v)]
        return args

    def rerun(self, bundle: str, configs, overrides: dict) -> dict:
        """``monai.bundle.run`` on ``configs`` with exactly ``overrides`` (those of an earlier run, changed)."""
        from monai.bundle import run

        run(config_file=self.files(bundle, *configs), **overrides)
        return overrides


@pytest.fixture(scope="session")
def bundle_run():
    """:class:`BundleRun`: ``bundle_run("btcv_seg", ["train.json", "demo.json"], data, tmp, ckpt, max_epochs=2)``."""
    return BundleRun()


@pytest.fixture(scope="session")
def repo():
    """The repository's root."""
    return REPO


@pytest.fixture(scope="session")
def tiny_unetr():
    """The tiny UNETR of demo.json (the `pretrained` fixture's tiny ViT fits it), one place for every test
    (read-only: ``dict(tiny_unetr, ...)`` for a variant)."""
    return MappingProxyType(
        dict(hidden_size=64, num_layers=4, num_heads=2, embed_dim=64, feature_size=8, decoder_heads=4, quick_gelu=True)
    )


@pytest.fixture(scope="session")
def tiny_unet():
    """The tiny 2D U-Net (the `pretrained` fixture's tiny ResNet fits it); read-only."""
    return MappingProxyType(
        dict(
            layers=(1, 1, 1, 1),
            width=16,
            embed_dim=64,
            attn_heads=8,
            decoder_channels=(64, 32, 16, 16, 8),
            decoder_heads=4,
        )
    )


@pytest.fixture(scope="session")
def roco_dir(tmp_path_factory):
    from mosmos_components.data.synthetic import write_roco

    return write_roco(tmp_path_factory.mktemp("roco"), n=48, seed=1)


@pytest.fixture(scope="session")
def btcv_dir(tmp_path_factory):
    from mosmos_components.data.synthetic import write_btcv

    return write_btcv(tmp_path_factory.mktemp("btcv"), n=5, seed=1, shape=(48, 48, 24), spacing=(8.0, 8.0, 9.0))


def _shared_sample(name: str, marker: str, what: str) -> Path:
    """``../shared/data/<name>``, or the test is skipped where ``<name>/<marker>`` is absent."""
    folder = SHARED_DATA / name
    if not (folder / marker).exists():
        pytest.skip(f"{what} not available at {folder}")
    return folder


@pytest.fixture(scope="session")
def real_ct():
    """The real abdominal CT crop of ../shared."""
    return _shared_sample("abdomen_ct_crop", "image.nii.gz", "real CT sample")


@pytest.fixture(scope="module")
def medpix():
    """The MedPix 2.0 sample of ../shared."""
    return _shared_sample("medpix2_sample", "MedPix-2-0/Descriptions.json", "MedPix 2.0 sample")


@pytest.fixture(scope="module")
def acdc():
    """The ACDC sample of ../shared, official layout."""
    return _shared_sample("acdc_sample", "database/training", "ACDC sample")


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    """Tiny 'pre-trained' checkpoints for both backbones (random weights suffice to test the plumbing)."""
    import torch

    from mosmos_components.checkpoint import save_network
    from mosmos_components.networks import MosmosPretrainNet

    out = {}
    for name in ("mosmos-tiny-vit", "mosmos-tiny-rn"):
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(name) / "model.pt"
        save_network(MosmosPretrainNet(name, decoder_heads=4), path)
        out[name] = path
    return out


@pytest.fixture(scope="session")
def clip_weights(tmp_path_factory):
    """A local CLIP weights file (open_clip state dict of the tiny ViT CLIP), as a user would give for the CLIP
    baselines; and the CLIP-baseline checkpoint written from it."""
    import open_clip
    import torch

    from mosmos_components.networks.mosmos_clip import register_model_configs
    from mosmos_components.transfer import save_clip_checkpoint

    register_model_configs()
    torch.manual_seed(3)
    clip = open_clip.create_model("mosmos-tiny-vit", force_quick_gelu=True)
    folder = tmp_path_factory.mktemp("clip")
    torch.save(clip.state_dict(), folder / "clip_weights.pt")
    save_clip_checkpoint(folder / "model.pt", "mosmos-tiny-vit", str(folder / "clip_weights.pt"), force_quick_gelu=True)
    return {"weights": folder / "clip_weights.pt", "ckpt": folder / "model.pt", "clip": clip.eval()}


# gloo on CPU sometimes aborts a rank while the TCP pairs connect ("terminate called without an active exception",
# SIGABRT; upstream: pytorch/pytorch#188266, pytorch/gloo#514). A torchrun test whose rank died that way, before any
# of our code reported an error, is run once more; any other failure fails the test.
GLOO_ABORT = "terminate called without an active exception"


def _run_torchrun(cmd, **kwargs):
    import subprocess

    res = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if res.returncode != 0 and GLOO_ABORT in res.stderr and "MOSMOS error" not in res.stderr:
        warnings.warn(
            "torchrun: a gloo rank aborted while connecting (upstream flake); running once more", stacklevel=2
        )
        res = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    return res


@pytest.fixture(scope="session")
def torchrun():
    """``torchrun(cmd, **subprocess_kwargs)``: a torchrun command, run once more after gloo's connection flake."""
    return _run_torchrun


def write_ct_series(
    folder,
    n=6,
    uid=None,
    description="axial CT",
    skip=(),
    spacing=2.5,
    start=0,
    pixels=None,
    pixel_spacing=(0.8, 0.8),
    prefix="IM",
    study=None,
):
    """A small CT series written like a scanner: no file suffix, one file per slice; ``pixels`` (n, rows, columns)
    in HU, else a 16 x 20 ramp. ``uid=""`` leaves SeriesInstanceUID empty, as many anonymisers do."""
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid() if uid is None else uid
    study, frame_of_reference = study or generate_uid(), generate_uid()
    for i in range(n):
        if i in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesDescription = study, uid, description
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "anon", i + 1
        ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "Anon^Patient", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.SeriesNumber, ds.FrameOfReferenceUID = "", 1, frame_of_reference
        ds.ImagePositionPatient = [0.0, 0.0, start + i * spacing]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = list(pixel_spacing), spacing
        plane = np.full((16, 20), 1000 + 10 * i - 1024) if pixels is None else np.asarray(pixels[i])
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (plane + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"{prefix}{i:04d}", enforce_file_format=True)
    return uid


@pytest.fixture
def ct_series():
    """:func:`write_ct_series`: writes a DICOM CT series into a folder."""
    return write_ct_series
