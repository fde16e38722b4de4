"""The experiment's protocol: label fractions by patient (nested, stratified, chosen by the run's seed), the
learning-rate schedule stepped per iteration, and statistics with the patient as the unit of analysis."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from ignite.engine import Events
from monai.bundle import ConfigParser

from mosmos_components.data.datalist import label_fraction, training_units
from mosmos_components.evaluation import summarize
from mosmos_components.experiment import aggregate, bootstrap_mean_ci

GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")


def _acdc_like(n_patients: int) -> dict:
    """A datalist of ACDC-like items: two frames per patient, the patients spread over the five groups."""
    items = [
        {"image": f"p{i:03d}_{ph}.nii.gz", "label": f"p{i:03d}_{ph}_gt.nii.gz", "patient": f"p{i:03d}", "group": g}
        for i in range(n_patients)
        for g in [GROUPS[i % 5]]
        for ph in ("ED", "ES")
    ]
    return {"training": items, "validation": [], "test": []}


def test_label_fractions_choose_whole_patients_nested_stratified_and_by_seed():
    dl = _acdc_like(70)
    chosen = {}
    for seed in (0, 1, 2):
        for n in (3, 7, 70):
            sub = label_fraction(dl, n / 70, seed, group_key="patient", strata_key="group")["training"]
            patients = training_units({"training": sub}, "patient")
            assert len(patients) == n and len(sub) == 2 * n  # both frames of every chosen patient
            assert len({it["group"] for it in sub}) == min(n, 5)  # as many pathology groups as patients allow
            chosen[seed, n] = set(patients)
        assert chosen[seed, 3] < chosen[seed, 7] < chosen[seed, 70]  # nested for one seed
    assert len({frozenset(chosen[s, 3]) for s in (0, 1, 2)}) == 3  # the seed varies which 3 patients
    assert len({frozenset(chosen[s, 7]) for s in (0, 1, 2)}) == 3
    # without a group key the unit is the case, as before (one seed's subsets nested)
    few, more = (label_fraction(dl, f, 0)["training"] for f in (0.1, 0.5))
    assert len(few) == 14 and all(it in more for it in few)
    with pytest.raises(ValueError, match="have no 'patient'"):
        label_fraction({"training": [{"image": "a"}], "validation": [], "test": []}, 0.5, 0, group_key="patient")


def _write_acdc(root: Path, n_patients: int) -> Path:
    """Tiny volumes in ACDC's official layout (``Info.cfg`` with ED, ES and Group)."""
    for i in range(1, n_patients + 1):
        folder = root / "database" / "training" / f"patient{i:03d}"
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text(f"ED: 1\nES: 9\nGroup: {GROUPS[(i - 1) % 5]}\n")
        for frame in (1, 9):
            image = np.random.default_rng(i).random((8, 8, 2), dtype=np.float32)
            label = np.zeros((8, 8, 2), np.uint8)
            label[2:6, 2:6] = 1 + (i % 3)
            for arr, name in (
                (image, f"patient{i:03d}_frame{frame:02d}"),
                (label, f"patient{i:03d}_frame{frame:02d}_gt"),
            ):
                nib.save(nib.Nifti1Image(arr, np.diag([1.5625, 1.5625, 10.0, 1.0])), folder / f"{name}.nii.gz")
    return root


def test_acdc_bundle_trains_on_the_patients_its_seed_draws(tmp_path, bundle_run):
    data = _write_acdc(tmp_path / "acdc", 20)
    used = {}
    for seed in (0, 1):
        parser = ConfigParser()
        parser.read_config(bundle_run.files("acdc_seg", "train.json", "unet2d.json"))
        parser.update(bundle_run.overrides("acdc_seg", data, tmp_path, label_fraction=0.25, seed=seed))
        parser.get_parsed_content("imports")
        dl = parser.get_parsed_content("datalist")
        patients = training_units(dl, "patient")
        assert len(patients) == 4 and len(dl["training"]) == 8  # 25 % of 14 training patients, both frames
        used[seed] = set(patients)
    assert used[0] != used[1]


def test_learning_rate_is_stepped_per_iteration_without_a_step_at_zero(btcv_dir, tmp_path, bundle_run):
    parser = ConfigParser()
    parser.read_config(bundle_run.files("btcv_seg", "train.json", "demo.json"))
    over = bundle_run.overrides("btcv_seg", btcv_dir, tmp_path, use_pretrained=False, use_pta=False)
    parser.update({**over, "max_epochs": 2, "warmup_epochs": 1, "epoch_length": 3, "learning_rate": 0.01})
    parser.get_parsed_content("imports")
    trainer = parser.get_parsed_content("train#trainer")
    lrs = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: lrs.append(e.optimizer.param_groups[0]["lr"]))
    trainer.run()
    assert trainer.state.iteration == 6  # epoch_length iterations per epoch, whatever the data set's size
    assert len(lrs) == 6 and min(lrs) > 0  # no iteration at learning rate 0
    assert lrs[:3] == sorted(lrs[:3]) and len(set(lrs[:3])) == 3  # warm-up: a new rate every iteration
    assert lrs[2] < 0.01 and lrs[3] == pytest.approx(0.01) and lrs[3] > lrs[4] > lrs[5]  # then cosine decay


def test_statistics_take_the_patient_as_the_unit(tmp_path):
    """Two frames per patient: the tests pair patients (each the mean of its frames, averaged over seeds), with a
    bootstrap CI of the mean difference, against every reference arm."""
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(0)
    classes, patients = ["rv", "myo", "lv"], [f"patient{i:03d}" for i in range(10)]
    cases = {f"{p}_frame{f:02d}_gt.nii.gz": p for p in patients for f in (1, 9)}
    test = [{"image": c.replace("_gt", ""), "label": f"/data/{c}", "patient": p} for c, p in cases.items()]
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [], "validation": [], "test": test}))
    values = {}
    gain = {"random": 0.0, "imagenet": 0.02, "mosmos": 0.05}
    for init in gain:
        for seed in (0, 1):
            name = f"{init}__frac0.1__seed{seed}__lambdadefault"
            folder = tmp_path / "cells" / name / "eval" / "report"
            folder.mkdir(parents=True)
            rows = [
                {"case": c, "class": k, "dice": float(rng.uniform(0.5, 0.9)) + gain[init], "hd95": 5.0}
                for c in cases
                for k in classes
            ]
            values[init, seed] = rows
            with open(folder / "per_case.csv", "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=["case", "class", "dice", "hd95"])
                w.writeheader()
                w.writerows(rows)
            done = {"init": init, "label_fraction": 0.1, "seed": seed, "lambda_pta": None, "cell": name}
            done.update(per_case=str(folder / "per_case.csv"), summary=summarize(rows, classes))
            (folder.parent.parent / "done.json").write_text(json.dumps(done))
    spec = {"inits": dict.fromkeys(gain, {}), "reference": ["random", "imagenet"], "unit": "patient"}
    aggregate(tmp_path, spec)
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "results" / "table_frac0.1_lambdadefault.csv"))}

    def per_patient(init):
        def case_mean(seed, c):
            return np.mean([r["dice"] for r in values[init, seed] if r["case"] == c])

        return [np.mean([case_mean(s, c) for s in (0, 1) for c in cases if cases[c] == p]) for p in patients]

    for ref in ("random", "imagenet"):
        a, b = per_patient("mosmos"), per_patient(ref)
        assert float(rows["mosmos"][f"Wilcoxon p Dice per patient vs {ref}"]) == pytest.approx(
            wilcoxon(a, b).pvalue, rel=1e-2
        )
        mean, lo, hi = bootstrap_mean_ci(np.subtract(a, b))
        assert rows["mosmos"][f"Δ mean Dice per patient vs {ref} [95% CI]"] == (
            f"{100 * mean:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
        )
        assert lo < mean < hi
    assert rows["mosmos"]["n patients"] == "10" and rows["random"]["Wilcoxon p Dice per patient vs random"] == "-"
    text = (tmp_path / "results" / "table_frac0.1_lambdadefault.md").read_text()
    assert "10 patients" in text and "smallest possible p 0.00195" in text


def test_random_class_queries_keep_the_transfer_but_not_the_class_identity(pretrained, tiny_unetr):
    """The ablation arm: the pre-trained encoder and tag decoder, class embeddings replaced by mutually orthogonal
    random vectors of the pre-trained norm, fixed by the run's seed."""
    import torch

    from mosmos_components.networks import MosmosUNETR
    from mosmos_components.transfer import prepare_network

    names = ["background", "right ventricle", "myocardium", "left ventricle"]
    nets = {}
    for key, queries, seed in (("pre", "pretrained", 0), ("rand", "random", 0), ("rand_again", "random", 0)):
        torch.manual_seed(seed)
        net = MosmosUNETR(1, 4, img_size=(32, 32, 16), class_names=names, **tiny_unetr)
        nets[key] = prepare_network(net, pretrained["mosmos-tiny-vit"], class_queries=queries)
    pre, rand = nets["pre"].pta.class_embeddings, nets["rand"].pta.class_embeddings
    gram = rand @ rand.t() / rand.norm(dim=-1).mean() ** 2
    assert torch.allclose(gram, torch.eye(4), atol=1e-4)  # orthogonal, equal norms
    assert torch.allclose(rand.norm(dim=-1).mean(), pre.norm(dim=-1).mean(), rtol=1e-4)
    assert torch.equal(rand, nets["rand_again"].pta.class_embeddings)  # the seed fixes them
    assert torch.equal(
        nets["pre"].pta.decoder.state_dict()["layers.0.cross_attn.in_proj_weight"],
        nets["rand"].pta.decoder.state_dict()["layers.0.cross_attn.in_proj_weight"],
    )
    with pytest.raises(ValueError, match="needs use_pta and weights"):
        prepare_network(
            MosmosUNETR(1, 4, img_size=(32, 32, 16), class_names=names, **tiny_unetr), None, class_queries="random"
        )


def test_score_maps_on_a_mosmos_pretraining_keep_its_class_embeddings_without_the_tag_decoder(pretrained, tiny_unetr):
    """The score-map arm (ablations/score_maps.json): MOSMOS's encoder and its learned prompt's class embeddings,
    per-pixel cosine maps instead of the tag decoder's softmax over positions."""
    import torch

    from mosmos_components.networks import MosmosUNETR
    from mosmos_components.transfer import prepare_network

    names = ["background", "right ventricle", "myocardium", "left ventricle"]
    ckpt = pretrained["mosmos-tiny-vit"]
    mosmos = prepare_network(MosmosUNETR(1, 4, img_size=(32, 32, 16), class_names=names, **tiny_unetr), ckpt)
    score = prepare_network(
        MosmosUNETR(1, 4, img_size=(32, 32, 16), class_names=names, pta_mode="score", **tiny_unetr), ckpt
    )
    assert score.pta.decoder is None and not any(k.startswith("pta.decoder") for k in score.state_dict())
    torch.testing.assert_close(score.pta.class_embeddings, mosmos.pta.class_embeddings)  # the learned prompt's
    torch.testing.assert_close(
        score.encoder.state_dict()["transformer.resblocks.0.attn.in_proj_weight"],
        mosmos.encoder.state_dict()["transformer.resblocks.0.attn.in_proj_weight"],
    )
    maps = score.attention_maps(torch.rand(1, 1, 32, 32, 16))
    assert float(maps.abs().max()) <= 1.0 + 1e-5 and not torch.allclose(maps.flatten(2).sum(-1), torch.ones(1, 4))


def test_a_spec_can_run_some_inits_at_a_fraction(tmp_path):
    from mosmos_components.experiment import cells_of, load_spec

    spec = {
        "bundle": "btcv_seg",
        "configs": ["train.json"],
        "dataset_dir": "d",
        "label_fractions": [0.1, 1.0],
        "inits": {"random": {}, "imagenet": {}, "mosmos": {}},
        "fraction_inits": {"1.0": ["random", "mosmos"]},
    }
    (tmp_path / "s.json").write_text(json.dumps(spec))
    cells = cells_of(load_spec(tmp_path / "s.json"))
    assert [(c.fraction, c.init) for c in cells] == [
        (0.1, "random"),
        (0.1, "imagenet"),
        (0.1, "mosmos"),
        (1.0, "random"),
        (1.0, "mosmos"),
    ]
    spec["fraction_inits"] = {"1.0": ["ramdon"]}
    (tmp_path / "s.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="s.json: fraction_inits '1.0' names \\['ramdon'\\]"):
        load_spec(tmp_path / "s.json")


def _order_spec(tmp_path, **changes) -> Path:
    """A two-fraction, two-seed spec (mosmos alone at 1.0 unless ``changes`` say otherwise) in ``tmp_path/s.json``."""
    spec = {
        "bundle": "btcv_seg",
        "configs": ["train.json"],
        "dataset_dir": "d",
        "label_fractions": [0.1, 1.0],
        "seeds": [0, 1],
        "inits": {"random": {}, "mosmos": {}},
        "fraction_inits": {"1.0": ["mosmos"]},
        **changes,
    }
    (tmp_path / "s.json").write_text(json.dumps(spec))
    return tmp_path / "s.json"


def _order(path: Path) -> list[tuple]:
    from mosmos_components.experiment import cells_of, load_spec

    return [(c.fraction, c.seed, c.init) for c in cells_of(load_spec(path))]


def test_a_spec_can_run_the_ceiling_after_every_seed_of_the_scarce_fractions(tmp_path):
    from mosmos_components.experiment import load_spec

    seed_major = _order(_order_spec(tmp_path))
    assert seed_major[:4] == [(0.1, 0, "random"), (0.1, 0, "mosmos"), (1.0, 0, "mosmos"), (0.1, 1, "random")]
    cells = _order(_order_spec(tmp_path, later_fractions=[1.0]))
    assert cells == [
        (0.1, 0, "random"),
        (0.1, 0, "mosmos"),
        (0.1, 1, "random"),
        (0.1, 1, "mosmos"),
        (1.0, 0, "mosmos"),
        (1.0, 1, "mosmos"),
    ]
    assert sorted(cells) == sorted(seed_major)  # the same cells, in another order
    with pytest.raises(ValueError, match=r"s.json: 'later_fractions' must list some of the label_fractions"):
        load_spec(_order_spec(tmp_path, later_fractions=[0.5]))


def test_a_spec_can_run_the_arms_added_when_time_allows_after_every_other_cell(tmp_path):
    from mosmos_components.experiment import load_spec

    inits = {"random": {}, "ssl": {}, "mosmos": {}}
    at_ceiling = {"1.0": ["random", "mosmos"]}
    cells = _order(
        _order_spec(tmp_path, inits=inits, fraction_inits=at_ceiling, later_fractions=[1.0], later_inits=["ssl"])
    )
    assert cells == [
        (0.1, 0, "random"),
        (0.1, 0, "mosmos"),
        (0.1, 1, "random"),
        (0.1, 1, "mosmos"),
        (1.0, 0, "random"),
        (1.0, 0, "mosmos"),
        (1.0, 1, "random"),
        (1.0, 1, "mosmos"),
        (0.1, 0, "ssl"),  # last, seed-major, only where fraction_inits runs it
        (0.1, 1, "ssl"),
    ]
    with pytest.raises(ValueError, match=r"s.json: 'later_inits' must list some of the inits \['mosmos', 'random'"):
        load_spec(_order_spec(tmp_path, inits=inits, later_inits=["sll"]))
