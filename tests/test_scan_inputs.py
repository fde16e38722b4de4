"""Scans as they come from the real world: anonymised DICOM series, series that share a UID, impossible
geometry, a folder with one bad scan among good ones."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pytest
from test_segment import cube_volume, threshold_model

from mosmos_components.data.datalist import inference_inputs
from mosmos_components.transforms import LoadImageNamed


def test_a_series_with_an_empty_series_uid_is_grouped_and_read(tmp_path, ct_series):
    ct_series(tmp_path / "scan", n=7, uid="")  # anonymised: the UID left empty
    items = inference_inputs(tmp_path / "scan")
    assert len(items) == 1 and items[0]["series_uid"].startswith("no-uid-")
    assert len(items[0]["series_files"]) == 7
    img = LoadImageNamed("image", image_only=True)(items[0])["image"]
    assert tuple(img.shape) == (20, 16, 7)
    np.testing.assert_allclose(img.pixdim[:3].tolist(), [0.8, 0.8, 2.5], atol=1e-4)


def test_two_uid_less_series_in_one_folder_are_told_apart(tmp_path, ct_series):
    ct_series(tmp_path / "scan", n=4, uid="", description="soft tissue")
    ct_series(tmp_path / "scan", n=3, uid="", description="lung", prefix="LU", start=200)
    with pytest.raises(ValueError, match="holds 2 DICOM series") as info:
        inference_inputs(tmp_path / "scan")
    keys = [w for w in str(info.value).replace(";", " ").split() if w.startswith("no-uid-")]
    assert len(set(keys)) == 2 and "(lung, 3 files)" in str(info.value)
    chosen = [inference_inputs(tmp_path / "scan", series_uid=k)[0] for k in keys]
    assert sorted(len(c["series_files"]) for c in chosen) == [3, 4]
    assert LoadImageNamed("image", image_only=True)(chosen[0])["image"].shape[-1] == len(chosen[0]["series_files"])


def test_two_series_sharing_one_uid_interleaved_are_refused(tmp_path, ct_series):
    # the same UID on two acquisitions 1 mm apart: read as one they would make a 1 mm volume of alternating slices
    ct_series(tmp_path / "scan", n=5, uid="1.2.826.0.1.3680043.8.498.1", description="soft tissue", spacing=2.0)
    ct_series(
        tmp_path / "scan", n=5, uid="1.2.826.0.1.3680043.8.498.1", description="bone", spacing=2.0, start=1, prefix="B"
    )
    with pytest.raises(ValueError, match=r"disagree on SeriesDescription.*two series share one UID"):
        inference_inputs(tmp_path / "scan")


def test_duplicated_slice_positions_are_refused(tmp_path, ct_series):
    ct_series(tmp_path / "scan", n=4, uid="1.2.826.0.1.3680043.8.498.2")
    ct_series(tmp_path / "scan", n=2, uid="1.2.826.0.1.3680043.8.498.2", prefix="DUP")
    with pytest.raises(ValueError, match=r"several slices at one position \(0\.00 mm"):
        inference_inputs(tmp_path / "scan")


def test_one_bad_series_in_a_folder_does_not_stop_the_others(tmp_path, ct_series):
    ct_series(tmp_path / "in" / "good", n=6)
    ct_series(tmp_path / "in" / "gap", n=7, skip=(3,))
    items = inference_inputs(tmp_path / "in", keep_going=True)
    assert [("error" in i) for i in items] == [True, False]  # sorted: gap, good
    assert "not evenly spaced" in items[0]["error"]
    with pytest.raises(ValueError, match="not evenly spaced"):
        inference_inputs(tmp_path / "in")  # the bundles' datalists still stop
    with pytest.raises(ValueError, match="not evenly spaced"):
        inference_inputs(tmp_path / "in" / "gap", keep_going=True)  # a scan given alone


# ----- impossible geometry: refused before any work, naming the file -----


def _patched_nifti(path, affine, pixdim=None, srow_x=None):
    """An uncompressed NIfTI whose header bytes are patched as broken writers leave them."""
    nib.save(nib.Nifti1Image(cube_volume(), affine), path)
    raw = bytearray(path.read_bytes())
    if pixdim is not None:
        raw[80:92] = np.asarray(pixdim, dtype="<f4").tobytes()  # pixdim[1:4]
    if srow_x is not None:
        raw[280:296] = np.asarray(srow_x, dtype="<f4").tobytes()
    path.write_bytes(bytes(raw))
    return path


def _failure(tmp_path, scan, **kw):
    from mosmos_components.inference import segment

    res = segment(scan, tmp_path / "out", threshold_model(), device="cpu", progress=False, **kw)
    assert not res["done"] and not (tmp_path / "out" / scan.name).exists()
    return res["failed"][0]["error"]


@pytest.mark.parametrize(
    "spacing, message",
    [
        (0.01, r"voxel size \[0\.01, 0\.01, 0\.01\] mm is outside 0\.1-30\.0 mm"),
        (50.0, r"voxel size \[50\.0.* outside"),
    ],
)
def test_a_scan_at_an_impossible_spacing_is_refused(tmp_path, spacing, message):
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(cube_volume(), np.diag([spacing] * 3 + [1.0])), scan)
    error = _failure(tmp_path, scan)
    assert "scan.nii.gz" in error and re.search(message, error), error


def test_a_field_of_view_too_small_for_a_body_is_refused_and_limits_can_be_changed(tmp_path):
    from mosmos_components.inference import segment

    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(cube_volume((40, 36, 20)), np.diag([0.11] * 3 + [1.0])), scan)  # 2.2 mm deep
    assert "physical extent" in _failure(tmp_path, scan)
    res = segment(scan, tmp_path / "ok", threshold_model(), device="cpu", progress=False, geometry_limits=False)
    assert res["done"] and not res["failed"]


def test_a_resampled_grid_larger_than_the_memory_is_refused_before_it_is_made(tmp_path):
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(cube_volume(), np.diag([3.0] * 3 + [1.0])), scan)
    error = _failure(tmp_path, scan, geometry_limits={"memory_share": 1e-9})
    assert "resampled to [2.0, 2.0, 2.5] mm it becomes [60, 54, 24] voxels" in error and "available" in error


def test_pixdim_zero_beside_a_valid_sform_is_named(tmp_path):
    scan = _patched_nifti(tmp_path / "scan.nii", np.diag([3.0, 3.0, 3.0, 1.0]), pixdim=[0, 0, 0])
    error = _failure(tmp_path, scan)
    assert "scan.nii" in error and "sform gives voxel sizes [3.0, 3.0, 3.0] mm, pixdim" in error, error


def test_pixdim_zero_without_an_sform_is_named_before_reading(tmp_path):
    img = nib.Nifti1Image(cube_volume(), np.diag([3.0, 3.0, 3.0, 1.0]))
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    nib.save(img, tmp_path / "scan.nii")
    raw = bytearray((tmp_path / "scan.nii").read_bytes())
    raw[80:92] = np.zeros(3, dtype="<f4").tobytes()
    (tmp_path / "scan.nii").write_bytes(bytes(raw))
    scan = tmp_path / "scan.nii"
    assert "no usable geometry" in _failure(tmp_path, scan)


def test_a_nan_in_the_affine_is_named(tmp_path):
    scan = _patched_nifti(tmp_path / "scan.nii", np.diag([2.0, 2.0, 2.0, 1.0]), srow_x=[np.nan, 0, 0, 0])
    assert "sform holds NaN/Inf" in _failure(tmp_path, scan)


def test_a_qform_and_sform_that_disagree_are_named(tmp_path):
    img = nib.Nifti1Image(cube_volume(), None)
    img.set_qform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    img.set_sform(np.diag([3.0, 3.0, 3.0, 1.0]), code=1)
    nib.save(img, tmp_path / "scan.nii.gz")
    error = _failure(tmp_path, tmp_path / "scan.nii.gz")
    assert "sform gives voxel sizes [3.0, 3.0, 3.0] mm, pixdim (and the qform) [1.0, 1.0, 1.0]" in error, error


def test_segment_reports_a_broken_series_and_goes_on_with_the_folder(tmp_path, ct_series):
    from mosmos_components.inference import segment

    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(cube_volume(), np.diag([2.0, 2.0, 3.0, 1])), tmp_path / "in" / "good.nii.gz")
    ct_series(tmp_path / "in" / "gap", n=7, skip=(3,))
    ct_series(tmp_path / "in" / "series", n=6)
    res = segment(tmp_path / "in", tmp_path / "out", threshold_model(), device="cpu", progress=False)
    assert sorted(d["case"] for d in res["done"]) == ["good", "series"]
    assert [f["scan"].rsplit("/", 1)[-1] for f in res["failed"]] == ["gap"]
    assert "not evenly spaced" in res["failed"][0]["error"]
