"""mosmos experiment: a grid of tiny btcv_seg cells, resumed after an interruption without running a cell twice,
and aggregated into tables whose numbers are the cells' own (p-values scipy's)."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from mosmos_components.experiment import (
    aggregate,
    cells_of,
    label_efficiency_figure,
    load_spec,
    pretraining_gate,
    run_experiment,
)


@pytest.fixture(scope="module")
def spec_file(btcv_dir, pretrained, tmp_path_factory, bundle_run):
    folder = tmp_path_factory.mktemp("experiment")
    spec = {
        "name": "tiny",
        "bundle": "btcv_seg",
        "configs": ["train.json", "demo.json"],
        "dataset_dir": str(btcv_dir),
        "output_dir": str(folder / "out"),
        "overrides": bundle_run.settings("btcv_seg"),
        "reference": "random",
        "inits": {
            "random": {"use_pretrained": False, "use_pta": False},
            "mosmos": {"pretrained_ckpt": str(pretrained["mosmos-tiny-vit"])},
        },
        "label_fractions": [1.0],
        "seeds": [0, 1],
        "lambdas": [None],
        "fraction_overrides": {"1.0": {"max_epochs": 2}},
        "records": str(folder / "records"),
    }  # (the tiny settings say 1 epoch: this fraction's own wins)
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="module")
def finished(spec_file):
    spec = load_spec(spec_file)
    out = spec["output_dir"]
    first = run_experiment(spec_file, max_cells=3)  # "interrupted" after three cells
    assert (first["ran"], first["skipped"]) == (3, 0)
    # and the third cell as if killed after training, before its evaluation was recorded
    third = cells_of(spec)[2]
    cell_dir = f"{out}/cells/{third.name}"
    import os
    import shutil

    os.remove(f"{cell_dir}/done.json")
    shutil.rmtree(f"{cell_dir}/eval/report")
    second = run_experiment(spec_file)
    return spec, second, third


def test_where_a_cell_ran_names_the_settings_that_chose_its_kernels(monkeypatch):
    """A run whose kernels were chosen by the environment (AVX2 kernels on an AVX-512 processor) says so beside the
    kernels it used; one without such settings records none."""
    from mosmos_components.experiment import KERNEL_SETTINGS, where_it_runs

    for key in KERNEL_SETTINGS:
        monkeypatch.delenv(key, raising=False)
    assert "kernel_settings" not in where_it_runs()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert where_it_runs()["kernel_settings"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_an_interrupted_grid_resumes_without_running_a_cell_twice(finished):
    spec, second, third = finished
    assert (second["ran"], second["skipped"], second["cells"]) == (2, 2, 4)
    for cell in cells_of(spec):
        hist = list(csv.DictReader(open(f"{spec['output_dir']}/cells/{cell.name}/eval/train_history.csv")))
        assert [int(r["epoch"]) for r in hist] == [1, 2], cell.name  # trained once: the resumed cell added no epoch
        done = json.load(open(f"{spec['output_dir']}/cells/{cell.name}/done.json"))
        # its training time counts the epochs of the run that was cut short
        assert done["resumed_at_epoch"] == (2 if cell.name == third.name else 0)
        assert done["train_s"] >= sum(float(r["epoch_s"]) for r in hist) > 0
        import torch  # and where it ran, for that time to be read against

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        assert (done["ran_on"]["device"], done["ran_on"]["torch"]) == (device, torch.__version__)
        assert done["ran_on"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # AVX2, AVX512, ...
        split = json.load(open(f"{spec['output_dir']}/datalist.json"))
        assert done["training_units"] == [Path(it["label"]).name for it in split["training"]]  # what it trained on
    again = run_experiment(spec["_path"])
    assert (again["ran"], again["skipped"]) == (0, 4)
    rows = list(csv.DictReader(open(f"{spec['output_dir']}/results/cells.csv")))
    done = json.load(open(f"{spec['output_dir']}/cells/{third.name}/done.json"))
    mine = [r for r in rows if (r["init"], r["seed"]) == (third.init, str(third.seed))]
    assert mine and {(float(r["train_s"]), r["device"]) for r in mine} == {(done["train_s"], device)}


def test_each_cell_records_the_weights_it_started_from_and_a_table_names_a_mix(finished, tmp_path):
    """A pre-training run twice (on another machine, say) need not give the same weights though its definition,
    and so every recipe, is the same: each cell records the checkpoint's SHA-256, and a table whose method
    started from two checkpoints says which seeds started from which."""
    import shutil

    from mosmos_components.checkpoint import file_sha256

    spec, _, _ = finished
    out = tmp_path / "out"
    shutil.copytree(spec["output_dir"], out)
    ckpt = spec["inits"]["mosmos"]["pretrained_ckpt"]
    for cell in cells_of(spec):
        done = json.loads((out / "cells" / cell.name / "done.json").read_text())
        if cell.init == "mosmos":
            assert done["init_weights"] == {"path": ckpt, "sha256": file_sha256(ckpt)}
        else:
            assert "init_weights" not in done
    table = aggregate(out, spec)["tables"][0]
    assert "more than one pre-trained checkpoint" not in Path(table).read_text()

    second = next(c for c in cells_of(spec) if c.init == "mosmos" and c.seed == 1)
    path = out / "cells" / second.name / "done.json"
    done = json.loads(path.read_text())
    path.write_text(json.dumps(dict(done, init_weights={"path": ckpt, "sha256": "0123456789ab" + "0" * 52})))
    text = Path(aggregate(out, spec)["tables"][0]).read_text()
    sha = file_sha256(ckpt)[:12]
    assert f"mosmos (seed 0 from {sha}; seed 1 from 0123456789ab)" in text


def test_a_grid_goes_on_from_its_small_records_alone(finished, tmp_path):
    """The checkpoints of a grid are large and may be lost with a machine: the runner keeps the spec's ``records``
    folder up to date after each cell with what is enough for it to keep a cell and for the tables to hold its
    numbers — the split and each finished cell's done.json, per-case results and histories, no weights."""
    import shutil

    from mosmos_components.experiment import write_records

    spec, _, third = finished
    kept = Path(spec["records"])
    files = sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
    per_cell = ["done.json", "eval/report/per_case.csv", "eval/train_history.csv", "eval/val_history.csv"]
    assert files == sorted(["datalist.json"] + [f"cells/{c.name}/{f}" for c in cells_of(spec) for f in per_cell])
    # the third cell's record is the one of its evaluation after the interruption, not the first run's, with the
    # paths under the spec's root as the project sees them, not as this machine does
    done = json.loads((Path(spec["output_dir"]) / "cells" / third.name / "done.json").read_text())
    text = (kept / "cells" / third.name / "done.json").read_text()
    record = json.loads(text)
    assert record["per_case"] == f"out/cells/{third.name}/eval/report/per_case.csv"
    assert json.dumps(record) == json.dumps(dict(done, per_case=record["per_case"]))
    assert spec["root"] not in text
    assert write_records(spec, kept) == 0  # nothing changed, nothing rewritten

    out = tmp_path / "records"
    shutil.copytree(kept, out)  # a machine with the records alone
    raw = json.loads(Path(spec["_path"]).read_text())
    (tmp_path / "elsewhere.json").write_text(json.dumps(dict(raw, output_dir=str(out), records=str(out))))
    got = run_experiment(tmp_path / "elsewhere.json")
    assert (got["ran"], got["skipped"]) == (0, 4)
    table = "table_frac1_lambdadefault.csv"
    assert (out / "results" / table).read_text() == (Path(spec["output_dir"]) / "results" / table).read_text()


def test_further_evaluations_of_a_spec_run_once_per_cell_without_training_and_get_tables_of_their_own(
    finished, tmp_path
):
    """``evaluations`` (``{"largest": {"keep_largest": true}}``): every cell is also tested with those overrides of
    evaluate.json, in ``eval/<name>/``; cells finished before the entry was added are evaluated when the runner comes
    by (not trained again), cells without weights are left with a warning; the records keep the results and the
    aggregation writes ``results/<name>/`` tables from them."""
    import shutil

    spec, _, third = finished
    out, records = tmp_path / "out", tmp_path / "records"
    shutil.copytree(spec["output_dir"], out)
    raw = json.loads(Path(spec["_path"]).read_text())
    raw.update(output_dir=str(out), records=str(records), evaluations={"largest": {"keep_largest": True}})
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(raw))
    cells = cells_of(spec)
    history = {c.name: (out / "cells" / c.name / "eval" / "train_history.csv").read_text() for c in cells}
    gone = cells[-1]
    (out / "cells" / gone.name / "models" / "model.pt").unlink()  # as in a grid restored from its records
    (out / "cells" / third.name / "done.json").unlink()  # and one cell cut short after its training
    import logging

    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("mosmos_components.experiment").addHandler(handler)
    try:
        got = run_experiment(path)
    finally:
        logging.getLogger("mosmos_components.experiment").removeHandler(handler)
    assert (got["ran"], got["skipped"]) == (1, 3)
    assert any(f"{gone.name} lacks the evaluation(s) largest and its weights are gone" in m for m in logged)
    for c in cells:
        folder = out / "cells" / c.name
        assert (folder / "eval" / "train_history.csv").read_text() == history[c.name]  # nothing trained again
        done = json.loads((folder / "done.json").read_text())
        if c == gone:
            assert "evaluations" not in done
            continue
        e = done["evaluations"]["largest"]
        assert e["overrides"] == {"keep_largest": True} and e["eval_s"] > 0
        assert Path(e["per_case"]) == folder / "eval" / "largest" / "report" / "per_case.csv"
        assert [r["class"] for r in e["summary"]] == [r["class"] for r in done["summary"]]
        assert (records / "cells" / c.name / "eval" / "largest" / "report" / "per_case.csv").is_file()
        assert json.loads((records / "cells" / c.name / "done.json").read_text())["evaluations"]["largest"]
    table = (out / "results" / "largest" / "table_frac1_lambdadefault.md").read_text()
    assert table.startswith("Evaluation 'largest' ({\"keep_largest\": true}; 3 of 4 cells). Label fraction 1")
    assert (out / "results" / "table_frac1_lambdadefault.md").read_text().startswith("Label fraction 1")
    stamps = {c.name: (out / "cells" / c.name / "done.json").stat().st_mtime_ns for c in cells}
    again = run_experiment(path)  # every evaluation there: none runs again
    assert (again["ran"], again["skipped"]) == (0, 4)
    assert stamps == {c.name: (out / "cells" / c.name / "done.json").stat().st_mtime_ns for c in cells}


def test_a_grid_refuses_cells_made_with_other_settings_than_its_spec_gives(finished, tmp_path):
    """Changing a spec's budget and going on in the same output folder would mix two settings in one table: the
    runner refuses before any cell, naming the cells and the changed settings; a change of description does not
    count, nor do paths (a grid copied elsewhere keeps its cells)."""
    import shutil

    spec, _, third = finished
    out = tmp_path / "out"
    shutil.copytree(spec["output_dir"], out)
    raw = json.loads(Path(spec["_path"]).read_text())
    recipe = json.loads((out / "cells" / third.name / "done.json").read_text())["recipe"]
    assert recipe["overrides"]["max_epochs"] == 2 and "dataset_dir" not in recipe["overrides"]

    moved = dict(raw, output_dir=str(out), description="the same grid, elsewhere")
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    assert (run_experiment(tmp_path / "moved.json")["skipped"]) == 4

    longer = dict(moved, fraction_overrides={"1.0": {"max_epochs": 3}})
    (tmp_path / "longer.json").write_text(json.dumps(longer))
    (out / "cells" / third.name / "done.json").unlink()  # a started cell (recipe.json only) is checked as well
    with pytest.raises(ValueError, match=r"longer.json: 4 cell\(s\) .* other settings") as err:
        run_experiment(tmp_path / "longer.json")
    assert "overrides.max_epochs: 2 -> 3" in str(err.value) and third.name in str(err.value)
    assert not (out / "cells" / third.name / "done.json").exists()  # nothing ran

    other = dict(moved, inits={**raw["inits"], "random": {"use_pretrained": False, "use_pta": True}})
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"overrides.use_pta: false -> true"):
        run_experiment(tmp_path / "other.json")


def test_tables_hold_the_cells_numbers_and_scipys_p_values(finished):
    from scipy.stats import wilcoxon

    spec, second, _ = finished
    out = spec["output_dir"]
    rows = list(csv.DictReader(open(f"{out}/results/table_frac1_lambdadefault.csv")))
    assert [r["method"] for r in rows] == ["random", "mosmos"]
    cells = {c.name: json.load(open(f"{out}/cells/{c.name}/done.json")) for c in cells_of(spec)}
    for init, row in zip(("random", "mosmos"), rows):
        per_seed = [cells[f"{init}__frac1__seed{s}__lambdadefault"] for s in (0, 1)]
        liver = [next(r["dice"] for r in c["summary"] if r["class"] == "liver") for c in per_seed]
        # the spread over seeds is the sample standard deviation (n - 1)
        assert row["liver Dice"] == f"{100 * np.mean(liver):.2f} ± {100 * np.std(liver, ddof=1):.2f}"
        # the cell's summary is its per_case.csv's
        pc = list(csv.DictReader(open(per_seed[0]["per_case"])))
        assert liver[0] == pytest.approx(np.mean([float(r["dice"]) for r in pc if r["class"] == "liver"]))
    classes = [r["class"] for r in cells["random__frac1__seed0__lambdadefault"]["summary"] if r["class"] != "mean"]

    def means(init):
        per = [cells[f"{init}__frac1__seed{s}__lambdadefault"]["summary"] for s in (0, 1)]
        return [float(np.nanmean([next(r["dice"] for r in p if r["class"] == c) for p in per])) for c in classes]

    x, y = means("mosmos"), means("random")
    ok = [i for i in range(len(classes)) if not (math.isnan(x[i]) or math.isnan(y[i]))]
    xs, ys = [x[i] for i in ok], [y[i] for i in ok]
    expected = 1.0 if np.allclose(xs, ys) else wilcoxon(xs, ys).pvalue
    assert float(rows[1]["Wilcoxon p Dice vs random"]) == pytest.approx(expected, rel=1e-2)

    def case_means(init):  # per test case: mean Dice over scored classes, averaged over the seeds
        per = []
        for s in (0, 1):
            rows = [
                r
                for r in csv.DictReader(open(cells[f"{init}__frac1__seed{s}__lambdadefault"]["per_case"]))
                if r["dice"] != "nan"
            ]
            per.append(
                {c: np.mean([float(r["dice"]) for r in rows if r["case"] == c]) for c in {r["case"] for r in rows}}
            )
        return {c: np.mean([p[c] for p in per]) for c in set(per[0]) & set(per[1])}

    a, b = case_means("mosmos"), case_means("random")
    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        xs, ys = [a[c] for c in common], [b[c] for c in common]
        expected = 1.0 if np.allclose(xs, ys) else wilcoxon(xs, ys).pvalue
        assert float(rows[1]["Wilcoxon p Dice per case vs random"]) == pytest.approx(expected, rel=1e-2)
    else:
        assert rows[1]["Wilcoxon p Dice per case vs random"] == "-"
    assert Path(out, "results", "label_efficiency.png").is_file()
    assert json.load(open(f"{out}/spec.json"))["name"] == "tiny"
    assert aggregate(out)["tables"]  # re-aggregation from disk alone
    import os
    import shutil

    moved = Path(out).parent / "moved"  # and after the folder moved, from another working directory
    shutil.copytree(out, moved)
    os.rename(out, f"{out}_away")  # the paths done.json recorded no longer exist
    cwd = os.getcwd()
    try:
        os.chdir(Path(out).parent.parent)
        assert aggregate(moved)["tables"] and (moved / "results" / "qualitative.png").is_file()
    finally:
        os.chdir(cwd)
        os.rename(f"{out}_away", out)
    assert (
        open(moved / "results" / "table_frac1_lambdadefault.csv").read()
        == open(f"{out}/results/table_frac1_lambdadefault.csv").read()
    )


def _write_cells(folder: Path, seeds_of: dict[str, tuple], cases: list[str], classes: list[str]) -> dict:
    """Finished cells as a run leaves them (done.json + eval/report/per_case.csv), random values; an unscored class
    in one case of each. Returns the rows written, by (init, seed)."""
    from mosmos_components.evaluation import summarize

    rng = np.random.default_rng(0)
    values = {}
    for init, seeds in seeds_of.items():
        for seed in seeds:
            name = f"{init}__frac1__seed{seed}__lambdadefault"
            cell = folder / "cells" / name
            report = cell / "eval" / "report"  # where a cell's evaluation writes per_case.csv
            report.mkdir(parents=True)
            rows = [
                {
                    "case": c,
                    "class": k,
                    "dice": float(rng.uniform(0.2, 0.9)) + (0.05 if init == "mosmos" else 0),
                    "hd95": float(rng.uniform(5, 50)),
                }
                for c in cases
                for k in classes
            ]
            rows[0]["dice"] = float("nan")
            values[(init, seed)] = rows
            with open(report / "per_case.csv", "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=["case", "class", "dice", "hd95"])
                w.writeheader()
                w.writerows(rows)
            done = {"init": init, "label_fraction": 1.0, "seed": seed, "lambda_pta": None, "cell": name}
            done.update(per_case=str(report / "per_case.csv"), summary=summarize(rows, classes))
            (cell / "done.json").write_text(json.dumps(done))
    return values


def _per_case_means(values: dict, init: str, seeds, cases: list[str]) -> list[float]:
    """Per case: the mean Dice over its scored classes, averaged over ``seeds``."""
    return [
        np.mean([np.nanmean([r["dice"] for r in values[(init, s)] if r["case"] == c]) for s in seeds]) for c in cases
    ]


def test_per_case_wilcoxon_pairs_test_cases_averaged_over_seeds(tmp_path):
    """Aggregation from written cells alone: the per-case p is scipy's on the cases' seed-averaged mean Dice."""
    from scipy.stats import wilcoxon

    classes, cases = ["rv", "myo", "lv"], [f"case{i:02d}" for i in range(12)]
    values = _write_cells(tmp_path, {"random": (0, 1, 2), "mosmos": (0, 1, 2)}, cases, classes)
    aggregate(tmp_path, {"inits": {"random": {}, "mosmos": {}}, "reference": "random"})
    row = list(csv.DictReader(open(tmp_path / "results" / "table_frac1_lambdadefault.csv")))[1]
    assert float(row["Wilcoxon p Dice per case vs random"]) == pytest.approx(
        wilcoxon(
            _per_case_means(values, "mosmos", (0, 1, 2), cases), _per_case_means(values, "random", (0, 1, 2), cases)
        ).pvalue,
        rel=1e-3,
    )
    assert "smallest possible p is 0.25" in (tmp_path / "results" / "table_frac1_lambdadefault.md").read_text()


def test_comparisons_pair_only_the_seeds_both_methods_ran(tmp_path):
    """A grid cut short (or a pilot) holds three seeds of one init and one of the reference: the paired tests and
    the difference use the shared seed only (the patients a seed draws differ), while the method's own row still
    averages its three seeds."""
    from scipy.stats import wilcoxon

    classes, cases = ["rv", "myo", "lv"], [f"case{i:02d}" for i in range(12)]
    values = _write_cells(tmp_path, {"random": (1,), "mosmos": (0, 1, 2), "other": (2,)}, cases, classes)
    aggregate(tmp_path, {"inits": {"random": {}, "mosmos": {}, "other": {}}, "reference": "random"})
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "results" / "table_frac1_lambdadefault.csv"))}
    mine, theirs = _per_case_means(values, "mosmos", (1,), cases), _per_case_means(values, "random", (1,), cases)
    assert float(rows["mosmos"]["Wilcoxon p Dice per case vs random"]) == pytest.approx(
        wilcoxon(mine, theirs).pvalue, rel=1e-3
    )
    assert rows["mosmos"]["Δ mean Dice per case vs random [95% CI]"].startswith(
        f"{100 * np.mean(np.subtract(mine, theirs)):+.2f} ["
    )
    assert rows["mosmos"]["n seeds"] == "3"
    assert rows["other"]["Wilcoxon p Dice per case vs random"] == "-"  # no seed in common: nothing to pair
    assert "over the seeds both ran" in (tmp_path / "results" / "table_frac1_lambdadefault.md").read_text()
    # the same at a glance: one cell per reference, the means without their spread where it says so
    glance = {r["method"]: r for r in csv.DictReader(open(tmp_path / "results" / "summary_frac1_lambdadefault.csv"))}
    assert glance["mosmos"]["Δ mean Dice per case vs random [95% CI], p"] == (
        f"{rows['mosmos']['Δ mean Dice per case vs random [95% CI]']}, p = "
        f"{rows['mosmos']['Wilcoxon p Dice per case vs random']}"
    )
    assert glance["mosmos"]["mean Dice"] == rows["mosmos"]["mean Dice"] and " ± " in glance["mosmos"]["mean Dice"]
    assert glance["mosmos"]["rv Dice"] == rows["mosmos"]["rv Dice"].split(" ± ")[0]
    assert glance["mosmos"]["n seeds"] == "3" and glance["other"]["Δ mean Dice per case vs random [95% CI], p"] == "-"
    assert "At a glance" in (tmp_path / "results" / "summary_frac1_lambdadefault.md").read_text()


def test_contrasts_test_named_pairs_per_unit_and_give_the_difference_seed_by_seed(tmp_path):
    """A spec's ``contrasts`` (e.g. attention with the pre-training's class queries against random ones) get their
    own table: scipy's Wilcoxon p per case on the shared seeds' averages, the mean difference, and the difference
    of each shared seed on its own."""
    from scipy.stats import wilcoxon

    classes, cases = ["rv", "myo", "lv"], [f"case{i:02d}" for i in range(12)]
    values = _write_cells(tmp_path, {"random": (0, 1), "mosmos": (0, 1, 2), "other": (2,)}, cases, classes)
    spec = {
        "inits": {"random": {}, "mosmos": {}, "other": {}},
        "contrasts": [["mosmos", "random"], ["other", "random"], ["other", "mosmos"]],
    }
    aggregate(tmp_path, spec)
    rows = list(csv.DictReader(open(tmp_path / "results" / "contrasts_frac1_lambdadefault.csv")))
    # 'other' shares no seed with random: no row
    assert [r["contrast"] for r in rows] == ["mosmos − random", "other − mosmos"]
    # the family's p-values adjusted by Holm's method: the smaller times 2, the larger no smaller than that
    p = sorted((float(r["Wilcoxon p per case"]), i) for i, r in enumerate(rows))
    holm = [min(1.0, 2 * p[0][0]), min(1.0, max(2 * p[0][0], p[1][0]))]
    for (_, i), want in zip(p, holm):
        assert float(rows[i]["Holm p (the table's contrasts)"]) == pytest.approx(want, rel=5e-3)
    mine, theirs = _per_case_means(values, "mosmos", (0, 1), cases), _per_case_means(values, "random", (0, 1), cases)
    assert float(rows[0]["Wilcoxon p per case"]) == pytest.approx(wilcoxon(mine, theirs).pvalue, rel=5e-3)
    assert rows[0]["Δ mean Dice per case [95% CI]"].startswith(f"{100 * np.mean(np.subtract(mine, theirs)):+.2f} [")
    assert (rows[0]["n seeds"], rows[0]["n cases"]) == ("2", "12")
    each = [
        np.mean(
            np.subtract(_per_case_means(values, "mosmos", (k,), cases), _per_case_means(values, "random", (k,), cases))
        )
        for k in (0, 1)
    ]
    assert rows[0]["Δ per case seed by seed"] == f"seed 0: {100 * each[0]:+.2f}, seed 1: {100 * each[1]:+.2f}"
    assert (
        "smallest possible with 12 cases: 0.000488"
        in (tmp_path / "results" / "contrasts_frac1_lambdadefault.md").read_text()
    )
    # and a picture of it: each case's difference, the mean and its interval
    import matplotlib.image

    picture = matplotlib.image.imread(tmp_path / "results" / "contrasts_frac1_lambdadefault.png")
    assert picture.ndim == 3 and picture.shape[1] > picture.shape[0] > 100

    # two inits that consume one pre-training but, at a seed, started from runs of it with other weights: said
    pre = {"pretraining": {"configs": None, "overrides": {"max_epochs": 10}, "clip_checkpoint": None}}
    for init, sha in (("mosmos", "a" * 64), ("random", "b" * 64)):
        for seed in (0, 1):
            path = tmp_path / "cells" / f"{init}__frac1__seed{seed}__lambdadefault" / "done.json"
            weights = {"path": "pre.pt", "sha256": sha if seed == 1 else "c" * 64}
            path.write_text(json.dumps(dict(json.loads(path.read_text()), recipe=pre, init_weights=weights)))
    aggregate(tmp_path, spec)
    text = (tmp_path / "results" / "contrasts_frac1_lambdadefault.md").read_text()
    assert (
        "different runs of one pre-training (SHA-256), so that contrast also holds the runs' difference: "
        f"mosmos − random at seed 1 (mosmos from {'a' * 12}, random from {'b' * 12})." in text
    )
    assert "seed 0 (" not in text  # the same weights at seed 0


@pytest.mark.parametrize(
    "contrasts, message",
    [
        (
            [["random", "mosmoss"]],
            r"contrast \['random', 'mosmoss'\] names 'mosmoss', not one of the inits .*did you mean",
        ),
        ([["random", "random"]], r"a contrast is a pair of two different inits"),
        ("random", r"'contrasts' must be a list"),
    ],
)
def test_a_contrast_must_name_two_inits_of_the_spec(tmp_path, contrasts, message):
    with pytest.raises(ValueError, match=message):
        load_spec(_blocks_spec(tmp_path, contrasts=contrasts))


def test_a_block_keeps_the_specs_contrasts_whose_inits_it_runs(tmp_path):
    spec = load_spec(_blocks_spec(tmp_path, contrasts=[["mosmos", "random"]]))  # the unet block drops mosmos
    assert spec["_blocks"]["unet"]["contrasts"] == [] and spec["_blocks"]["unetr"]["contrasts"] == [
        ["mosmos", "random"]
    ]


def test_cells_run_seed_major_so_a_cut_run_leaves_whole_seeds(spec_file):
    cells = cells_of(load_spec(spec_file))
    assert [(c.seed, c.init) for c in cells] == [(0, "random"), (0, "mosmos"), (1, "random"), (1, "mosmos")]


def test_qualitative_panel_shows_the_evaluated_slices(finished):
    """Fig. 7: the evaluation kept its first test cases' most-labelled slices; the panel is drawn from them."""
    spec, _, _ = finished
    out = spec["output_dir"]
    cell = json.load(open(f"{out}/cells/mosmos__frac1__seed0__lambdadefault/done.json"))
    kept = sorted((__import__("pathlib").Path(cell["per_case"]).parent / "slices").glob("*.npz"))
    cases = {r["case"] for r in csv.DictReader(open(cell["per_case"]))}
    assert len(kept) == min(3, len(cases))  # panel_cases defaults to 3
    s = np.load(kept[0])
    names = [r["class"] for r in cell["summary"] if r["class"] != "mean"]
    assert list(s["names"]) == names and s["image"].shape == s["label"].shape == s["pred"].shape
    assert s["label"].ndim == 2 and s["label"].max() > 0 and set(np.unique(s["label"])) <= set(range(len(names) + 1))
    import matplotlib.image as mpimg

    panel = mpimg.imread(f"{out}/results/qualitative.png")
    assert panel.shape[1] > 2 * panel.shape[0]  # ground truth + two methods side by side


def test_qualitative_panel_shows_the_label_fraction_with_the_most_methods(tmp_path):
    """A grid that runs fewer methods at its largest fraction (acdc_real: four at 70 patients) draws its panel where
    the most methods finished."""
    import matplotlib.image as mpimg

    from mosmos_components.experiment import _qualitative_panel

    done = []
    for init, frac in (("random", 1.0), ("random", 0.1), ("mosmos", 0.1), ("imagenet", 0.1)):
        report = tmp_path / f"{init}{frac}" / "report"
        (report / "slices").mkdir(parents=True)
        label = np.zeros((8, 8), dtype=np.uint8)
        label[2:5, 2:5] = 1
        np.savez(report / "slices" / "case0.npz", image=np.random.rand(8, 8), label=label, pred=label, names=["a"])
        done.append(
            {"init": init, "label_fraction": frac, "seed": 0, "lambda_pta": None, "per_case": str(report / "x.csv")}
        )
    _qualitative_panel(tmp_path, done, ["random", "imagenet", "mosmos"])
    panel = mpimg.imread(tmp_path / "qualitative.png")
    assert panel.shape[1] > 3 * panel.shape[0]  # ground truth + three methods (at 1.0: one)


def test_yaml_specs_read_like_json(tmp_path):
    yaml = pytest.importorskip("yaml")
    spec = {
        "bundle": "btcv_seg",
        "configs": ["train.json"],
        "dataset_dir": "d",
        "inits": {"random": {"seed": 1}},
        "label_fractions": [0.5, 1.0],
        "fraction_overrides": {"0.5": {"max_epochs": 4}},
    }
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "a.json").write_text(json.dumps(spec))
    a, b = load_spec(tmp_path / "a.yaml"), load_spec(tmp_path / "a.json")
    assert {k: v for k, v in a.items() if k != "_path"} == {k: v for k, v in b.items() if k != "_path"}
    assert [c.fraction for c in cells_of(a)] == [0.5, 1.0]


def test_a_spec_names_what_is_wrong(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"bundle": "btcv_seg", "configs": [], "dataset_dir": "x", "inits": {"a": {}}, "reference": "b"})
    )
    with pytest.raises(ValueError, match="reference 'b' is not one of the inits"):
        load_spec(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_spec(bad)


SPECS = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "experiments").glob("*.json"))


@pytest.mark.parametrize("name", SPECS)
def test_shipped_specs_name_real_bundle_keys(name, repo):
    """Every shipped spec passes the checks a spec gets before its first cell (its overrides are keys of its
    bundle's configs: a typo would change nothing)."""
    assert cells_of(load_spec(repo / "experiments" / name))


def _spec(tmp_path, **changes):
    spec = {"bundle": "btcv_seg", "configs": ["train.json"], "dataset_dir": "d", "inits": {"random": {"seed": 1}}}
    spec.update(changes)
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"label_fractons": [0.25, 0.5]}, r"unknown spec key 'label_fractons' \(did you mean 'label_fractions'\?\)"),
        ({"overrides": {"max_epoch": 1}}, r"overrides: 'max_epoch' is not a key .* \(did you mean 'max_epochs'\?\)"),
        ({"inits": {"random": {"learning_rat": 1e-3}}}, r"init 'random': 'learning_rat' is not a key"),
        ({"fraction_overrides": {"1.0": {"max_epoch": 2}}}, r"fraction_overrides '1.0': 'max_epoch' is not a key"),
        ({"label_fractions": [0.5, 0]}, r"'label_fractions' holds 0; each must lie in \(0, 1\]"),
        ({"label_fractions": [1.5]}, r"'label_fractions' holds 1.5"),
        ({"lambdas": [0.8, 2]}, r"'lambdas' holds 2; each must lie in \[0, 1\]"),
        ({"seeds": [0, 1, 0]}, r"'seeds' lists \[0\] more than once"),
        ({"seeds": ["0"]}, r"'seeds' must be a non-empty list of integers"),
        ({"evaluations": [{"keep_largest": True}]}, r"'evaluations' must map names to overrides of evaluate.json"),
        ({"evaluations": {"report": {"keep_largest": True}}}, r"evaluation name 'report' must be a folder name"),
        ({"evaluations": {"lcc": {"keep_larges": True}}}, r"evaluations 'lcc': 'keep_larges' is not a key"),
    ],
)
def test_a_spec_with_a_typo_is_refused_before_its_first_cell(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message) as info:
        load_spec(_spec(tmp_path, **changes))
    assert "typo.json" in str(info.value)


def test_relative_paths_are_taken_from_the_spec_not_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "specs").mkdir()
    spec = {
        "bundle": "btcv_seg",
        "configs": ["train.json"],
        "dataset_dir": "data/btcv",
        "inits": {"mosmos": {"pretrained_ckpt": "weights/model.pt"}, "abs": {"pretrained_ckpt": "/w/model.pt"}},
    }
    (tmp_path / "specs" / "a.json").write_text(json.dumps(spec))
    (tmp_path / "specs" / "b.json").write_text(json.dumps(dict(spec, root="..")))
    monkeypatch.chdir("/")
    a, b = load_spec(tmp_path / "specs" / "a.json"), load_spec(tmp_path / "specs" / "b.json")
    assert a["dataset_dir"] == str(tmp_path / "specs" / "data" / "btcv")
    assert b["dataset_dir"] == str(tmp_path / "data" / "btcv")
    assert b["output_dir"] == str(tmp_path / "experiments" / "out" / "b")
    assert b["inits"]["mosmos"]["pretrained_ckpt"] == str(tmp_path / "weights" / "model.pt")
    assert b["inits"]["abs"]["pretrained_ckpt"] == "/w/model.pt"


def test_nested_override_keys_are_checked_against_the_configs(tmp_path):
    assert load_spec(_spec(tmp_path, overrides={"train#augment#0#prob": 0.5}))
    with pytest.raises(ValueError, match=r"'train#augment#9#prob' is not a key"):
        load_spec(_spec(tmp_path, overrides={"train#augment#9#prob": 0.5}))


def test_variant_files_set_real_keys_and_reach_the_cells(tmp_path, repo):
    """Named variants (configs/baselines, configs/ablations) hold bundle keys only; a spec's init names one and its
    cells run with it; a variant the bundle lacks is refused naming the spec."""
    from monai.bundle import ConfigParser

    from mosmos_components.experiment import cell_configs

    for bundle in ("btcv_seg", "acdc_seg", "brats_seg", "mosmos_pretrain"):
        configs = repo / "bundles" / bundle / "configs"
        files = [configs / f for f in ("train.json", "unet2d.json", "unet2d_timm.json") if (configs / f).is_file()]
        keys = set(ConfigParser.load_config_files([str(f) for f in files]))
        variants = sorted(configs.glob("*/*.json"))
        assert variants, bundle
        for v in variants:
            extra = set(json.loads(v.read_text())) - keys - {"_description", "_generated_"}
            assert not extra, (v, extra)
    spec = load_spec(repo / "experiments" / "acdc_real.json")
    random = next(c for c in cells_of(spec) if c.init == "random")
    assert cell_configs(spec, random) == ["train.json", "unet2d.json", "unet2d_timm.json", "baselines/random.json"]
    bad = dict(json.loads((repo / "experiments" / "acdc_real.json").read_text()))
    bad["inits"]["random"] = {"variant": "baselines/no_such.json"}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="bad.json: init .random. names the variant baselines/no_such.json"):
        load_spec(tmp_path / "bad.json")


def test_a_shipped_spec_is_found_by_name():
    assert load_spec("demo_btcv")["name"] == "demo_btcv"
    with pytest.raises(FileNotFoundError, match="experiment spec not found: no_such_spec"):
        load_spec("no_such_spec")


def _blocks_spec(tmp_path, **changes):
    spec = {
        "bundle": "btcv_seg",
        "configs": ["train.json"],
        "dataset_dir": "d",
        "output_dir": "out",
        "overrides": {"max_epochs": 2, "batch_size": 2},
        "inits": {"random": {"variant": "baselines/random.json"}, "mosmos": {"pretraining": "full"}},
        "pretrainings": {"full": {"dataset_dir": "corpus", "overrides": {"max_epochs": 3}}},
        "blocks": {
            "unet": {
                "configs": ["unet2d.json"],
                "overrides": {"batch_size": 4},
                "inits": {"random": {"learning_rate": 0.01}, "mosmos": None},
                "open_set": ["stomach"],
            },
            "unetr": {},
        },
    }
    spec.update(changes)
    path = tmp_path / "blocks.json"
    path.write_text(json.dumps(spec))
    return path


def test_blocks_are_grids_of_their_own_over_the_specs_settings(tmp_path):
    """A block's configs follow the spec's, its overrides and per-init entries win over the spec's, ``null`` drops
    an init, and each block writes to its own folder; the pre-training's paths are taken from the spec's root."""
    spec = load_spec(_blocks_spec(tmp_path))
    unet, unetr = spec["_blocks"]["unet"], spec["_blocks"]["unetr"]
    assert unet["configs"] == ["train.json", "unet2d.json"] and unetr["configs"] == ["train.json"]
    assert unet["overrides"] == {"max_epochs": 2, "batch_size": 4}
    assert unet["inits"] == {"random": {"variant": "baselines/random.json", "learning_rate": 0.01}}
    assert sorted(unetr["inits"]) == ["mosmos", "random"]
    assert unet["output_dir"] == str(tmp_path / "out" / "unet") and unet["open_set"] == ["stomach"]
    assert unet["_pretrain_dir"] == unetr["_pretrain_dir"] == str(tmp_path / "out" / "pretrain")
    assert spec["pretrainings"]["full"]["dataset_dir"] == str(tmp_path / "corpus")
    cells = cells_of(spec)
    assert sorted({(c.block, c.init) for c in cells}) == [("unet", "random"), ("unetr", "mosmos"), ("unetr", "random")]
    assert all(c.coords()["block"] == c.block for c in cells)


def test_later_inits_hold_in_the_blocks_that_keep_them(tmp_path):
    """``later_inits`` of a spec with blocks: each block runs those it keeps last; a block that dropped one is not
    an error."""
    spec = load_spec(_blocks_spec(tmp_path, later_inits=["mosmos"], label_fractions=[0.5, 1.0]))
    assert spec["_blocks"]["unet"]["later_inits"] == []
    unetr = [(c.init, c.fraction) for c in cells_of(spec) if c.block == "unetr"]
    assert unetr == [("random", 0.5), ("random", 1.0), ("mosmos", 0.5), ("mosmos", 1.0)]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"blocks": {"unet": {"config": ["unet2d.json"]}}}, r"\(block 'unet'\): unknown block key 'config' \(did you"),
        ({"blocks": {"unet": ["unet2d.json"]}}, r"\(block 'unet'\): a block must map settings to values"),
        ({"blocks": {}}, r"'blocks' must map block names to their settings"),
        (
            {"pretrainings": {"full": {"dataset": "corpus"}}},
            r"\(pre-training 'full'\): unknown pre-training key 'dataset'",
        ),
        ({"pretrainings": {"full": {"configs": ["nope.json"]}}}, r"mosmos_pretrain has no config nope.json"),
        (
            {"pretrainings": {"full": {"overrides": {"max_epoch": 1}}}},
            r"'max_epoch' is not a key of the mosmos_pretrain",
        ),
        (
            {"pretrainings": {"full": {"clip_checkpoint": {"clip_pretrained": "w.pt", "backbon": "RN50"}}}},
            r"clip_checkpoint takes .* not 'backbon' \(did you mean 'backbone'\?\)",
        ),
        ({"pretrainings": {"other": {}}}, r"init 'mosmos' names the pre-training 'full', not among .*\['other'\]"),
        (
            {"inits": {"mosmos": {"pretraining": "full", "pretrained_ckpt": "w.pt"}}},
            r"init 'mosmos' names both a pre-training and a pretrained_ckpt",
        ),
        ({"blocks": {"unet": {"open_set": ["spleen", "heart"]}}}, r"open_set names 'heart', not a class of btcv_seg"),
    ],
)
def test_a_block_or_pretraining_that_cannot_run_is_refused_naming_it(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message) as info:
        load_spec(_blocks_spec(tmp_path, **changes))
    assert "blocks.json" in str(info.value)


def test_a_finished_pretraining_is_kept_wherever_its_grid_was_made_and_refused_if_made_otherwise(tmp_path):
    """A grid's finished pre-training is matched to the spec by its settings: moved with its grid to another machine
    (other corpus folder, other description) it is reused; made with another budget it is refused, naming the
    setting."""
    from mosmos_components.experiment import pretraining_checkpoint, run_pretraining

    spec = load_spec(_blocks_spec(tmp_path))
    spec["pretrainings"]["full"]["description"] = "the corpus at this site"
    ckpt = pretraining_checkpoint(spec, "full")
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    elsewhere = {"dataset_dir": "/another/machine/corpus", "overrides": {"max_epochs": 3}, "description": "there"}
    done = ckpt.parent.parent / "done.json"
    done.write_text(json.dumps({"pretraining": "full", "definition": elsewhere, "gate": {"passed": True}}))
    assert run_pretraining(spec, "full") == ckpt

    done.write_text(json.dumps({"pretraining": "full", "definition": dict(elsewhere, overrides={"max_epochs": 2})}))
    with pytest.raises(
        ValueError,
        match=r"pretrain/full holds a pre-training 'full' made with other settings .*"
        r"overrides\.max_epochs: 2 -> 3",
    ):
        run_pretraining(spec, "full")
    assert ckpt.read_bytes() == b"weights"


def test_an_interrupted_pretraining_resumes_and_its_time_counts_the_earlier_sitting(tmp_path, roco_dir, bundle_run):
    from mosmos_components.bundle_runner import run_bundle
    from mosmos_components.experiment import _pretraining_run, run_pretraining

    tiny = dict(bundle_run.settings("mosmos_pretrain"), max_epochs=2)
    full = {"dataset_dir": str(roco_dir), "configs": ["train.json", "demo.json"], "overrides": tiny}
    spec = load_spec(_blocks_spec(tmp_path, pretrainings={"full": full}))
    run_bundle("mosmos_pretrain", full["configs"], **dict(_pretraining_run(spec, "full", "eval"), max_epochs=1))
    history = tmp_path / "out" / "pretrain" / "full" / "eval" / "train_history.csv"
    rows = history.read_text().splitlines()  # the first sitting took long
    history.write_text("\n".join([rows[0], ",".join(rows[1].split(",")[:-1] + ["1000.0"])]) + "\n")
    run_pretraining(spec, "full")
    done = json.loads((tmp_path / "out" / "pretrain" / "full" / "done.json").read_text())
    assert done["resumed_at_epoch"] == 1 and 1000 < done["train_s"] < 1000 + 600
    assert [r.split(",")[0] for r in history.read_text().splitlines()[1:]] == ["1", "2"]


def test_status_lists_each_cell_and_the_time_left_at_the_finished_cells_pace(tmp_path):
    """``mosmos experiment SPEC --status`` runs nothing: each cell done (mean Dice, wall time), started (its
    checkpoint's iteration) or pending, the chained pre-training once, and the time left at each init's pace."""
    from mosmos_components.cli import MosmosCLI
    from mosmos_components.experiment import grid_status

    path = _blocks_spec(tmp_path, blocks={"unet": {"inits": {"mosmos": None}}, "unetr": {}})
    spec = load_spec(path)
    first, second, third = cells_of(spec)  # unet/random, unetr/random, unetr/mosmos
    done = tmp_path / "out" / "unet" / "cells" / first.name
    done.mkdir(parents=True)
    summary = [{"class": "spleen", "dice": 0.5}, {"class": "mean", "dice": 0.625}]
    (done / "done.json").write_text(json.dumps({"train_s": 1500.0, "eval_s": 300.0, "summary": summary}))
    started = tmp_path / "out" / "unetr" / "cells" / second.name
    (started / "models").mkdir(parents=True)
    (started / "recipe.json").write_text("{}")
    (started / "models" / "checkpoint.json").write_text(json.dumps({"epoch": 1, "iteration": 250}))

    lines = grid_status(path).splitlines()
    assert lines[0] == f"[1/3] done    unet/{first.name}  mean Dice 62.5 %, 30 min"
    assert lines[1] == f"[2/3] started unetr/{second.name}  checkpoint at iteration 250"
    assert lines[2] == f"[3/3] pending unetr/{third.name}"
    assert lines[3] == f"pre-training full: pending ({tmp_path / 'out' / 'pretrain' / 'full'})"
    # two cells to go: unetr/random at random's pace, unetr/mosmos (none finished yet) at the mean pace
    assert lines[4] == (
        "1 done, 1 started, 1 pending of 3; about 60 min of cells left at the pace of the 1 finished; "
        "1 pre-training to write"
    )
    assert not (tmp_path / "out" / "unetr" / "cells" / third.name).exists()
    assert MosmosCLI().experiment(str(path), status=True) == "\n".join(lines)

    pre = tmp_path / "out" / "pretrain" / "full"
    (pre / "models").mkdir(parents=True)
    record = {"pretraining": "full", "train_s": 2400.0, "gate": {"passed": True, "checks": {}}}
    (pre / "done.json").write_text(json.dumps(record))
    lines = grid_status(path).splitlines()
    assert lines[3] == f"pre-training full: its record without its checkpoint: runs again before its first cell ({pre})"
    assert lines[4].endswith("; 1 pre-training to write, about 40 min at the pace of the 1 written")  # its own pace
    (pre / "models" / "model.pt").write_bytes(b"weights")
    lines = grid_status(path).splitlines()
    assert lines[3] == f"pre-training full: done, passed Gate 1 ({pre})"
    assert lines[4].endswith("at the pace of the 1 finished")  # nothing left to pre-train


def test_records_hold_each_blocks_finished_cells_and_the_finished_pretrainings_without_weights(tmp_path):
    """``write_records``: per block its split and finished cells (an unfinished cell and every weight left out),
    and the spec's finished pre-trainings with their histories and held-out report, not another spec's."""
    from mosmos_components.experiment import write_records

    spec = load_spec(_blocks_spec(tmp_path))
    out = tmp_path / "out"
    unet_random, unetr_random, unetr_mosmos = cells_of(spec)
    made = {
        f"unet/cells/{unet_random.name}": ["done.json", "eval/report/per_case.csv", "eval/val_history.csv"],
        f"unetr/cells/{unetr_random.name}": ["eval/train_history.csv"],  # started, not finished
        "unet": ["datalist.json"],
        "unetr": ["datalist.json"],
        "pretrain/full": ["done.json", "eval/train_history.csv", "test/held_out_report.json"],
        "pretrain/another_specs": ["done.json"],
    }
    for folder, files in made.items():
        for f in [*files, "models/model.pt"]:
            (out / folder / f).parent.mkdir(parents=True, exist_ok=True)
            (out / folder / f).write_text(f"{folder}/{f}")
        if "done.json" in files:  # paths as the runner writes them: absolute, on this machine
            record = {"checkpoint": str(out / folder / "models/model.pt"), "outside": "/elsewhere/model.pt"}
            (out / folder / "done.json").write_text(json.dumps({"made": folder, "paths": [record]}))
    rec = tmp_path / "records"
    assert write_records(spec, rec) == 8
    got = sorted(str(p.relative_to(rec)) for p in rec.rglob("*") if p.is_file())
    assert got == sorted(
        [
            "unet/datalist.json",
            "unetr/datalist.json",
            *(f"unet/cells/{unet_random.name}/{f}" for f in made[f"unet/cells/{unet_random.name}"]),
            *(f"pretrain/full/{f}" for f in made["pretrain/full"]),
        ]
    )
    assert (rec / "pretrain/full/test/held_out_report.json").read_text() == "pretrain/full/test/held_out_report.json"
    # a record names its files where they lie under the spec's root, and keeps other paths as they are
    assert json.loads((rec / "pretrain/full/done.json").read_text()) == {
        "made": "pretrain/full",
        "paths": [{"checkpoint": "out/pretrain/full/models/model.pt", "outside": "/elsewhere/model.pt"}],
    }
    assert str(tmp_path) not in (rec / f"unet/cells/{unet_random.name}/done.json").read_text()
    (out / f"unet/cells/{unet_random.name}/done.json").write_text('{"cell": "cut off mid-wr')
    with pytest.raises(ValueError, match=f"{unet_random.name}/done.json.*not JSON"):
        write_records(spec, rec)


def _gate_folder(folder: Path, recall_ci, tag_ci, acdc_kept) -> Path:
    (folder / "test").mkdir(parents=True)
    (folder / "eval").mkdir(parents=True)
    report = {
        "n_pairs": 200,
        "recall_at_10": {"value": 0.22, "ci95": recall_ci, "chance": 0.05},
        "tag_map": {"value": 0.15, "ci95": tag_ci, "chance": 0.023, "tags_scored": 14},
    }
    (folder / "test" / "held_out_report.json").write_text(json.dumps(report))
    (folder / "test" / "metrics.csv").write_text(
        f"val_loss,3.1\nquery_cosine_acdc,{acdc_kept}\nquery_cosine_right_ventricle_vs_left_ventricle,0.99\n"
    )
    (folder / "eval" / "val_history.csv").write_text(
        "epoch,query_cosine_acdc,query_cosine_acdc_at_start,"
        "query_cosine_right_ventricle_vs_left_ventricle,query_cosine_right_ventricle_vs_left_ventricle_at_start\n"
        "1,0.60,0.664,0.96,0.965\n2,0.55,0.664,0.95,0.965\n"
    )
    return folder


def test_gate_1_passes_a_pretraining_above_chance_whose_queries_separated_and_says_what_fails(tmp_path):
    from mosmos_components.experiment import _gate_pretraining, pretraining_checkpoint

    good = pretraining_gate(_gate_folder(tmp_path / "good", [0.165, 0.28], [0.113, 0.27], 0.604))
    assert good["passed"] and good["summary"].startswith(
        "passed Gate 1: recall_at_10 0.220 [0.165, 0.280] vs chance 0.05;"
    )
    assert good["checks"]["query_cosine_acdc"] == {"at_start": 0.664, "kept": 0.604, "passed": True}
    # a named pair is reported (here it moved closer) but is not a condition
    assert "query_cosine_right_ventricle_vs_left_ventricle 0.965 -> 0.990" in good["summary"]

    chance = pretraining_gate(_gate_folder(tmp_path / "chance", [0.04, 0.09], [float("nan"), float("nan")], 0.604))
    assert not chance["passed"] and chance["summary"].startswith("FAILED Gate 1 (recall_at_10, tag_map): ")
    assert chance["checks"]["tag_map"]["ci95"] == [None, None]  # no tag scored: no interval, not a pass
    assert "tag_map 0.150 [-, -]" in chance["summary"]

    collapsed = pretraining_gate(_gate_folder(tmp_path / "collapsed", [0.165, 0.28], [0.113, 0.27], 0.97))
    assert collapsed["summary"].startswith("FAILED Gate 1 (query_cosine_acdc): ")

    # weights without report supervision are not judged, and nothing is run for them
    (tmp_path / "ssl").mkdir()
    spec = load_spec(_blocks_spec(tmp_path / "ssl"))
    ckpt = pretraining_checkpoint(spec, "full")
    ckpt.parent.mkdir(parents=True)
    ckpt.with_suffix(".json").write_text(json.dumps({"weights_kind": "ssl", "mosmos_pretrained": False}))
    assert _gate_pretraining(spec, "full") == {
        "passed": None,
        "checks": {},
        "summary": "Gate 1 not applicable: ssl weights, without report supervision",
    }

    (tmp_path / "good" / "test" / "metrics.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"good/test/metrics.csv: missing; Gate 1 needs"):
        pretraining_gate(tmp_path / "good")


def test_tables_name_the_gate_1_verdict_of_the_pretraining_their_methods_start_from(tmp_path):
    """A reader of a table sees whether the pre-training behind a method passed Gate 1, and why not;
    ``results/pretrainings.md`` lists each with its figures, wall time and threads."""
    classes, cases = ["rv", "myo", "lv"], [f"case{i:02d}" for i in range(6)]
    _write_cells(tmp_path, {"random": (0,), "mosmos": (0,), "without_pta": (0,)}, cases, classes)
    gate = pretraining_gate(_gate_folder(tmp_path / "pretrain" / "medpix", [0.04, 0.09], [0.113, 0.27], 0.604))
    done = {"pretraining": "medpix", "train_s": 2897.5, "ran_on": {"torch_threads": 2}, "gate": gate}
    (tmp_path / "pretrain" / "medpix" / "done.json").write_text(json.dumps(done))
    spec = {
        "inits": {"random": {}, "mosmos": {"pretraining": "medpix"}, "without_pta": {"pretraining": "medpix"}},
        "pretrainings": {"medpix": {"overrides": {}}},
    }
    aggregate(tmp_path, spec)
    table = (tmp_path / "results" / "table_frac1_lambdadefault.md").read_text()
    assert "Pre-training: medpix: FAILED Gate 1 (recall_at_10)." in table.splitlines()[0]
    listing = (tmp_path / "results" / "pretrainings.md").read_text()
    assert "| medpix | mosmos, without_pta | 48 min | 2 | FAILED Gate 1 (recall_at_10): recall_at_10 0.220" in listing
    # the CPU's vector kernels decide the last digits as threads do: named where the record has them
    ran_on = {"torch_threads": 2, "cpu_capability": "AVX512"}
    (tmp_path / "pretrain" / "medpix" / "done.json").write_text(json.dumps({**done, "ran_on": ran_on}))
    aggregate(tmp_path, spec)
    assert "| 48 min | 2 AVX512 | FAILED" in (tmp_path / "results" / "pretrainings.md").read_text()

    (tmp_path / "pretrain" / "medpix" / "done.json").write_text(json.dumps({**done, "gate": None}))
    aggregate(tmp_path, spec)  # finished before the gate existed: said so, not taken for a pass
    assert (
        "Pre-training: medpix: Gate 1 not yet run."
        in (tmp_path / "results" / "table_frac1_lambdadefault.md").read_text()
    )
    aggregate(tmp_path, {**spec, "inits": {"random": {}}})  # no method from a pre-training: no note
    assert "Pre-training" not in (tmp_path / "results" / "table_frac1_lambdadefault.md").read_text()


def test_the_label_efficiency_curve_names_the_seeds_of_each_point_and_labels_only_the_patient_counts():
    def cell(init, frac, seed, dice, n):
        return {
            "init": init,
            "label_fraction": frac,
            "seed": seed,
            "training_units": [f"patient{i:03d}" for i in range(n)],
            "summary": [{"class": "mean", "dice": dice}],
        }

    done = [cell("random", 0.043, 0, 0.65, 3), cell("random", 0.043, 1, 0.75, 3), cell("random", 0.1, 0, 0.81, 7)]
    done += [cell("imagenet", 0.043, 0, 0.75, 3), cell("imagenet", 0.1, 0, 0.86, 7)]
    fig = label_efficiency_figure(done, ["random", "imagenet", "mosmos"], "patient")
    ax = fig.axes[0]
    # arms that ran different seeds say so point by point; an arm with no cell yet is left out
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["random (seeds: 2, 1)", "imagenet (seeds: 1, 1)"]
    random, imagenet = (bars.lines[0] for bars in ax.containers)  # each arm's data line
    x_random, x_imagenet = (np.asarray(line.get_xdata(), float) for line in (random, imagenet))
    # at the counts, side by side: no arm's error bar on top of another's
    np.testing.assert_allclose(x_random, [3, 7], rtol=0.05)
    np.testing.assert_allclose(x_imagenet, [3, 7], rtol=0.05)
    assert (x_random < x_imagenet).all()
    np.testing.assert_allclose(np.asarray(random.get_ydata(), float), [70.0, 81.0])
    # the bar at 3 patients spans the sample sd of 65 and 75 % (7.07 points), not the population sd (5)
    (low, high), _ = (seg[:, 1] for seg in ax.containers[0].lines[2][0].get_segments())
    np.testing.assert_allclose([low, high], [70 - 50**0.5, 70 + 50**0.5])
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["3", "7"]
    assert not any(t.get_text() for t in ax.get_xticklabels(minor=True))  # no 4x10^0 between the counts
