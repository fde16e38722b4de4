"""mosmos segment: the label map lands on the input's exact grid (RAS, LPS, oblique; NIfTI and DICOM), statistics
equal a hand count, DICOM SEG reads back, outputs are skipped/overwritten as asked, bad scans are reported while the
others go on."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from mosmos_components.inference import SegmentationModel, load_model, segment, structure_statistics

CT_RANGE = [-175.0, 250.0]


class ThresholdNet(torch.nn.Module):
    """Background / "bright" logits from the windowed intensity: a network whose right answer is known."""

    def forward(self, x):
        return torch.cat([0.5 - x, x - 0.5], dim=1) * 20


def threshold_model(pixdim=(2.0, 2.0, 2.5), roi=(16, 16, 8)):
    return SegmentationModel(
        network=ThresholdNet(),
        path=__import__("pathlib").Path("threshold/models/model.pt"),
        class_names=["background", "bright"],
        in_channels=1,
        pixdim=list(pixdim),
        modality="ct",
        intensity_range=CT_RANGE,
        roi_size=list(roi),
        overlap=0.25,
        axcodes="RAS",
        slice_inference=False,
        sigmoid=False,
    )


def cube_volume(shape=(40, 36, 20)):
    vol = np.full(shape, -500.0, dtype=np.float32)
    vol[10:28, 8:24, 5:15] = 200.0  # windowed: 0.88 > 0.5
    return vol


def rotation(deg_z, deg_x):
    a, b = np.deg2rad(deg_z), np.deg2rad(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


AFFINES = {
    "ras": np.diag([1.5, 1.5, 3.0, 1.0]),
    "lps": np.array([[-1.5, 0, 0, 30.0], [0, -1.5, 0, 20.0], [0, 0, 3.0, -10.0], [0, 0, 0, 1]]),
    "oblique": np.block(
        [
            [rotation(20, 10) @ np.diag([1.5, 1.5, 3.0]), np.array([[5.0], [-7.0], [12.0]])],
            [np.zeros((1, 3)), np.ones((1, 1))],
        ]
    ),
}


@pytest.mark.parametrize("orientation", sorted(AFFINES))
def test_label_map_is_on_the_inputs_exact_grid(tmp_path, orientation):
    vol = cube_volume()
    img = nib.Nifti1Image(vol, AFFINES[orientation])
    img.set_qform(AFFINES[orientation], 1)
    img.set_sform(AFFINES[orientation], 2)
    nib.save(img, tmp_path / "scan.nii.gz")
    res = segment(tmp_path / "scan.nii.gz", tmp_path / "out", threshold_model(), device="cpu", progress=False)
    assert not res["failed"]
    out = nib.load(tmp_path / "out" / "scan.nii.gz")
    assert out.shape == vol.shape and np.array_equal(out.affine, img.affine)
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 2
    assert out.get_data_dtype() == np.uint8
    pred, truth = np.asarray(out.dataobj), vol > 0
    dice = 2 * (pred.astype(bool) & truth).sum() / (pred.astype(bool).sum() + truth.sum())
    assert dice > 0.93, dice  # resampled to 2 x 2 x 2.5 mm and back: only boundary voxels may move
    assert pred[19, 16, 10] == 1 and pred[2, 2, 2] == 0


def test_keep_largest_removes_fragments_away_from_the_organ_and_only_when_asked(tmp_path):
    vol = cube_volume()
    vol[34:37, 30:33, 16:18] = 200.0  # a second, small bright piece far from the cube
    nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 2.5, 1.0])), tmp_path / "scan.nii.gz")
    out = {}
    for keep in (False, True, "bright", ["bright"]):
        res = segment(
            tmp_path / "scan.nii.gz", tmp_path / f"out_{keep}", threshold_model(), progress=False, keep_largest=keep
        )
        assert not res["failed"], res["failed"]
        assert ("keep_largest" in res["done"][0]["stage_seconds"]) == (keep is not False)
        out[str(keep)] = np.asarray(nib.load(tmp_path / f"out_{keep}" / "scan.nii.gz").dataobj)
    assert out["False"][35, 31, 17] == 1 and out["False"][19, 16, 10] == 1  # the network finds both pieces
    for keep in ("True", "bright", "['bright']"):
        assert out[keep][35, 31, 17] == 0  # the small piece is gone
        assert np.array_equal(out[keep][:30, :28], out["False"][:30, :28])  # the cube is untouched
    for bad, match in (("kidney", r"--keep_largest: \['kidney'\] are not structures"), (3, "structure names")):
        with pytest.raises(ValueError, match=match):
            segment(tmp_path / "scan.nii.gz", tmp_path / "bad", threshold_model(), progress=False, keep_largest=bad)


def test_keep_largest_without_scikit_image_says_how_to_install_it_before_any_scan(tmp_path, monkeypatch):
    import monai.utils

    nib.save(nib.Nifti1Image(cube_volume(), np.diag([2.0, 2.0, 2.5, 1.0])), tmp_path / "scan.nii.gz")
    monkeypatch.setattr(monai.utils, "optional_import", lambda name, *a, **k: (None, False))
    with pytest.raises(ImportError, match=r'needs scikit-image .*pip install "mosmos\[post\]"'):
        segment(tmp_path / "scan.nii.gz", tmp_path / "out", threshold_model(), progress=False, keep_largest=True)
    assert not (tmp_path / "out" / "scan.nii.gz").exists()


def test_keep_largest_joins_components_across_faces_only():
    from mosmos_components.inference.labels import keep_largest_components

    label = torch.zeros(6, 6, 4, dtype=torch.int16)
    label[0:3, 0:3, 0:2] = 1  # 18 voxels
    label[5, 5, 3] = 1  # a fragment of class 1
    label[3, 3, 3] = label[3, 4, 3] = 2  # class 2: two voxels sharing a face...
    label[4, 5, 2] = 2  # ...and one touching them at a corner only
    label[4, 0, 0] = 2
    before = label.clone()
    kept = keep_largest_components(label, [1, 2])
    assert torch.equal(label, before)  # the input is left as it was
    assert kept.dtype == torch.int16 and int((kept == 1).sum()) == 18 and int((kept == 2).sum()) == 2
    assert kept[3, 4, 3] == 2 and kept[4, 5, 2] == 0 and kept[5, 5, 3] == 0
    assert torch.equal(keep_largest_components(label, [2])[label == 1], label[label == 1])  # class 1 untouched
    assert torch.equal(keep_largest_components(label, []), label)


class CountingNet(torch.nn.Module):
    """``ThresholdNet``, or "bright" everywhere with ``everywhere``, counting the voxels the windows hand it."""

    def __init__(self, everywhere=False):
        super().__init__()
        self.everywhere, self.voxels = everywhere, 0

    def forward(self, x):
        self.voxels += x.numel()
        if self.everywhere:
            return torch.cat([-torch.ones_like(x), torch.ones_like(x)], dim=1)
        return ThresholdNet()(x)


@pytest.mark.parametrize("everywhere", [False, True])
def test_windows_cover_the_body_not_the_air_around_it(tmp_path, everywhere):
    vol = np.full((60, 56, 20), -1000.0, dtype=np.float32)  # air
    vol[20:44, 18:40, 4:16] = 0.0  # the body: above the window's floor (-175 HU), below "bright"
    vol[26:36, 24:32, 8:12] = 200.0
    nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 2.5, 1.0])), tmp_path / "scan.nii.gz")
    labels, seen = {}, {}
    for crop in (True, False):
        m = threshold_model()
        m.network = CountingNet(everywhere)
        res = segment(tmp_path / "scan.nii.gz", tmp_path / f"out_{crop}", m, progress=False, crop_foreground=crop)
        assert not res["failed"]
        labels[crop] = np.asarray(nib.load(tmp_path / f"out_{crop}" / "scan.nii.gz").dataobj)
        seen[crop] = m.network.voxels
    assert labels[True].shape == vol.shape
    assert seen[True] < 0.5 * seen[False]  # the box is a tenth of the field of view
    body = np.zeros(vol.shape, bool)
    body[20:44, 18:40, 4:16] = True
    if everywhere:  # outside the box the crop answers background; without it the network's answer stands
        assert labels[True][body].all() and not labels[True][~body].any() and labels[False].all()
    else:  # a network that is right everywhere gives the same labels either way
        assert np.array_equal(labels[True], labels[False]) and labels[True][30, 28, 10] == 1


def test_a_scan_of_air_alone_is_segmented_on_its_whole_grid(tmp_path):
    vol = np.full((30, 28, 12), -1000.0, dtype=np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 2.5, 1.0])), tmp_path / "air.nii.gz")
    m = threshold_model()
    m.network = CountingNet(everywhere=True)
    res = segment(tmp_path / "air.nii.gz", tmp_path / "out", m, progress=False)
    assert not res["failed"], res["failed"]  # MONAI's own select_fn would crop it to nothing
    out = np.asarray(nib.load(tmp_path / "out" / "air.nii.gz").dataobj)
    assert out.shape == vol.shape and out.all()


def test_statistics_equal_a_hand_count():
    label = np.zeros((10, 8, 6), dtype=np.uint8)
    label[2:5, 1:3, 0:2] = 1  # 12 voxels
    intensity = np.arange(label.size, dtype=np.float32).reshape(label.shape)
    affine = np.array([[2.0, 0, 0, -10], [0, 2.0, 0, 5], [0, 0, 3.0, 1], [0, 0, 0, 1]])
    rows = structure_statistics(label, intensity, affine, ["liver", "spleen"])
    liver, spleen = rows
    assert liver["voxels"] == 12 and liver["volume_ml"] == pytest.approx(12 * 12 / 1000)
    vals = intensity[label == 1]
    assert liver["intensity_mean"] == pytest.approx(vals.mean()) and liver["intensity_sd"] == pytest.approx(vals.std())
    assert liver["intensity_median"] == pytest.approx(np.median(vals))
    assert liver["bbox_min_mm"] == [2 * 2 - 10, 1 * 2 + 5, 0 + 1]
    assert liver["bbox_max_mm"] == [4 * 2 - 10, 2 * 2 + 5, 3 + 1]
    assert spleen == {"structure": "spleen", "label": 2, "present": False, "voxels": 0, "volume_ml": 0.0}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_unetr):
    """A saved MOSMOS UNETR (random weights) with the sidecar a bundle writes."""
    from mosmos_components.checkpoint import save_network
    from mosmos_components.networks import MosmosUNETR

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("bundle") / "models"
    net = MosmosUNETR(
        1,
        3,
        img_size=(32, 32, 16),
        class_names=["background", "liver", "spleen"],
        **tiny_unetr,
    )
    net.pta.set_class_embeddings(torch.randn(3, 64))  # as transferred from a pre-trained text encoder
    save_network(
        net,
        folder / "model.pt",
        extra={
            "data": {"pixdim": [4.0, 4.0, 4.0], "intensity_range": CT_RANGE, "modality": "ct"},
            "inference": {"roi_size": [32, 32, 16], "overlap": 0.25, "axcodes": "RAS", "slice_inference": False},
        },
    )
    return folder.parent


def test_cli_writes_masks_statistics_and_preview_and_skips_what_exists(tiny_model, tmp_path, capsys):
    from mosmos_components.cli import MosmosCLI

    nib.save(nib.Nifti1Image(cube_volume(), np.diag([2.0, 2.0, 3.0, 1])), tmp_path / "a.nii.gz")
    line = MosmosCLI().segment(
        str(tmp_path / "a.nii.gz"),
        str(tmp_path / "out"),
        str(tiny_model),
        device="cpu",
        split=True,
        roi_subset="spleen",
        statistics=True,
        preview=True,
        keep_largest="spleen",
    )
    assert "1 scan(s) segmented" in line and "keep_largest" in capsys.readouterr().out  # its stage is timed
    assert sorted(p.name for p in (tmp_path / "out" / "a").iterdir()) == ["spleen.nii.gz"]  # only the subset
    stats = json.loads((tmp_path / "out" / "a_statistics.json").read_text())
    assert [s["structure"] for s in stats["structures"]] == ["spleen"] and stats["modality"] == "ct"
    mask = np.asarray(nib.load(tmp_path / "out" / "a" / "spleen.nii.gz").dataobj)
    assert stats["structures"][0]["voxels"] == int(mask.sum())
    assert (tmp_path / "out" / "a_statistics.csv").read_text().startswith("structure,label,present")
    assert (tmp_path / "out" / "a_preview.png").stat().st_size > 1000
    before = (tmp_path / "out" / "a" / "spleen.nii.gz").stat().st_mtime_ns
    line = MosmosCLI().segment(
        str(tmp_path / "a.nii.gz"),
        str(tmp_path / "out"),
        str(tiny_model),
        device="cpu",
        split=True,
        roi_subset="spleen",
    )
    assert "1 skipped" in line and (tmp_path / "out" / "a" / "spleen.nii.gz").stat().st_mtime_ns == before
    MosmosCLI().segment(
        str(tmp_path / "a.nii.gz"),
        str(tmp_path / "out"),
        str(tiny_model),
        device="cpu",
        split=True,
        roi_subset="spleen",
        overwrite=True,
    )
    assert (tmp_path / "out" / "a" / "spleen.nii.gz").stat().st_mtime_ns != before


def test_a_bad_scan_is_reported_and_the_others_go_on(tiny_model, tmp_path):
    from mosmos_components.cli import MosmosCLI

    scans = tmp_path / "scans"
    scans.mkdir()
    nib.save(nib.Nifti1Image(cube_volume(), np.diag([2.0, 2.0, 3.0, 1])), scans / "good.nii.gz")
    (scans / "broken.nii.gz").write_bytes((scans / "good.nii.gz").read_bytes()[:300])  # truncated
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 10, 2), np.float32), np.eye(4)), scans / "two_channel.nii.gz")
    with pytest.raises(RuntimeError) as err:
        MosmosCLI().segment(str(scans), str(tmp_path / "out"), str(tiny_model), device="cpu")
    msg = str(err.value)
    assert "1 scan(s) segmented" in msg and "2 failed" in msg and "broken.nii.gz" in msg
    assert "two_channel.nii.gz: 2 channel(s), expected 1" in msg  # the channel mismatch names both
    assert (tmp_path / "out" / "good.nii.gz").is_file() and not (tmp_path / "out" / "broken.nii.gz").exists()


def test_compile_option_gives_the_eager_labels(tiny_model, tmp_path):
    """``mosmos segment --compile``: the network through torch.compile, the same label map (to float rounding at
    near-ties of a random network); exported models are refused."""
    import dataclasses

    from mosmos_components.cli import MosmosCLI
    from mosmos_components.inference import compiled

    nib.save(nib.Nifti1Image(cube_volume(), np.diag([2.0, 2.0, 3.0, 1])), tmp_path / "scan.nii.gz")
    for flag in (False, True):
        MosmosCLI().segment(
            str(tmp_path / "scan.nii.gz"), str(tmp_path / f"out{flag}"), str(tiny_model), device="cpu", compile=flag
        )
    eager, comp = (np.asarray(nib.load(tmp_path / f"out{f}" / "scan.nii.gz").dataobj) for f in (False, True))
    assert eager.shape == comp.shape and (eager == comp).mean() > 0.999
    m = load_model(tiny_model)
    assert isinstance(compiled(m).network, torch._dynamo.eval_frame.OptimizedModule)
    with pytest.raises(ValueError, match="not to an exported model"):
        compiled(dataclasses.replace(m, path=m.path.with_suffix(".onnx")))


def test_the_model_comes_from_its_sidecar_and_bad_requests_are_named(tiny_model, tmp_path):
    m = load_model(tiny_model)
    assert (m.pixdim, m.roi_size, m.overlap, m.structures) == ([4.0, 4.0, 4.0], [32, 32, 16], 0.25, ["liver", "spleen"])
    with pytest.raises(FileNotFoundError, match="no model.pt found"):
        load_model(tmp_path)
    nib.save(nib.Nifti1Image(cube_volume(), np.eye(4)), tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match=r"\['kidney'\] are not structures of this model"):
        segment(tmp_path / "a.nii.gz", tmp_path / "out", m, device="cpu", roi_subset="liver,kidney")


def test_dicom_series_in_nifti_and_dicom_seg_out(tmp_path, ct_series):
    pytest.importorskip("highdicom")
    import highdicom as hd

    vol = np.full((6, 24, 20), -500, dtype=np.int16)  # (slices, rows, columns) in HU
    vol[1:5, 6:18, 4:12] = 200
    ct_series(tmp_path / "scan", n=6, pixels=vol, pixel_spacing=(1.5, 1.5), spacing=3.0)
    res = segment(
        tmp_path / "scan", tmp_path / "out", threshold_model(pixdim=(2.0, 2.0, 3.0)), device="cpu", progress=False
    )
    assert not res["failed"]
    nii = nib.load(tmp_path / "out" / "scan.nii.gz")
    assert nii.shape == (20, 24, 6)  # columns, rows, slices: MONAI's grid of the series
    res = segment(
        tmp_path / "scan",
        tmp_path / "out",
        threshold_model(pixdim=(2.0, 2.0, 3.0)),
        device="cpu",
        output_type="dicom_seg",
        progress=False,
    )
    assert not res["failed"], res["failed"]
    seg = hd.seg.segread(tmp_path / "out" / "scan_seg.dcm")
    assert seg.get_segment_description(1).segment_label == "bright"
    from mosmos_components.dicom_seg import source_instances

    sources = source_instances({"image": str(tmp_path / "scan")})
    pixels = seg.get_pixels_by_source_instance([str(s.SOPInstanceUID) for s in sources], combine_segments=True)
    expected = np.stack([s.pixel_array.astype(int) - 1024 > 0 for s in sources])
    agree = (np.asarray(pixels) == expected).mean()
    assert agree > 0.97, agree  # each frame is its own source slice's segmentation
    nifti_in = tmp_path / "n.nii.gz"
    nib.save(nib.Nifti1Image(cube_volume(), np.eye(4)), nifti_in)
    res = segment(nifti_in, tmp_path / "out2", threshold_model(), device="cpu", output_type="dicom_seg", progress=False)
    assert "needs a DICOM series as input" in res["failed"][0]["error"]


def test_locate_writes_one_distribution_per_name_on_the_input_grid(pretrained, tmp_path):
    from mosmos_components.cli import MosmosCLI
    from mosmos_components.locate import locate

    affine = AFFINES["lps"]
    nib.save(nib.Nifti1Image(cube_volume((30, 28, 7)), affine), tmp_path / "scan.nii.gz")
    res = locate(tmp_path / "scan.nii.gz", ["liver", "pineal gland"], pretrained["mosmos-tiny-vit"], tmp_path / "out")
    assert [r["zero_shot"] for r in res["names"].values()] == [False, True]  # a training tag, an open-set name
    for r in res["names"].values():
        heat = nib.load(r["map"])
        assert heat.shape == (30, 28, 7) and np.array_equal(heat.affine, affine)
        values = np.asarray(heat.dataobj, dtype=np.float64)
        assert values.min() >= 0 and values.sum() == pytest.approx(1.0, abs=1e-4)
        assert values[tuple(r["peak_voxel"])] == values.max()
    assert (tmp_path / "out" / "scan_locate.png").stat().st_size > 1000
    with pytest.raises(FileExistsError, match="scan_liver.nii.gz exists"):
        MosmosCLI().locate(
            str(tmp_path / "scan.nii.gz"),
            "liver",
            model=str(pretrained["mosmos-tiny-vit"]),
            output_dir=str(tmp_path / "out"),
        )
    line = MosmosCLI().locate(
        str(tmp_path / "scan.nii.gz"),
        "liver",
        "pineal gland",
        overwrite=True,
        model=str(pretrained["mosmos-tiny-vit"]),
        output_dir=str(tmp_path / "out"),
    )
    assert "pineal gland (zero-shot" in line
    # the Python name follows the command's (--model); the former keyword still works, with a warning
    with pytest.warns(FutureWarning, match=r"locate\(pretrained=\) was renamed locate\(model=\)"):
        again = locate(
            tmp_path / "scan.nii.gz",
            ["liver", "pineal gland"],
            pretrained=pretrained["mosmos-tiny-vit"],
            output_dir=tmp_path / "o2",
        )
    assert [r["peak_voxel"] for r in again["names"].values()] == [r["peak_voxel"] for r in res["names"].values()]
    # each name is decoded among the training tags alone: its map does not depend on the other names asked with it
    for name in ("liver", "pineal gland"):
        alone = locate(tmp_path / "scan.nii.gz", [name], pretrained["mosmos-tiny-vit"], tmp_path / f"alone_{name}")
        np.testing.assert_allclose(
            np.asarray(nib.load(alone["names"][name]["map"]).dataobj),
            np.asarray(nib.load(res["names"][name]["map"]).dataobj),
            rtol=1e-5,
            atol=1e-9,
        )
    with pytest.raises(TypeError, match="got both 'model' and 'pretrained'"):
        locate(tmp_path / "scan.nii.gz", ["liver"], "a.pt", tmp_path / "o3", pretrained="b.pt")


def test_names_that_are_no_training_tag_cost_one_decoding_each(pretrained):
    """Zero-shot names are each decoded with the training tags appended; the tags alone are decoded only when a
    name asked is one of them."""
    import torch

    from mosmos_components.checkpoint import load_pretrain_network
    from mosmos_components.locate import name_queries, slice_attention

    net = load_pretrain_network(pretrained["mosmos-tiny-vit"]).eval()
    calls = []
    decode = net.decoder.forward
    net.decoder.forward = lambda queries, *a, **k: calls.append(queries.shape[0]) or decode(queries, *a, **k)
    with torch.inference_mode():
        context = net.tag_queries()
    slices = torch.rand(2, 24, 24)
    queries, known = name_queries(net, ["pineal gland", "cochlea"])
    assert known == [False, False]
    slice_attention(net, slices, queries, context=context, rows=[None, None])
    assert calls == [context.shape[0] + 1] * 2  # one decoding per name, none of the context alone
    calls.clear()
    queries, _ = name_queries(net, [net.tags[0], "cochlea"])
    slice_attention(net, slices, queries, context=context, rows=[0, None])
    assert calls == [context.shape[0], context.shape[0] + 1]
