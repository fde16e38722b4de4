"""``mosmos experiment SPEC``: the paper's grids (initialisations x label fractions x seeds x lambda) through the
bundles, resumable, aggregated into the paper's forms.

A spec is a JSON (or, with PyYAML installed, YAML) file::

    {"name": "acdc_demo", "bundle": "acdc_seg", "configs": ["train.json", "demo.json"],
     "dataset_dir": "/data/ACDC", "output_dir": "experiments/out/acdc_demo",
     "overrides": {"max_epochs": 30},                       # every cell
     "inits": {"random": {"use_pretrained": false, "use_pta": false},
               "mosmos": {"pretrained_ckpt": "pre/models/model.pt"}},   # each a named set of overrides
     "reference": "random", "label_fractions": [0.25, 1.0], "seeds": [0, 1, 2], "lambdas": [0.8],
     "tracking": "mlflow"}

Every cell runs in its own folder (``<output_dir>/cells/<init>__frac<f>__seed<s>__lambda<l>``): training, then the
bundle's ``evaluate.json`` on the test split, then ``done.json`` written atomically with the cell's coordinates,
the units it trained on and its per-class results. A cell with ``done.json`` is skipped; an interrupted one
resumes from its training checkpoint (the bundles' ``checkpoint.pt``) and is evaluated again, so no cell is
trained twice and no result mixes two runs. Each cell records its recipe (``recipe.json``, and in ``done.json``:
its configs, overrides and pre-training, paths left out); before the first cell, a cell already in the output
folder whose recipe differs from what the spec now gives it (a changed budget, rate or variant) is refused,
naming the cell and each changed setting, so results of two settings never share a table; a finished
pre-training is matched by its settings the same way (:func:`pretraining_recipe`), not by its folders. All cells
share one split (``<output_dir>/datalist.json``); a label fraction below 1 keeps the first units of an order drawn with
the cell's seed (nested across fractions for one seed; the bundle's ``split_group_key`` unit, e.g. ACDC's
patients with both frames, dealt over its ``split_strata_key`` strata), so the seeds vary which cases are
labelled. With ``tracking: mlflow`` each cell is one MLflow run (named by its coordinates) in
``<output_dir>/mlruns.db``.

Aggregation (``<output_dir>/results/``): ``cells.csv`` (one row per cell and class, with the cell's wall times and
device), per label fraction and lambda a Table-2-style ``table_frac<f>_lambda<l>.{csv,md}`` (per-class Dice and
HD95, mean +- sd over seeds, n - 1) and, against each ``reference`` (one init or a list), the tests: per unit of
analysis (``"unit"``: a key of the datalist's items such as ``"patient"``; default the test case), the Wilcoxon p
and the mean Dice difference with its bootstrap 95 % CI, each unit the mean over its cases and classes averaged over
the seeds both inits ran (a seed may draw the training cases, so only the same seeds pair); and, for parity with the
paper, the Wilcoxon p paired per class on the test-set means over those seeds; ``summary_frac<f>_lambda<l>.{csv,md}``
is the same at a glance (mean Dice per class and overall, mean HD95, each difference with its interval and p).
``contrasts`` (``[["mosmos",
"mosmos_random_queries"]]``) adds, per label fraction and lambda, ``contrasts_frac<f>_lambda<l>.{csv,md}``: each
pair tested per unit the same way, and its difference seed by seed (the spread over seeds), each p also adjusted by
Holm's method over the table's contrasts, with ``.png`` (a forest plot: each unit's difference, the mean and its
interval). Figures: ``label_efficiency.png`` (mean Dice against the label fraction, as the paper's Fig. 6), with
several lambdas ``lambda_box.png`` (per-class Dice for each lambda, as Fig. 5), and ``qualitative.png`` (one test
slice, its ground truth and each method's prediction, as Fig. 7).

``evaluations`` (``{"largest_component": {"keep_largest": true}}``): further tests of every trained cell, each with
its overrides of ``evaluate.json``, in ``<cell>/eval/<name>/``, recorded in ``done.json`` (``evaluations``) and
tabled in ``results/<name>/`` like the cells' own test; cells finished before the entry was added are tested when the
runner comes by, not trained again (those whose weights are gone are left without it, with a warning).

``records`` (or ``--records``): a folder the runner keeps up to date with the grid's weightless record
(:func:`write_records`: the split, each finished cell's results and histories, each pre-training's histories), from
which the grid goes on after its machine and checkpoints are lost.

``fraction_overrides`` (``{"0.1": {"max_epochs": 100}}``) gives some label fractions their own overrides, e.g. the
same number of training iterations at every fraction (or set ``epoch_length`` once for all), and
``fraction_inits`` (``{"1.0": ["random", "mosmos"]}``) runs only some initialisations at a fraction.
``later_fractions`` (``[1.0]``) runs those label fractions' cells after every other cell: the scarce-label cells of
every seed first, then the ceiling. ``later_inits`` (``["ssl"]``) runs those initialisations' cells last of all (after
the later fractions'): arms to add when time allows, which never delay the others.

``blocks`` (``{"unet_resnet50": {"configs": ["unet2d.json"], "inits": {"imagenet": {...}}}, "unetr_vitb16": {}}``)
runs several grids from one spec, each in ``<output_dir>/<block>/`` with its own split, cells and results: a
block may name its own ``bundle``, ``dataset_dir``, ``output_dir`` (another spec's block folder, whose finished
cells it then shares), ``reference``, ``open_set``, ``positioning`` and ``results`` folder; its ``configs`` come
after the spec's, its ``overrides`` over the spec's, and per init its entries over the spec's (``null`` drops that
init from the block). Table 2's two backbones, AMOS's CT and MRI, Table 5's data sets and patch sizes are blocks.

``pretrainings`` (``{"mosmos_vitb16": {"configs": ["train.json"], "dataset_dir": "/data/roco", "overrides":
{"backbone": "ViT-B-16", ...}}, "clip_vitb16": {"clip_checkpoint": {"clip_pretrained": "/weights/ViT-B-16.pt",
"backbone": "ViT-B-16"}}}``) chains pre-training and fine-tuning: an init that says ``"pretraining": "<name>"``
fine-tunes from that pre-training's checkpoint, which the runner writes once (a ``mosmos_pretrain`` run, resumable,
or a ``mosmos clip-checkpoint`` of the user's CLIP weights) in ``<output_dir>/pretrain/<name>/`` (or the
``pretrain_dir`` given to :func:`run_experiment`, which specs may share: a pre-training of the same name and
definition is written once) before the first cell that consumes it. ``open_set`` marks classes the pre-training's
tags do not name (``†`` in the tables); ``positioning`` (``{"init": "mosmos", "names": [["right kidney", "left
kidney"]]}``) draws the tag decoder's attention of that init's pre-training for those names on the first test scan
(``results/positioning/``, the paper's Fig. 7).

Relative paths in a spec (``dataset_dir``, ``output_dir``, ``pretrained_ckpt``) are taken from its ``root``, a
folder relative to the spec file (the shipped specs say ``".."``: the repository), or from the spec's own folder
when it names none, never from the folder the command runs in (so are a pre-training's weights and towers where
they look like paths). Before the first cell the whole spec is checked (:func:`load_spec`): unknown keys (of the
spec, a block, a pre-training), override keys that are not keys of the bundle's configs (of the pre-training
bundle's, for a pre-training), variants and pre-trainings that do not exist, label fractions outside (0, 1],
lambdas outside [0, 1] and repeated values are errors naming the spec file and the block.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mosmos_components.checkpoint import atomic_bytes, atomic_copy, atomic_json_save
from mosmos_components.evaluation import holm_adjusted, summarize, wilcoxon_paired

__all__ = ["Cell", "load_spec", "cells_of", "run_experiment", "aggregate", "bootstrap_mean_ci"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    init: str
    fraction: float
    seed: int
    lam: float | None
    block: str | None = None  # the block of a spec with blocks (its cells live in the block's own folder)

    @property
    def name(self) -> str:
        lam = "default" if self.lam is None else f"{self.lam:g}"
        return f"{self.init}__frac{self.fraction:g}__seed{self.seed}__lambda{lam}"

    @property
    def where(self) -> str:
        """The cell's name, after its block's where the spec has blocks (``unet/random__frac1__seed0__lambda0.8``)."""
        return self.name if self.block is None else f"{self.block}/{self.name}"

    def coords(self) -> dict:
        coords = {"init": self.init, "label_fraction": self.fraction, "seed": self.seed, "lambda_pta": self.lam}
        return coords if self.block is None else {"block": self.block, **coords}


def load_spec(path: str | Path) -> dict:
    """Read and check a spec (see the module docstring); errors name the file and the key. A spec with ``blocks``
    comes back with each block's own spec, checked and resolved like a spec of its own, in ``spec["_blocks"]``."""
    path = _find_spec(path)
    spec = _read_spec(path)
    _refuse_unknown_keys(path, [k for k in spec if not str(k).startswith("_")], SPEC_KEYS, "spec")
    spec.setdefault("name", path.stem)
    spec.setdefault("output_dir", str(Path("experiments") / "out" / spec["name"]))
    root = _spec_root(spec, path)
    _fix_paths(spec, root)
    _check_pretrainings(spec, path, root)
    blocks = spec.get("blocks")
    if blocks is None:
        spec = _load_block(spec, path, path, root)
        spec["_pretrain_dir"] = str(Path(spec["output_dir"]) / "pretrain")
        spec["_path"] = str(path)
        return spec
    if not isinstance(blocks, dict) or not blocks:
        raise ValueError(f"{path}: 'blocks' must map block names to their settings, got {blocks!r}")
    spec["_blocks"] = {}
    for name, block in blocks.items():
        where = f"{path} (block '{name}')"
        _check_entry(where, block, BLOCK_KEYS, "block")
        _fix_paths(block, root)
        sub = _block_spec(spec, name, block)
        spec["_blocks"][name] = _load_block(sub, path, where, root)
    every = {i: None for sub in spec["_blocks"].values() for i in sub["inits"]}
    _check_contrasts(path, spec.get("contrasts"), {**(spec.get("inits") or {}), **every})
    spec["_pretrain_dir"] = str(Path(spec["output_dir"]) / "pretrain")
    for sub in spec["_blocks"].values():
        sub["_pretrain_dir"] = spec["_pretrain_dir"]
    spec["root"] = str(root)
    spec["_path"] = str(path)
    return spec


def _find_spec(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file() and not path.suffix and len(path.parts) == 1:  # a shipped spec by name: "demo_btcv"
        here = Path(__file__).resolve().parent
        path = next(
            (
                p
                for p in (here.parent / "experiments" / f"{path}.json", here / "_experiments" / f"{path}.json")
                if p.is_file()
            ),
            path,
        )
    if not path.is_file():
        raise FileNotFoundError(f"experiment spec not found: {path}")
    return path


def _read_spec(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ValueError(f"{path}: a YAML spec needs PyYAML (pip install pyyaml), or write it as JSON") from e
        spec = yaml.safe_load(text)
    else:
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a spec is a mapping of keys to values, got {type(spec).__name__}")
    return spec


def _refuse_unknown_keys(where, keys, allowed, what: str) -> None:
    """A key that is not one of ``allowed`` is an error naming the closest valid one."""
    wrong = [k for k in keys if k not in allowed]
    if wrong:
        raise ValueError(
            f"{where}: unknown {what} key '{wrong[0]}'{_close(wrong[0], allowed)}; a {what} holds {list(allowed)}"
        )


def _check_entry(where, entry, allowed, what: str) -> None:
    """An entry of a spec's named table (a block, a pre-training): a mapping of its ``allowed`` keys."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: a {what} must map settings to values, got {entry!r}")
    _refuse_unknown_keys(where, entry, allowed, what)


def _close(word, options) -> str:
    import difflib

    match = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _block_spec(spec: dict, name: str, block: dict) -> dict:
    """A block's own spec: the spec's settings, the block's configs after the spec's, its overrides over the
    spec's, and per init its entries over the spec's (``null`` drops that init from the block); its output in
    ``<output_dir>/<block>`` unless it names one."""
    sub = {k: v for k, v in spec.items() if k not in ("blocks", "_blocks", "description")}
    sub["name"] = f"{spec['name']}/{name}"
    sub["configs"] = list(spec.get("configs") or []) + list(block.get("configs") or [])
    sub["overrides"] = {**(spec.get("overrides") or {}), **(block.get("overrides") or {})}
    inits = {k: dict(v) for k, v in (spec.get("inits") or {}).items()}
    for init, entries in (block.get("inits") or {}).items():
        if entries is None:
            inits.pop(init, None)
        else:
            inits[init] = {**inits.get(init, {}), **entries}
    sub["inits"] = inits
    if isinstance(sub.get("contrasts"), list):  # the spec's contrasts, where the block kept both inits
        sub["contrasts"] = [p for p in sub["contrasts"] if isinstance(p, list) and set(p) <= set(inits)]
    if isinstance(sub.get("later_inits"), list):  # those the block kept
        sub["later_inits"] = [i for i in sub["later_inits"] if i in inits]
    for key in ("bundle", "dataset_dir", "open_set", "positioning", "reference", "contrasts", "results"):
        if key in block:
            sub[key] = block[key]
    sub["output_dir"] = block.get("output_dir") or str(Path(spec["output_dir"]) / name)
    sub["_borrowed"] = bool(block.get("output_dir"))  # another spec's grid folder: its cells are shared
    if "description" in block:
        sub["description"] = block["description"]
    return sub


def _load_block(spec: dict, path: Path, where, root: Path) -> dict:
    """The checks and defaults of one grid (a spec without blocks, or one block); ``where`` names it in errors."""
    for key in ("bundle", "configs", "dataset_dir", "inits"):
        if key not in spec:
            raise ValueError(f"{where}: the spec has no '{key}'")
    if not isinstance(spec["inits"], dict) or not spec["inits"]:
        raise ValueError(f"{where}: 'inits' must map names to override sets")
    for ref in _references(spec):
        if ref not in spec["inits"]:
            raise ValueError(f"{where}: reference '{ref}' is not one of the inits {sorted(spec['inits'])}")
    _check_contrasts(where, spec.get("contrasts"), spec["inits"])
    for key, names in (spec.get("fraction_inits") or {}).items():
        unknown = sorted(set(names) - set(spec["inits"]))
        if unknown:
            raise ValueError(
                f"{where}: fraction_inits '{key}' names {unknown}, not among the inits {sorted(spec['inits'])}"
            )
    later = spec.get("later_inits", [])
    if not isinstance(later, list) or not all(isinstance(i, str) and i in spec["inits"] for i in later):
        raise ValueError(f"{where}: 'later_inits' must list some of the inits {sorted(spec['inits'])}, got {later!r}")
    from mosmos_components.bundle_runner import bundles_dir

    configs = bundles_dir() / str(spec["bundle"]) / "configs"
    if not configs.is_dir():
        there = sorted(p.name for p in bundles_dir().iterdir() if (p / "configs").is_dir())
        raise ValueError(f"{where}: no bundle '{spec['bundle']}' (bundles: {there})")
    for name, init in spec["inits"].items():
        if not isinstance(init, dict):
            raise ValueError(f"{where}: init '{name}' must map config keys to values, got {init!r}")
        for f in _variants(init):
            if not (configs / f).is_file():
                raise ValueError(
                    f"{where}: init '{name}' names the variant {f}, which {configs} does not have "
                    f"(there: {sorted(str(p.relative_to(configs)) for p in configs.glob('*/*.json'))})"
                )
        pre = init.get("pretraining")
        if pre is not None:
            if pre not in (spec.get("pretrainings") or {}):
                raise ValueError(
                    f"{where}: init '{name}' names the pre-training '{pre}', not among the spec's pretrainings "
                    f"{sorted(spec.get('pretrainings') or {})}"
                )
            if "pretrained_ckpt" in init:
                raise ValueError(f"{where}: init '{name}' names both a pre-training and a pretrained_ckpt")
    _check_spec(spec, where, configs)
    names = _class_names(spec, configs) if spec.get("open_set") else None
    for cls in spec.get("open_set") or []:
        if names is not None and cls not in names:
            raise ValueError(f"{where}: open_set names '{cls}', not a class of {spec['bundle']} {names}")
    spec.setdefault("label_fractions", [1.0])
    spec.setdefault("seeds", [0])
    spec.setdefault("lambdas", [None])
    spec.setdefault("overrides", {})
    spec["root"] = str(root)
    return spec


def _check_contrasts(where, contrasts, inits) -> None:
    """``contrasts``: a list of [init, against] pairs of two different inits among ``inits``."""
    if contrasts is None:
        return
    if not isinstance(contrasts, list):
        raise ValueError(f"{where}: 'contrasts' must be a list of [init, against] pairs, got {contrasts!r}")
    for pair in contrasts:
        if not (isinstance(pair, list) and len(pair) == 2 and pair[0] != pair[1]):
            raise ValueError(f"{where}: a contrast is a pair of two different inits [init, against], got {pair!r}")
        unknown = [i for i in pair if i not in inits]
        if unknown:
            raise ValueError(
                f"{where}: contrast {pair} names '{unknown[0]}', not one of the inits {sorted(inits)}"
                f"{_close(str(unknown[0]), list(inits))}"
            )


def _class_names(spec: dict, configs: Path) -> list[str] | None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(configs / f) for f in spec["configs"]])
    names = parser.get("class_names")
    return list(names) if isinstance(names, list) else None


#: what a spec may hold (the module docstring says what each means)
SPEC_KEYS = (
    "name",
    "description",
    "bundle",
    "configs",
    "dataset_dir",
    "output_dir",
    "overrides",
    "inits",
    "reference",
    "contrasts",
    "label_fractions",
    "seeds",
    "lambdas",
    "fraction_inits",
    "fraction_overrides",
    "later_fractions",
    "later_inits",
    "split_seed",
    "tracking",
    "unit",
    "panel_cases",
    "root",
    "blocks",
    "pretrainings",
    "open_set",
    "positioning",
    "results",
    "records",
    "evaluations",
)

#: what a block of a spec may hold: its own bundle, data and output, configs added to the spec's, overrides and
#: per-init entries over the spec's
BLOCK_KEYS = (
    "description",
    "bundle",
    "configs",
    "dataset_dir",
    "output_dir",
    "overrides",
    "inits",
    "reference",
    "contrasts",
    "open_set",
    "positioning",
    "results",
)

#: what a pre-training of a spec may hold: a mosmos_pretrain run (``configs``, ``dataset_dir``, ``overrides``), or a
#: ``clip_checkpoint`` of a user's CLIP weights (``mosmos clip-checkpoint``'s arguments)
PRETRAINING_KEYS = ("description", "configs", "dataset_dir", "overrides", "clip_checkpoint")

#: the keys of an init that are the runner's, not the bundle's: its variant files and the pre-training it consumes
INIT_KEYS = ("variant", "pretraining")


#: spec entries (and override keys) that hold paths: relative ones are taken from the spec's root
PATH_KEYS = ("dataset_dir", "output_dir", "pretrained_ckpt", "records")

#: override keys that hold a path or a name (an open_clip tag, ``local-dir:``/``hf-hub:`` models): relative ones are
#: taken from the spec's root only where they look like a path (hold a "/" and no ":")
NAME_OR_PATH_KEYS = ("clip_pretrained", "text_tower", "image_tower_weights")


def _spec_root(spec: dict, path: Path) -> Path:
    """The folder relative paths of the spec are taken from: its ``root``, relative to the spec file (the spec's
    own folder when absent), so a spec means the same files from whatever folder it is run."""
    return Path(os.path.normpath(path.resolve().parent / str(spec.get("root", "."))))


def _fix_paths(spec: dict, root: Path) -> None:
    """Relative paths of a spec, a block or a pre-training (:data:`PATH_KEYS` at the top and in its overrides, inits
    and ``clip_checkpoint``; :data:`NAME_OR_PATH_KEYS` where they look like paths) made absolute against ``root``."""

    def fix(d: dict) -> None:
        for key in PATH_KEYS:
            value = d.get(key)
            if isinstance(value, str) and value and not value.startswith("$") and not os.path.isabs(value):
                d[key] = str(root / value)
        for key in NAME_OR_PATH_KEYS:
            value = d.get(key)
            if isinstance(value, str) and "/" in value and ":" not in value and not os.path.isabs(value):
                d[key] = str(root / value)

    fix(spec)
    groups = [spec.get("overrides"), spec.get("clip_checkpoint"), *(spec.get("fraction_overrides") or {}).values()]
    groups += list(spec["inits"].values()) if isinstance(spec.get("inits"), dict) else []
    pretrainings = spec.get("pretrainings")
    for pre in pretrainings.values() if isinstance(pretrainings, dict) else []:
        if isinstance(pre, dict):
            fix(pre)
            groups += [pre.get("overrides"), pre.get("clip_checkpoint")]
    for group in groups:
        if isinstance(group, dict):
            fix(group)


def _check_pretrainings(spec: dict, path: Path, root: Path) -> None:
    """A spec's ``pretrainings``: each a mosmos_pretrain run whose configs exist and whose overrides are keys of
    them, or a ``clip_checkpoint`` naming its weights."""
    from mosmos_components.bundle_runner import bundles_dir

    table = spec.get("pretrainings")
    if table is None:
        return
    if not isinstance(table, dict):
        raise ValueError(f"{path}: 'pretrainings' must map names to pre-trainings, got {table!r}")
    configs = bundles_dir() / "mosmos_pretrain" / "configs"
    for name, pre in table.items():
        where = f"{path} (pre-training '{name}')"
        _check_entry(where, pre, PRETRAINING_KEYS, "pre-training")
        if "clip_checkpoint" in pre:
            args = pre["clip_checkpoint"]
            allowed = ("clip_pretrained", "backbone", "force_quick_gelu", "text_tower")
            if not isinstance(args, dict) or not args.get("clip_pretrained"):
                raise ValueError(f"{where}: clip_checkpoint needs its clip_pretrained weights, got {args!r}")
            bad = [k for k in args if k not in allowed]
            if bad:
                raise ValueError(
                    f"{where}: clip_checkpoint takes {list(allowed)}, not '{bad[0]}'{_close(bad[0], allowed)}"
                )
            continue
        files = list(pre.get("configs") or ["train.json"])
        missing = [f for f in files if not (configs / f).is_file()]
        if missing:
            raise ValueError(
                f"{where}: mosmos_pretrain has no config {missing[0]} "
                f"(there: {sorted(str(p.relative_to(configs)) for p in configs.rglob('*.json'))})"
            )
        if not pre.get("dataset_dir") and not spec.get("dataset_dir"):
            raise ValueError(f"{where}: no dataset_dir (the image-report corpus it pre-trains on)")
        _check_keys([configs / f for f in files], [("overrides", pre.get("overrides") or {})], where, "mosmos_pretrain")


def _check_spec(spec: dict, where, configs: Path) -> None:
    """Everything a grid says, checked before its first cell: the override keys (each must be a key of the bundle's
    configs, nested ones as ``a#b``), label fractions in (0, 1], λ in [0, 1], no value twice. Errors name the spec
    file (and block) and, for a misspelt key, the closest valid one."""
    for key, low, high, low_open in (("label_fractions", 0.0, 1.0, True), ("lambdas", 0.0, 1.0, False)):
        values = spec.get(key, [1.0] if key == "label_fractions" else [None])
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: '{key}' must be a non-empty list, got {values!r}")
        for v in values:
            if v is None and key == "lambdas":
                continue
            if (
                not isinstance(v, (int, float))
                or isinstance(v, bool)
                or not (low < v <= high if low_open else low <= v <= high)
            ):
                raise ValueError(
                    f"{where}: '{key}' holds {v!r}; each must lie in {'(' if low_open else '['}{low:g}, {high:g}]"
                )
    seeds = spec.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds)
    ):
        raise ValueError(f"{where}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    later = spec.get("later_fractions", [])
    fractions = spec.get("label_fractions", [1.0])
    if not isinstance(later, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and any(math.isclose(v, f) for f in fractions)
        for v in later
    ):
        raise ValueError(f"{where}: 'later_fractions' must list some of the label_fractions {fractions}, got {later!r}")
    for key in ("label_fractions", "seeds", "lambdas"):
        values = [v for v in spec.get(key) or [] if v is not None and not isinstance(v, (list, dict))]
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ValueError(f"{where}: '{key}' lists {twice} more than once (each cell would run twice)")
    files = [configs / f for f in spec["configs"]]
    files += [configs / f for init in spec["inits"].values() for f in _variants(init)]
    groups = [("overrides", spec.get("overrides") or {})]
    groups += [(f"fraction_overrides '{k}'", v) for k, v in (spec.get("fraction_overrides") or {}).items()]
    groups += [(f"init '{k}'", {a: b for a, b in v.items() if a not in INIT_KEYS}) for k, v in spec["inits"].items()]
    _check_keys(files, groups, where, spec["bundle"])
    evaluations = spec.get("evaluations") or {}
    if not isinstance(evaluations, dict):
        raise ValueError(f"{where}: 'evaluations' must map names to overrides of evaluate.json, got {evaluations!r}")
    for name in evaluations:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(name)) or name == "report":
            raise ValueError(
                f"{where}: evaluation name {name!r} must be a folder name of letters, digits, '_', '.' or '-' "
                "(not 'report', the cell's own evaluation)"
            )
    _check_keys(
        files + [configs / "evaluate.json"],
        [(f"evaluations '{k}'", v) for k, v in evaluations.items()],
        where,
        spec["bundle"],
    )


def _check_keys(files: list[Path], groups: list[tuple[str, dict]], where, bundle: str) -> None:
    """Each override key of ``groups`` must be a key of the config ``files`` (merged): a misspelt key would change
    nothing."""
    from monai.bundle import ConfigParser

    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"{where}: the bundle has no config {missing[0]}")
    parser = ConfigParser()
    parser.read_config([str(f) for f in dict.fromkeys(files)])
    top = [k for k in parser.get() if not str(k).startswith("_")]
    for name, over in groups:
        if not isinstance(over, dict):
            raise ValueError(f"{where}: {name} must map config keys to values, got {over!r}")
        for key in over:
            if key not in parser:
                raise ValueError(
                    f"{where}: {name}: '{key}' is not a key of the {bundle} configs{_close(key, top)}; "
                    "it would change nothing"
                )


def cells_of(spec: dict) -> list[Cell]:
    """The spec's cells, block by block, each block seed-major: a run cut short leaves whole seeds (every method at
    every fraction). ``fraction_inits`` (``{"1.0": ["random", "mosmos"]}``) runs only some inits at a fraction;
    ``later_fractions`` (``[1.0]``) puts those fractions' cells, seed-major too, after all the others, and
    ``later_inits`` (``["ssl"]``) those inits' cells, seed-major too, after those."""
    if "_blocks" in spec:
        return [
            Cell(c.init, c.fraction, c.seed, c.lam, name)
            for name, sub in spec["_blocks"].items()
            for c in cells_of(sub)
        ]
    later_fractions = [float(f) for f in spec.get("later_fractions") or []]
    later_inits = set(spec.get("later_inits") or [])

    def stage(cell: Cell) -> int:  # 0: the grid; 1: the later fractions; 2: the later inits
        if cell.init in later_inits:
            return 2
        return int(any(math.isclose(cell.fraction, g) for g in later_fractions))

    cells = [
        Cell(i, float(f), int(s), None if lam is None else float(lam))
        for s in spec["seeds"]
        for f in spec["label_fractions"]
        for lam in spec["lambdas"]
        for i in _inits_at(spec, float(f))
    ]
    return sorted(cells, key=stage)  # stable: seed-major inside each stage


def grid_of(spec: dict, cell: Cell) -> dict:
    """The spec of the grid a cell belongs to: its block's, or the spec itself."""
    return spec["_blocks"][cell.block] if cell.block is not None else spec


def _inits_at(spec: dict, fraction: float) -> list[str]:
    for key, names in (spec.get("fraction_inits") or {}).items():
        if math.isclose(float(key), fraction):
            return [i for i in spec["inits"] if i in names]
    return list(spec["inits"])


def _fraction_overrides(spec: dict, fraction: float) -> dict:
    """The overrides ``spec["fraction_overrides"]`` gives this label fraction (keys are fractions as text)."""
    table = spec.get("fraction_overrides") or {}
    for key, over in table.items():
        if math.isclose(float(key), fraction):
            return dict(over)
    return {}


def cell_configs(spec: dict, cell: Cell) -> list[str]:
    """The bundle configs of a cell: the spec's, then its initialisation's named variant files (``"variant"``: a
    file or a list of files under the bundle's ``configs/``, e.g. ``"baselines/imagenet_vit.json"``)."""
    return list(spec["configs"]) + _variants(spec["inits"][cell.init])


def _variants(init: dict) -> list[str]:
    """An init's ``"variant"`` entry as a list of config files (it may name one or several)."""
    variant = init.get("variant") or []
    return [variant] if isinstance(variant, str) else list(variant)


def _overrides(spec: dict, cell: Cell, folder: Path, out: Path) -> dict:
    over = {
        "dataset_dir": spec["dataset_dir"],
        **spec["overrides"],
        **_fraction_overrides(spec, cell.fraction),
        **{k: v for k, v in spec["inits"][cell.init].items() if k not in INIT_KEYS},
        "ckpt_dir": str(folder / "models"),
        "output_dir": str(folder / "eval"),
        "datalist_file": str(out / "datalist.json"),
        "label_fraction": cell.fraction,
        "seed": cell.seed,
        "split_seed": int(spec.get("split_seed", 0)),
        "overwrite": True,
        "show_progress": False,
    }
    pre = spec["inits"][cell.init].get("pretraining")
    if pre is not None:
        over["pretrained_ckpt"] = str(pretraining_checkpoint(spec, pre))
    if cell.lam is not None:
        over["lambda_pta"] = cell.lam
    if spec.get("tracking") == "mlflow":
        over.update(
            tracking="mlflow",
            experiment_name=spec["name"].split("/")[0],
            run_name=cell.where,
            tracking_uri=f"sqlite:///{(out / 'mlruns.db').resolve()}",
        )
    return over


def cell_recipe(spec: dict, cell: Cell) -> dict:
    """What decides a cell's result apart from where it reads and writes: its bundle and configs, its overrides
    (the spec's, its fraction's, its init's), the split seed and the definition of the pre-training it starts
    from. Paths are left out, so a grid's cells copied to another machine still match their spec."""
    init = spec["inits"][cell.init]
    over = {**spec["overrides"], **_fraction_overrides(spec, cell.fraction)}
    over.update({k: v for k, v in init.items() if k not in INIT_KEYS})
    pre = init.get("pretraining")
    recipe = {
        "bundle": spec["bundle"],
        "configs": cell_configs(spec, cell),
        "overrides": _settings(over),
        "split_seed": int(spec.get("split_seed", 0)),
        # by definition, not name: specs that share cells may name one pre-training differently
        "pretraining": None if pre is None else pretraining_recipe(spec["pretrainings"][pre]),
    }
    return json.loads(json.dumps(recipe))  # as it reads back from a file


def _settings(over: dict) -> dict:
    """``over`` without the entries that name files or folders (:data:`PATH_KEYS`, :data:`NAME_OR_PATH_KEYS`)."""
    return {k: v for k, v in over.items() if k not in PATH_KEYS + NAME_OR_PATH_KEYS}


def pretraining_recipe(definition: dict) -> dict:
    """What decides a pre-training's weights: its configs, its overrides and its ``clip_checkpoint`` settings, without
    paths (its corpus folder, its tower files) or description, so that a finished pre-training copied with its grid to
    another machine still matches the spec that made it."""
    recipe = {
        "configs": definition.get("configs"),
        "overrides": _settings(definition.get("overrides") or {}),
        "clip_checkpoint": _settings(definition.get("clip_checkpoint") or {}) or None,
    }
    return json.loads(json.dumps(recipe))


def _recipe_changes(recorded: dict, now: dict, prefix: str = "") -> list[str]:
    """The settings in which two recipes differ, as ``key: recorded -> now`` (nested keys joined by dots)."""
    changes = []
    for key in sorted(set(recorded) | set(now), key=str):
        old, new = recorded.get(key, "(absent)"), now.get(key, "(absent)")
        if isinstance(old, dict) and isinstance(new, dict):
            changes += _recipe_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key}: {json.dumps(old)} -> {json.dumps(new)}")
    return changes


def _check_recorded_recipes(spec: dict, cells: list[Cell]) -> None:
    """Refuse, before any cell runs, to go on with a grid whose output folder holds cells (finished, or started
    and resumable) made with other settings than the spec now gives them. Cells recorded before recipes were kept
    cannot be checked: they are counted in a warning."""
    changed, unchecked = [], 0
    for cell in cells:
        folder = _cell_folder(spec, cell)
        recorded = None
        if (folder / "done.json").is_file():
            recorded = json.loads((folder / "done.json").read_text(encoding="utf-8")).get("recipe")
            unchecked += recorded is None
        elif (folder / "recipe.json").is_file():
            recorded = json.loads((folder / "recipe.json").read_text(encoding="utf-8"))
        if recorded is None:
            continue
        diff = _recipe_changes(recorded, cell_recipe(grid_of(spec, cell), cell))
        if diff:
            changed.append(f"{folder}: {'; '.join(diff)}")
    if unchecked:
        logger.warning(
            "experiment %s: %d finished cell(s) predate recorded recipes; kept unchecked", spec["name"], unchecked
        )
    if changed:
        shown = "\n  ".join(changed[:5]) + (f"\n  ... and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise ValueError(
            f"{spec['_path']}: {len(changed)} cell(s) in the output folder were run with other settings than the spec "
            f"now gives them:\n  {shown}\nWrite the grid to a new output folder (--output_dir), or remove those cell "
            "folders to run them again."
        )


def _run_cell(spec: dict, cell: Cell) -> dict:
    """Train, test and record one cell of ``spec`` (its own grid: the spec, or the cell's block)."""
    from mosmos_components.bundle_runner import run_bundle

    out = Path(spec["output_dir"])
    folder = out / "cells" / cell.name
    over = _overrides(spec, cell, folder, out)
    configs = cell_configs(spec, cell)
    recipe = cell_recipe(spec, cell)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_json_save(recipe, folder / "recipe.json")
    units = _training_units(spec, configs, over)
    logger.warning("experiment %s: %s trains on %d unit(s): %s", spec["name"], cell.name, len(units), ", ".join(units))
    resumed_at = _resumed_at(folder / "models")
    start_from = _init_weights(over)
    t0 = time.time()
    run_bundle(spec["bundle"], configs, **over)  # resumes from models/checkpoint.pt if interrupted
    t1 = time.time()
    earlier_s = _epochs_s(folder / "eval" / "train_history.csv", resumed_at)
    eval_over = _test_overrides(over)
    eval_over["validate#report#slices"] = int(spec.get("panel_cases", 3))  # slices kept for the qualitative panel
    run_bundle(spec["bundle"], configs + ["evaluate.json"], **eval_over)
    per_case = folder / "eval" / "report" / "per_case.csv"
    rows, names = _read_scores(per_case)
    t2 = time.time()
    evaluations = {name: _evaluation(spec, cell, name) for name in spec.get("evaluations") or {}}
    done = {
        **cell.coords(),
        "cell": cell.name,
        "training_units": units,
        "train_s": round(t1 - t0 + earlier_s, 1),  # with the epochs of earlier, interrupted runs
        "resumed_at_epoch": resumed_at,
        "eval_s": round(t2 - t1, 1),
        "per_case": str(per_case),
        "summary": summarize(rows, names),
        "recipe": recipe,
    }
    if evaluations:
        done["evaluations"] = evaluations
    if start_from is not None:
        done["init_weights"] = start_from
    done["ran_on"] = where_it_runs()
    atomic_json_save(done, folder / "done.json")
    return done


def _test_overrides(over: dict) -> dict:
    """A cell's overrides for its tests: those of its training, less the tracking ones (a test is not a run of its
    own in MLflow)."""
    return {k: v for k, v in over.items() if k not in ("tracking", "experiment_name", "run_name", "tracking_uri")}


def _read_scores(per_case: Path) -> tuple[list[dict], list[str]]:
    """A ``per_case.csv``'s rows (Dice and HD95 as numbers) and its class names in order."""
    with open(per_case, encoding="utf-8") as fh:
        rows = [dict(r, dice=float(r["dice"]), hd95=float(r["hd95"])) for r in csv.DictReader(fh)]
    return rows, list(dict.fromkeys(r["class"] for r in rows))


def _evaluation(spec: dict, cell: Cell, name: str) -> dict:
    """The spec's further evaluation ``name`` of a trained cell (``evaluations``: overrides of ``evaluate.json``,
    e.g. ``{"keep_largest": true}``): the same test with those overrides, written to ``eval/<name>/``; returns its
    record for ``done.json`` (overrides, per-case file, summary, wall time)."""
    from mosmos_components.bundle_runner import run_bundle

    out = Path(spec["output_dir"])
    folder = out / "cells" / cell.name
    extra = dict(spec["evaluations"][name])
    over = _test_overrides(_overrides(spec, cell, folder, out))
    over.update(extra, output_dir=str(folder / "eval" / name))
    over["validate#report#slices"] = 0
    t = time.time()
    run_bundle(spec["bundle"], cell_configs(spec, cell) + ["evaluate.json"], **over)
    per_case = folder / "eval" / name / "report" / "per_case.csv"
    rows, names = _read_scores(per_case)
    return {
        "overrides": extra,
        "per_case": str(per_case),
        "summary": summarize(rows, names),
        "eval_s": round(time.time() - t, 1),
    }


def _catch_up_evaluations(spec: dict, cell: Cell) -> bool:
    """Run the spec's evaluations that a finished cell lacks (added to the spec after it ran, or changed since) and
    add them to its ``done.json``; a cell whose weights are gone (a grid restored from its records) is left as it
    is, with a warning. Returns whether ``done.json`` changed."""
    folder = _cell_folder(spec, cell)
    done = json.loads((folder / "done.json").read_text(encoding="utf-8"))
    have = done.get("evaluations") or {}
    wanted = spec.get("evaluations") or {}
    missing = [n for n, o in wanted.items() if (have.get(n) or {}).get("overrides") != o]
    if not missing:
        return False
    if not (folder / "models" / "model.pt").is_file():
        logger.warning(
            "experiment %s: %s lacks the evaluation(s) %s and its weights are gone (%s): left without them",
            spec["name"],
            cell.name,
            ", ".join(missing),
            folder / "models" / "model.pt",
        )
        return False
    for name in missing:
        logger.warning("experiment %s: %s: evaluation '%s'", spec["name"], cell.name, name)
        have[name] = _evaluation(grid_of(spec, cell), cell, name)
    done["evaluations"] = have
    atomic_json_save(done, folder / "done.json")
    return True


def where_it_runs() -> dict:
    """The machine a cell ran on, for its wall time (and its last digits) to be read against: the device (a GPU's
    name, or "cpu"), the processor, the vector instructions torch's CPU kernels use (``cpu_capability``: ``AVX512``,
    ``AVX2``, ...; two processors that differ there sum in another order, as another number of threads does), its
    cores and the threads torch uses, and the versions of torch and MONAI; and, where set, the environment variables
    that choose those kernels (``kernel_settings``: ``ATEN_CPU_CAPABILITY=avx2`` on an AVX-512 processor makes torch
    use its AVX2 kernels, the ones ``cpu_capability`` then names)."""
    import platform

    import monai
    import torch

    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    where = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "monai": monai.__version__,
    }
    chosen = {k: os.environ[k] for k in KERNEL_SETTINGS if k in os.environ}
    if chosen:
        where["kernel_settings"] = chosen
    return where


#: environment variables that choose the CPU kernels of torch, oneDNN and MKL (recorded with a run where set)
KERNEL_SETTINGS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR")


def _init_weights(over: dict) -> dict | None:
    """The pre-trained checkpoint a cell starts from and its SHA-256: the recipe names a pre-training by its
    definition, but two runs of one definition need not give the same weights (a pre-training re-run on another
    machine), so each cell records which weights it started from."""
    from mosmos_components.checkpoint import file_sha256

    path = over.get("pretrained_ckpt")
    if not path:
        return None
    return {"path": str(path), "sha256": file_sha256(path) if Path(path).is_file() else None}  # or a model folder


def _training_units(spec: dict, configs: list[str], over: dict) -> list[str]:
    """The units (patients where the bundle groups cases, else label files) the cell's label fraction and seed
    select, from the same config expression its training evaluates."""
    from mosmos_components.bundle_runner import parsed_entries
    from mosmos_components.data.datalist import training_units

    quiet = {k: v for k, v in over.items() if k not in ("tracking", "experiment_name", "run_name", "tracking_uri")}
    got = parsed_entries(spec["bundle"], configs, ["datalist", "split_group_key"], **quiet)
    return training_units(got["datalist"], got["split_group_key"])


def pretraining_checkpoint(spec: dict, name: str) -> Path:
    """Where the spec's pre-training ``name`` writes the checkpoint its inits consume."""
    folder = Path(spec["_pretrain_dir"]) / name
    return folder / ("model.pt" if "clip_checkpoint" in spec["pretrainings"][name] else "models/model.pt")


def run_pretraining(spec: dict, name: str) -> Path:
    """Run the spec's pre-training ``name`` unless it is done (``done.json`` beside it); an interrupted one resumes
    from its checkpoint. Returns its checkpoint."""
    from mosmos_components.bundle_runner import run_bundle
    from mosmos_components.checkpoint import file_sha256

    pre = spec["pretrainings"][name]
    folder = Path(spec["_pretrain_dir"]) / name
    ckpt = pretraining_checkpoint(spec, name)
    if (folder / "done.json").is_file() and ckpt.is_file():
        done = json.loads((folder / "done.json").read_text(encoding="utf-8"))
        made_from = done.get("definition")
        diff = [] if made_from is None else _recipe_changes(pretraining_recipe(made_from), pretraining_recipe(pre))
        if diff:
            raise ValueError(
                f"{folder} holds a pre-training '{name}' made with other settings than the spec gives it: "
                f"{'; '.join(diff)}; rename the spec's pre-training or move that folder away"
            )
        if "gate" not in done and "definition" in done:  # finished before the gate
            atomic_json_save(dict(done, gate=_gate_pretraining(spec, name)), folder / "done.json")
        return ckpt
    logger.warning("experiment %s: pre-training %s", spec["name"].split("/")[0], name)
    print(f"[pre-training] {name}", flush=True)
    resumed_at = _resumed_at(folder / "models")  # 0 for a CLIP checkpoint (written at once, no models/)
    t0 = time.time()
    if "clip_checkpoint" in pre:
        from mosmos_components.transfer import save_clip_checkpoint

        folder.mkdir(parents=True, exist_ok=True)
        save_clip_checkpoint(ckpt, **pre["clip_checkpoint"])
    else:
        over = dict(_pretraining_run(spec, name, "eval"), overwrite=True)
        if spec.get("tracking") == "mlflow":
            over.update(
                tracking="mlflow",
                experiment_name=spec["name"].split("/")[0],
                run_name=f"pretrain/{name}",
                tracking_uri=f"sqlite:///{(Path(spec['_pretrain_dir']).parent / 'mlruns.db').resolve()}",
            )
        run_bundle("mosmos_pretrain", list(pre.get("configs") or ["train.json"]), **over)
    earlier_s = _epochs_s(folder / "eval" / "train_history.csv", resumed_at)  # the sittings before an interruption
    done = {"pretraining": name, "definition": pre, "checkpoint": str(ckpt)}
    done.update(train_s=round(time.time() - t0 + earlier_s, 1), resumed_at_epoch=resumed_at)
    done["ran_on"] = where_it_runs()  # threads and the CPU's kernels decide the weights (docs/training.md)
    done["checkpoint_sha256"] = file_sha256(ckpt)  # what the cells' init_weights name
    atomic_json_save(done, folder / "done.json")  # kept, whatever its held-out test does
    atomic_json_save(dict(done, gate=_gate_pretraining(spec, name)), folder / "done.json")
    return ckpt


def _pretraining_run(spec: dict, name: str, output: str) -> dict:
    """The overrides of a ``mosmos_pretrain`` run of the spec's pre-training ``name`` on its checkpoint folder
    (``<pre-training>/models``), writing into ``<pre-training>/<output>``: its training (``eval``) or its held-out
    test (``test``)."""
    pre, folder = spec["pretrainings"][name], Path(spec["_pretrain_dir"]) / name
    return {
        "dataset_dir": pre.get("dataset_dir") or spec["dataset_dir"],
        **(pre.get("overrides") or {}),
        "ckpt_dir": str(folder / "models"),
        "output_dir": str(folder / output),
        "show_progress": False,
    }


#: the held-out retrieval figure Gate 1 asks to beat chance (with the tag mAP)
GATE_RETRIEVAL = "recall_at_10"


def _gate_pretraining(spec: dict, name: str) -> dict:
    """Evaluate a finished ``mosmos_pretrain`` run of the spec on its held-out test split (the bundle's
    ``evaluate.json``, into ``<pre-training>/test``) and judge it by :func:`pretraining_gate`. Weights without
    report supervision (CLIP's written as they are, the SSL proxy tasks') are not judged: ``passed`` is None and
    the summary says why."""
    from mosmos_components.bundle_runner import run_bundle
    from mosmos_components.checkpoint import read_sidecar

    pre = spec["pretrainings"][name]
    folder = Path(spec["_pretrain_dir"]) / name
    kind = "clip" if "clip_checkpoint" in pre else read_sidecar(pretraining_checkpoint(spec, name)).get("weights_kind")
    if kind != "mosmos":
        why = f"Gate 1 not applicable: {kind} weights, without report supervision"
        return {"passed": None, "checks": {}, "summary": why}
    print(f"[pre-training] {name}: held-out test (Gate 1)", flush=True)
    configs = list(pre.get("configs") or ["train.json"]) + ["evaluate.json"]
    run_bundle("mosmos_pretrain", configs, **_pretraining_run(spec, name, "test"))
    gate = pretraining_gate(folder)
    logger.warning("experiment %s: pre-training %s %s", spec["name"].split("/")[0], name, gate["summary"])
    return gate


def pretraining_gate(folder: str | Path) -> dict:
    """Gate 1 for a ``mosmos_pretrain`` run evaluated on held-out pairs (``<folder>/test``, its ``evaluate.json``)
    with its validation history beside it (``<folder>/eval``): its kept checkpoint passes when the bootstrap 95 %
    CI of held-out image-to-report recall@10 and of the tag mAP lie above chance, and every label set's class
    queries are more separated (lower mean cosine) than in the network it started from (the history's
    ``query_cosine_<set>_at_start``). Returns each check with its figures, ``passed`` and a one-line ``summary``."""
    folder = Path(folder)
    report_path, metrics_path = folder / "test" / "held_out_report.json", folder / "test" / "metrics.csv"
    history_path = folder / "eval" / "val_history.csv"
    for path in (report_path, metrics_path, history_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; Gate 1 needs the pre-training's held-out test and history")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    with open(metrics_path, encoding="utf-8") as fh:
        kept = {row[0]: float(row[1]) for row in csv.reader(fh) if len(row) == 2}
    with open(history_path, encoding="utf-8") as fh:
        start = next(csv.DictReader(fh), {})

    def number(v):
        return None if v is None or math.isnan(float(v)) else float(v)

    def shown(v, digits=".3f"):
        return "-" if v is None else format(v, digits)

    checks, parts = {}, []
    for key in (GATE_RETRIEVAL, "tag_map"):
        fig = report.get(key) or {}
        ci, chance = [number(v) for v in fig.get("ci95") or [None, None]], number(fig.get("chance"))
        ok = None not in (ci[0], chance) and ci[0] > chance
        checks[key] = {"value": number(fig.get("value")), "ci95": ci, "chance": chance, "passed": ok}
        interval = ", ".join(shown(v) for v in ci)
        parts.append(f"{key} {shown(checks[key]['value'])} [{interval}] vs chance {shown(chance, '.3g')}")
    measured = [k[: -len("_at_start")] for k in start if k.startswith("query_cosine_") and k.endswith("_at_start")]
    for key in measured:  # label sets (mean cosine) are checked; named pairs (``_vs_``) are reported
        before, after = number(start[f"{key}_at_start"]), number(kept.get(key))
        entry = {"at_start": before, "kept": after}
        if "_vs_" not in key:
            entry["passed"] = None not in (before, after) and after < before
            checks[key] = entry
        parts.append(f"{key} {shown(before)} -> {shown(after)}")
    if not any("_vs_" not in k for k in measured):
        checks["query_cosine"] = {"passed": False, "why": f"{history_path} records no query_cosine_<set>_at_start"}
    gate = {"passed": all(c["passed"] for c in checks.values()), "checks": checks}
    return dict(gate, summary=f"{_gate_verdict({'gate': gate})}: {'; '.join(parts)}")


def run_experiment(
    spec_path: str | Path,
    output_dir: str | None = None,
    max_cells: int | None = None,
    pretrain_dir: str | None = None,
    records: str | None = None,
) -> dict:
    """Run every cell of the spec not yet done (at most ``max_cells`` of them), each after the pre-training its
    init consumes, then aggregate what is done (per block, for a spec with blocks). ``pretrain_dir``: where the
    spec's pre-trainings are written and found (default ``<output_dir>/pretrain``); specs sharing one reuse a
    pre-training of the same name and definition. ``records`` (or the spec's ``records``): a folder that receives
    the grid's weightless record (:func:`write_records`) before the first cell and after each cell and
    pre-training, so that what finished outlives the machine it ran on."""
    spec = load_spec(spec_path)
    records = records if records is not None else spec.get("records")
    if output_dir is not None:
        _move_output(spec, Path(output_dir))
    if pretrain_dir is not None:
        spec["_pretrain_dir"] = str(Path(pretrain_dir).resolve())
        for grid in (spec.get("_blocks") or {}).values():
            grid["_pretrain_dir"] = spec["_pretrain_dir"]
    out = Path(spec["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    atomic_json_save(_public(spec), out / "spec.json")
    grids = spec.get("_blocks") or {None: spec}
    for grid in grids.values():
        Path(grid["output_dir"]).mkdir(parents=True, exist_ok=True)
        if not grid.get("_borrowed"):  # a folder shared with another spec keeps that spec's own record
            atomic_json_save(_public(grid), Path(grid["output_dir"]) / "spec.json")
    cells = cells_of(spec)
    _check_recorded_recipes(spec, cells)
    if records:
        write_records(spec, records)
    ran = skipped = 0
    for i, cell in enumerate(cells, 1):
        grid = grid_of(spec, cell)
        if (_cell_folder(spec, cell) / "done.json").is_file():
            skipped += 1
            if _catch_up_evaluations(spec, cell) and records:
                write_records(spec, records)
            continue
        if max_cells is not None and ran >= max_cells:
            break
        pre = grid["inits"][cell.init].get("pretraining")
        if pre is not None:
            run_pretraining(grid, pre)
            if records:
                write_records(spec, records)
        left = _time_left(spec, cells)
        logger.warning("experiment %s: cell %d/%d %s%s", spec["name"], i, len(cells), cell.where, left)
        print(f"[{i}/{len(cells)}] {cell.where}{left}", flush=True)
        _run_cell(grid, cell)
        ran += 1
        if records:
            write_records(spec, records)
    tables, results = [], []
    for grid in grids.values():
        result = aggregate(grid["output_dir"], grid)
        tables += result["tables"]
        results.append(result["results"])
    return {
        "tables": tables,
        "results": results[0] if len(results) == 1 else str(out),
        "ran": ran,
        "skipped": skipped,
        "cells": len(cells),
    }


#: a finished cell's record, relative to its folder: enough to keep it in its grid and recompute every table
CELL_RECORD = ("done.json", "eval/report/per_case.csv", "eval/*/report/per_case.csv", "eval/*_history.csv")
#: a finished pre-training's record, relative to its folder (its held-out test report where one was written)
PRETRAINING_RECORD = ("done.json", "eval/*_history.csv", "test/*.json", "test/metrics.csv")


def write_records(spec: dict, dest: str | Path) -> int:
    """Write the weightless record of the grid to ``dest``: its split (``datalist.json``), and of every finished cell
    (:data:`CELL_RECORD`, in ``cells/<cell>/``) and finished pre-training of the spec (:data:`PRETRAINING_RECORD`, in
    ``pretrain/<name>/``) — kilobytes a cell, to keep in version control, from which the grid goes on elsewhere and
    its tables recompute. A block's record goes in ``dest/<its folder under the output folder>``. Each file is
    written atomically and only where its content changed. Returns the number of files written."""
    dest, out = Path(dest), Path(spec["output_dir"])
    root = Path(spec.get("root") or ".").resolve()
    written = 0

    def keep(folder: Path, to: Path, patterns) -> int:
        files = sorted({p for pat in patterns for p in folder.glob(pat) if p.is_file()})
        n = 0
        for p in files:
            if p.name == "done.json":  # the machine's paths as the spec's root sees them
                try:
                    record = json.loads(p.read_text(encoding="utf-8"))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}: not JSON ({e}); a finished run's record is unreadable") from None
                record = _relative_to_root(record, root)
                n += atomic_bytes(json.dumps(record, indent=4).encode("utf-8"), to / p.relative_to(folder))
            else:
                n += atomic_copy(p, to / p.relative_to(folder))
        return n

    for name, grid in (spec.get("_blocks") or {None: spec}).items():
        g_out = Path(grid["output_dir"])
        to = dest if name is None else dest / (g_out.relative_to(out) if g_out.is_relative_to(out) else name)
        written += keep(g_out, to, ["datalist.json"])
        for done in sorted((g_out / "cells").glob("*/done.json")):
            written += keep(done.parent, to / "cells" / done.parent.name, CELL_RECORD)
    for name in spec.get("pretrainings") or {}:
        folder = Path(spec["_pretrain_dir"]) / name
        if (folder / "done.json").is_file():
            written += keep(folder, dest / "pretrain" / name, PRETRAINING_RECORD)
    return written


def _relative_to_root(value, root: Path):
    """``value`` (a record's JSON) with each absolute path under ``root`` written relative to it (``data/ACDC``,
    ``experiments/out/NAME/cells/...``): a record names where its files lie in the project, not on the machine
    that wrote it. Other strings and paths outside ``root`` are kept as they are."""
    if isinstance(value, dict):
        return {k: _relative_to_root(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_to_root(v, root) for v in value]
    if isinstance(value, str) and os.path.isabs(value) and Path(value).is_relative_to(root):
        return Path(value).relative_to(root).as_posix()
    return value


def _cell_folder(spec: dict, cell: Cell) -> Path:
    """Where a cell runs and records itself: ``<its grid's output_dir>/cells/<cell name>``."""
    return Path(grid_of(spec, cell)["output_dir"]) / "cells" / cell.name


def _resumed_at(models: Path) -> int:
    """The epoch a training writing into ``models`` resumes at (its ``checkpoint.json``), 0 when it starts afresh."""
    ckpt = models / "checkpoint.json"
    return int(json.loads(ckpt.read_text(encoding="utf-8"))["epoch"]) if ckpt.is_file() else 0


def _epochs_s(history: Path, upto: int) -> float:
    """The wall time of epochs 1..``upto`` in a training history (``epoch_s``, :class:`MetricsHistory`): what the runs
    before an interruption spent (a partial epoch it cut short is lost; histories without ``epoch_s`` give 0)."""
    if upto <= 0 or not history.is_file():
        return 0.0
    with open(history, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return sum(float(r.get("epoch_s") or 0) for r in rows if int(r["epoch"]) <= upto)


def _wall_s(done: dict) -> float:
    """A finished cell's wall time: its training and its test, in seconds."""
    return done.get("train_s", 0) + done.get("eval_s", 0)


def _cell_state(spec: dict, cell: Cell) -> tuple[str, dict | None]:
    """``("done", done.json)``, ``("started", checkpoint.json or {})`` or ``("pending", None)``."""
    folder = _cell_folder(spec, cell)
    if (folder / "done.json").is_file():
        return "done", json.loads((folder / "done.json").read_text(encoding="utf-8"))
    if (folder / "recipe.json").is_file():
        ckpt = folder / "models" / "checkpoint.json"
        return "started", json.loads(ckpt.read_text(encoding="utf-8")) if ckpt.is_file() else {}
    return "pending", None


def _estimate_s(spec: dict, cells: list[Cell]) -> tuple[float | None, int]:
    """The wall time the cells not yet done would take at the pace of the finished ones (each init at its own mean
    time a cell where it has finished one, else the mean of all), and how many finished cells it is drawn from."""
    walls: dict[str, list[float]] = {}
    todo = []
    for cell in cells:
        state, record = _cell_state(spec, cell)
        if state == "done":
            walls.setdefault(cell.init, []).append(_wall_s(record))
        else:
            todo.append(cell)
    done = [w for ws in walls.values() for w in ws]
    if not done:
        return None, 0
    pace = {init: sum(ws) / len(ws) for init, ws in walls.items()}
    mean = sum(done) / len(done)
    return sum(pace.get(c.init, mean) for c in todo), len(done)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def _chained_pretrainings(spec: dict) -> dict[Path, tuple[str, dict]]:
    """The pre-trainings the spec's inits consume: their folder -> (name, the grid that names them)."""
    return {
        Path(grid["_pretrain_dir"]) / init["pretraining"]: (init["pretraining"], grid)
        for grid in (spec.get("_blocks") or {None: spec}).values()
        for init in grid["inits"].values()
        if init.get("pretraining")
    }


def _pretrainings_left(spec: dict) -> str:
    """How many chained pre-trainings are still to write (none done, or done without their checkpoint) and, where
    some have been written, their time at the pace of those (``""`` when none is left)."""
    todo, paces = 0, []
    for folder, (name, grid) in _chained_pretrainings(spec).items():
        record = folder / "done.json"
        done = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
        if done.get("train_s"):
            paces.append(float(done["train_s"]))
        if not (done and pretraining_checkpoint(grid, name).is_file()):
            todo += 1
    if not todo:
        return ""
    left = f"{todo} pre-training{'s' if todo > 1 else ''} to write"
    if paces:
        left += f", about {_hours(todo * sum(paces) / len(paces))} at the pace of the {len(paces)} written"
    return left


def _left(spec: dict, cells: list[Cell]) -> list[str]:
    """What is left to run, as phrases: the cells' time at the pace of the finished ones, the pre-trainings to
    write."""
    left, n = _estimate_s(spec, cells)
    parts = [f"about {_hours(left)} of cells left at the pace of the {n} finished"] if left else []
    return parts + [p for p in [_pretrainings_left(spec)] if p]


def _time_left(spec: dict, cells: list[Cell]) -> str:
    parts = _left(spec, cells)
    return f" ({'; '.join(parts)})" if parts else ""


def grid_status(spec_path: str | Path, output_dir: str | None = None) -> str:
    """Where a grid stands, without running anything: each cell done (its mean Dice % and wall time), started (the
    iteration its checkpoint reached) or pending, its chained pre-trainings, and the time the rest would take at
    the pace of the finished cells."""
    spec = load_spec(spec_path)
    if output_dir is not None:
        _move_output(spec, Path(output_dir))
    cells = cells_of(spec)
    lines, counts = [], {"done": 0, "started": 0, "pending": 0}
    for i, cell in enumerate(cells, 1):
        state, record = _cell_state(spec, cell)
        counts[state] += 1
        if state == "done":
            mean = next((r["dice"] for r in record.get("summary", []) if r["class"] == "mean"), float("nan"))
            detail = f"mean Dice {100 * mean:.1f} %, {_hours(_wall_s(record))}"
        elif state == "started":
            detail = f"checkpoint at iteration {record['iteration']}" if "iteration" in record else "no checkpoint yet"
        else:
            detail = ""
        lines.append(f"[{i}/{len(cells)}] {state:8s}{cell.where}" + (f"  {detail}" if detail else ""))
    for folder, (name, grid) in _chained_pretrainings(spec).items():
        if (folder / "done.json").is_file():
            done = json.loads((folder / "done.json").read_text(encoding="utf-8"))
            if pretraining_checkpoint(grid, name).is_file():
                state = f"done, {_gate_verdict(done)}"
            else:
                state = "its record without its checkpoint: runs again before its first cell"
        else:
            state = "started" if folder.is_dir() else "pending"
        lines.append(f"pre-training {name}: {state} ({folder})")
    counted = f"{counts['done']} done, {counts['started']} started, {counts['pending']} pending of {len(cells)}"
    lines.append("; ".join([counted, *_left(spec, cells)]))
    return "\n".join(lines)


def _public(spec: dict) -> dict:
    """A spec as written beside its results: without the runner's own ``_`` entries."""
    return {k: v for k, v in spec.items() if not k.startswith("_")}


def _move_output(spec: dict, out: Path) -> None:
    """``--output_dir``: the spec's results (and the blocks' that name no folder of their own) go under ``out``."""
    old = Path(spec["output_dir"])
    spec["output_dir"] = str(out)
    spec["_pretrain_dir"] = str(out / "pretrain")
    for name, grid in (spec.get("_blocks") or {}).items():
        if Path(grid["output_dir"]) == old / name:
            grid["output_dir"] = str(out / name)
        grid["_pretrain_dir"] = spec["_pretrain_dir"]


def _done_cells(out: Path) -> list[dict]:
    """The finished cells' records; their ``per_case`` path is the one inside ``out`` (so that a grid can be
    aggregated from any working directory, or after its folder moved)."""
    cells = []
    for p in sorted((out / "cells").glob("*/done.json")):
        d = json.loads(p.read_text(encoding="utf-8"))
        d["per_case"] = str(p.parent / "eval" / "report" / "per_case.csv")
        for name, e in (d.get("evaluations") or {}).items():
            e["per_case"] = str(p.parent / "eval" / name / "report" / "per_case.csv")
        cells.append(d)
    return cells


def _seed_sd(values: list[float]) -> float:
    """The spread over seeds: the sample standard deviation (n - 1), the seeds being a sample of the possible ones;
    0 for a single seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _fmt(values: list[float], pct: bool) -> str:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return "-"
    k = 100.0 if pct else 1.0
    return f"{k * np.mean(v):.2f} ± {k * _seed_sd(v):.2f}" if len(v) > 1 else f"{k * v[0]:.2f}"


def aggregate(out: str | Path, spec: dict | None = None) -> dict:
    """Collect the done cells of ``out`` into ``results/`` (see the module docstring); returns what it wrote."""
    out = Path(out)
    spec = spec or json.loads((out / "spec.json").read_text(encoding="utf-8"))
    if spec.get("blocks") and "_blocks" not in spec:  # the folder of a spec with blocks: each block's own
        tables = []
        for name, block in spec["blocks"].items():
            folder = Path(block.get("output_dir") or out / name)
            if (folder / "spec.json").is_file():
                tables += aggregate(folder)["tables"]
        return {"tables": tables, "results": str(out)}
    done = _done_cells(out)
    res = out / str(spec.get("results") or "results")
    res.mkdir(exist_ok=True)
    if not done:
        return {"tables": [], "results": str(res)}
    classes = [r["class"] for r in done[0]["summary"] if r["class"] != "mean"]
    with open(res / "cells.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["init", "label_fraction", "seed", "lambda_pta", "class", "dice", "hd95", "train_s", "eval_s", "device"]
        )
        for d in done:
            where = (d.get("ran_on") or {}).get("device", "")
            for r in d["summary"]:
                w.writerow(
                    [d["init"], d["label_fraction"], d["seed"], d["lambda_pta"], r["class"], r["dice"], r["hd95"]]
                    + [d.get("train_s", ""), d.get("eval_s", ""), where]
                )
    inits = [i for i in spec["inits"] if any(d["init"] == i for d in done)]
    refs = _references(spec)
    unit, unit_of = spec.get("unit") or "case", _unit_map(out, spec)
    gates = _pretraining_verdicts(res, spec, Path(spec.get("_pretrain_dir") or out / "pretrain"), inits)
    tables = []
    views = [(res, done, "")]  # the cells' own evaluation, then each of the spec's further evaluations
    for name, extra in (spec.get("evaluations") or {}).items():
        evaluated = [dict(d, **d["evaluations"][name]) for d in done if name in (d.get("evaluations") or {})]
        if evaluated:
            (res / name).mkdir(exist_ok=True)
            note = f"Evaluation '{name}' ({json.dumps(extra)}; {len(evaluated)} of {len(done)} cells). "
            views.append((res / name, evaluated, note))
    for folder, cells, note in views:
        for frac in sorted({d["label_fraction"] for d in cells}):
            for lam in sorted({d["lambda_pta"] for d in cells}, key=lambda x: -1 if x is None else x):
                tables.append(
                    _table(
                        folder, cells, inits, classes, frac, lam, refs, unit, unit_of, spec.get("open_set"), gates, note
                    )
                )
                if spec.get("contrasts"):
                    tables.append(_contrasts(folder, cells, frac, lam, spec["contrasts"], unit, unit_of, note))
    _label_efficiency(res, done, inits, unit if spec.get("unit") else "case")
    _qualitative_panel(res, done, inits)
    if len({d["lambda_pta"] for d in done}) > 1:
        _lambda_box(res, done, inits)
    if spec.get("positioning"):
        _positioning(res, out, spec)
    return {"tables": tables, "results": str(res)}


def _positioning(res: Path, out: Path, spec: dict) -> str | None:
    """The paper's weakly supervised positioning maps (Fig. 7): the tag decoder's attention for each name of
    ``positioning["names"]`` (left/right pairs) on the first test scan, from the pre-training the init
    ``positioning["init"]`` consumed (``mosmos locate``), in ``results/positioning/``."""
    from mosmos_components.locate import locate

    pos = spec["positioning"]
    init = spec["inits"].get(pos.get("init", "mosmos"), {})
    pre = init.get("pretraining")
    ckpt = pretraining_checkpoint(spec, pre) if pre and "_pretrain_dir" in spec else init.get("pretrained_ckpt")
    split = out / "datalist.json"
    if not ckpt or not Path(ckpt).is_file() or not split.is_file():
        logger.warning("positioning maps skipped: no pre-training checkpoint (%s) or no split (%s)", ckpt, split)
        return None
    test = json.loads(split.read_text(encoding="utf-8")).get("test") or []
    if not test:
        return None
    names = [n for group in pos["names"] for n in ([group] if isinstance(group, str) else group)]
    found = locate(
        test[0]["image"], names, ckpt, res / "positioning", modality=pos.get("modality", "ct"), overwrite=True
    )
    return found["preview"]


def _class_means(cells: list[dict], classes: list[str], metric: str) -> dict[str, list[float]]:
    """Per class: its test-set mean ``metric`` in each cell (one value per seed)."""
    return {c: [next(r[metric] for r in d["summary"] if r["class"] == c) for d in cells] for c in classes}


def _unit_means(cells: list[dict], metric: str, unit_of: dict[str, str]) -> dict[str, float]:
    """Per unit of analysis (a patient, or the test case itself where ``unit_of`` does not name one): the mean
    ``metric`` over its cases (each the mean over its scored classes), averaged over the cells (seeds)."""
    from mosmos_components.evaluation import _means_by, _read_per_case

    per_seed = []
    for d in cells:
        by_unit: dict[str, list[float]] = {}
        for case, value in _means_by(_read_per_case(d["per_case"], metric), "case").items():
            by_unit.setdefault(unit_of.get(case, case), []).append(value)
        per_seed.append({u: float(np.mean(v)) for u, v in by_unit.items()})
    units = set.intersection(*(set(m) for m in per_seed)) if per_seed else set()
    return {u: float(np.mean([m[u] for m in per_seed])) for u in sorted(units)}


def bootstrap_mean_ci(diffs, confidence: float = 0.95, n_resamples: int = 10000, seed: int = 0) -> tuple:
    """The mean of paired differences and its bootstrap confidence interval (scipy's BCa, resampling the units).

    >>> m, lo, hi = bootstrap_mean_ci([0.01, 0.02, 0.03, 0.02, 0.05, 0.0, 0.01, 0.04])
    >>> round(m, 4), lo < m < hi
    (0.0225, True)
    """
    from scipy.stats import bootstrap

    d = np.asarray(diffs, dtype=float)
    if len(d) < 2 or np.allclose(d, d[0]):
        return float(d.mean()), float(d.min()), float(d.max())
    res = bootstrap(
        (d,), np.mean, confidence_level=confidence, n_resamples=n_resamples, random_state=seed, method="BCa"
    )
    lo, hi = res.confidence_interval
    if not (np.isfinite(lo) and np.isfinite(hi)):  # BCa undefined (e.g. a degenerate jackknife): percentile
        res = bootstrap((d,), np.mean, n_resamples=n_resamples, random_state=seed, method="percentile")
        lo, hi = res.confidence_interval
    return float(d.mean()), float(lo), float(hi)


def _references(spec: dict) -> list[str]:
    ref = spec.get("reference")
    return [] if ref is None else [ref] if isinstance(ref, str) else list(ref)


def _unit_map(out: Path, spec: dict) -> dict[str, str]:
    """Test case (its label file's name, as ``per_case.csv`` writes it) -> its unit of analysis, the value of the
    spec's ``"unit"`` key (ACDC: ``"patient"``) in the split's test items; empty when the unit is the case."""
    key = spec.get("unit")
    path = out / "datalist.json"
    if not key or not path.is_file():
        return {}
    test = json.loads(path.read_text(encoding="utf-8")).get("test", [])
    return {Path(it["label"]).name: str(it[key]) for it in test if key in it}


def _gate_verdict(done: dict) -> str:
    """A finished pre-training's Gate 1 verdict in a few words, from its ``done.json``: ``passed Gate 1``,
    ``FAILED Gate 1 (<the failed checks>)``, ``Gate 1 not yet run`` or why it does not apply."""
    gate = done.get("gate")
    if gate is None:
        return "Gate 1 not yet run"
    if gate["passed"] is None:
        return gate["summary"]
    failed = [k for k, c in gate["checks"].items() if not c.get("passed")]
    return "passed Gate 1" if gate["passed"] else f"FAILED Gate 1 ({', '.join(failed)})"


def _pretraining_verdicts(res: Path, spec: dict, pretrain_dir: Path, inits: list[str]) -> dict[str, str]:
    """``results/pretrainings.md``: each finished pre-training the shown inits start from, with its Gate 1 verdict
    (:func:`pretraining_gate`, in its ``done.json``), wall time and threads. Returns init -> a short verdict
    (``"medpix_lite: passed Gate 1"``) for the table captions; empty when no shown init has a pre-training."""
    users: dict[str, list[str]] = {}
    for init in inits:
        if spec["inits"][init].get("pretraining"):
            users.setdefault(spec["inits"][init]["pretraining"], []).append(init)
    rows, verdicts = [], {}
    for name, used_by in users.items():
        path = pretrain_dir / name / "done.json"
        if not path.is_file():
            continue
        done = json.loads(path.read_text(encoding="utf-8"))
        gate, short = done.get("gate"), _gate_verdict(done)
        verdicts.update({init: f"{name}: {short}" for init in used_by})
        ran_on = done.get("ran_on") or {}
        threads = " ".join(str(v) for v in (ran_on.get("torch_threads", "-"), ran_on.get("cpu_capability")) if v)
        train = f"{done['train_s'] / 60:.0f} min" if "train_s" in done else "-"
        rows.append([name, ", ".join(used_by), train, str(threads), gate["summary"] if gate else short])
    if rows:
        _write_table(
            res / "pretrainings",
            "The pre-trainings the methods start from (Gate 1: held-out retrieval and tag mAP above chance, class "
            "queries more separated than at the start; docs/training.md).",
            ["pre-training", "methods", "training", "threads, CPU kernels", "Gate 1"],
            rows,
        )
    return verdicts


def _table(
    res: Path,
    done,
    inits,
    classes,
    frac,
    lam,
    refs,
    unit: str,
    unit_of: dict[str, str],
    open_set=None,
    gates=None,
    note: str = "",
) -> str:
    lam_name = "default" if lam is None else f"{lam:g}"
    stem = res / f"table_frac{frac:g}_lambda{lam_name}"
    open_set = set(open_set or [])
    shown = [f"{c}†" if c in open_set else c for c in classes]
    header = ["method", *[f"{c} Dice" for c in shown], "mean Dice", *[f"{c} HD95" for c in shown], "mean HD95"]
    header += ["n seeds", f"n {unit}s"]
    for ref in refs:
        header += [
            f"Wilcoxon p Dice vs {ref}",
            f"Wilcoxon p HD95 vs {ref}",
            f"Wilcoxon p Dice per {unit} vs {ref}",
            f"Δ mean Dice per {unit} vs {ref} [95% CI]",
        ]
    select = lambda init: [  # noqa: E731
        d for d in done if d["init"] == init and d["label_fraction"] == frac and d["lambda_pta"] == lam
    ]
    rows, n_units = [], 0
    for init in inits:
        cells = select(init)
        if not cells:
            continue
        dice, hd = _class_means(cells, classes, "dice"), _class_means(cells, classes, "hd95")
        mean_dice = [float(np.nanmean([dice[c][k] for c in classes])) for k in range(len(cells))]
        mean_hd = [float(np.nanmean([hd[c][k] for c in classes])) for k in range(len(cells))]
        mine = _unit_means(cells, "dice", unit_of)
        n_units = max(n_units, len(mine))
        row = [init, *[_fmt(dice[c], True) for c in classes], _fmt(mean_dice, True)]
        row += [*[_fmt(hd[c], False) for c in classes], _fmt(mean_hd, False), str(len(cells)), str(len(mine))]
        for ref in refs:
            shared = {d["seed"] for d in cells} & {d["seed"] for d in select(ref)}  # a seed draws its patients
            ref_cells = [d for d in select(ref) if d["seed"] in shared]
            if init == ref or not ref_cells:
                row += ["-"] * 4
                continue
            paired = [d for d in cells if d["seed"] in shared]
            for m in ("dice", "hd95"):  # per class, on the class means averaged over the shared seeds
                vals, theirs = _class_means(paired, classes, m), _class_means(ref_cells, classes, m)
                x = [float(np.nanmean(vals[c])) for c in classes]
                y = [float(np.nanmean(theirs[c])) for c in classes]
                ok = [i for i in range(len(classes)) if not (math.isnan(x[i]) or math.isnan(y[i]))]
                row.append(
                    f"{wilcoxon_paired([x[i] for i in ok], [y[i] for i in ok])['p']:.3g}" if len(ok) >= 2 else "-"
                )
            test = _unit_test(paired, ref_cells, unit_of)
            row += ["-", "-"] if test is None else [f"{test['p']:.3g}", _points(test)]
        rows.append(row)
    against = " and ".join(refs) or "no reference"
    mixed = _mixed_init_weights([d for d in done if d["label_fraction"] == frac and d["lambda_pta"] == lam])
    caption = note + (
        f"Label fraction {frac:g}, lambda {lam_name}: test-set Dice % and HD95 mm, mean ± sample sd over seeds. "
        f"Against {against}: the Wilcoxon signed-rank test per {unit} ({n_units} {unit}s, each the mean Dice over its "
        f"cases and classes, averaged over the seeds both ran; smallest possible p {_min_p(n_units):.3g}) with "
        f"the mean difference in Dice points and its bootstrap 95 % CI over {unit}s (BCa, 10,000 resamples); and, "
        f"for parity with the paper, paired per class on the class means over the seeds both ran (with "
        f"{len(classes)} classes its smallest possible p is {_min_p(len(classes)):.3g})."
        + (
            " † open set: a class the pre-training's tags do not name (its query is its name alone)."
            if open_set
            else ""
        )
        + mixed
    )
    shown_gates = dict.fromkeys(gates[r[0]] for r in rows if r[0] in (gates or {}))
    if shown_gates:
        caption += " Pre-training" + "s" * (len(shown_gates) > 1) + ": " + "; ".join(shown_gates) + "."
    _summary(stem, header, rows, shown, refs, unit, note)
    return _write_table(stem, caption, header, rows)


def _summary(table: Path, header: list[str], rows: list[list[str]], classes, refs, unit: str, note: str) -> str:
    """The table of :func:`_table` (its stem ``table``: ``table_frac<f>_lambda<l>``) at a glance, as
    ``summary_frac<f>_lambda<l>``: per method its seeds, the mean Dice per class and over classes (± sd over seeds),
    the mean HD95, and per reference the difference per unit with its interval and p, in one cell each."""
    col = {name: i for i, name in enumerate(header)}
    mean = lambda text: text.split(" ± ")[0]  # noqa: E731
    short = ["method", "n seeds", *[f"{c} Dice" for c in classes], "mean Dice", "mean HD95"]
    short += [f"Δ mean Dice per {unit} vs {ref} [95% CI], p" for ref in refs]
    summary = []
    for r in rows:
        row = [r[0], r[col["n seeds"]], *[mean(r[col[f"{c} Dice"]]) for c in classes], r[col["mean Dice"]]]
        row.append(mean(r[col["mean HD95"]]))
        for ref in refs:
            delta, p = (
                r[col[f"Δ mean Dice per {unit} vs {ref} [95% CI]"]],
                r[col[f"Wilcoxon p Dice per {unit} vs {ref}"]],
            )
            row.append("-" if delta == "-" else f"{delta}, p = {p}")
        summary.append(row)
    caption = note + (
        f"At a glance (in full: {table.name}.md): mean Dice % per class and over the "
        f"classes (± sample sd over seeds), mean HD95 mm, and against each reference the mean difference in Dice "
        f"points per {unit} over the seeds both ran, its bootstrap 95 % CI and Wilcoxon p. Methods that ran other "
        "seeds are compared in the Δ columns, not row against row: which cases a seed labels moves every method."
    )
    return _write_table(table.with_name(table.name.replace("table_", "summary_", 1)), caption, short, summary)


def _mixed_init_weights(cells: list[dict]) -> str:
    """A caption note for each method whose cells started from more than one pre-trained checkpoint (the same
    pre-training run twice, say), naming the seeds of each: their spread over seeds then includes the
    pre-training's."""
    notes = []
    for init in dict.fromkeys(d["init"] for d in cells):
        by_weights: dict[str, list[int]] = {}
        for d in cells:
            sha = (d.get("init_weights") or {}).get("sha256")
            if d["init"] == init:
                by_weights.setdefault(sha[:12] if sha else "an unrecorded checkpoint", []).append(d["seed"])
        if len(by_weights) > 1:
            parts = [
                f"seed{'s' * (len(s) > 1)} {', '.join(map(str, sorted(s)))} from {w}" for w, s in by_weights.items()
            ]
            notes.append(f"{init} ({'; '.join(parts)})")
    if not notes:
        return ""
    return " Started from more than one pre-trained checkpoint (SHA-256): " + "; ".join(notes) + "."


def _write_table(stem: Path, caption: str, header: list[str], rows: list[list[str]]) -> str:
    """``<stem>.csv`` and ``<stem>.md`` (the caption, then the table); returns the Markdown file."""
    with open(f"{stem}.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    Path(f"{stem}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f"{stem}.md"


def _unit_test(cells: list[dict], against: list[dict], unit_of: dict[str, str]) -> dict | None:
    """Per unit of analysis, ``cells`` against ``against`` (each unit's mean Dice averaged over the given cells):
    the paired Wilcoxon p, the mean difference and its bootstrap 95 % CI, the number of units; ``None`` below 2."""
    ours, theirs = _unit_means(cells, "dice", unit_of), _unit_means(against, "dice", unit_of)
    common = sorted(set(ours) & set(theirs))
    if len(common) < 2:
        return None
    a, b = [ours[u] for u in common], [theirs[u] for u in common]
    mean, lo, hi = bootstrap_mean_ci(np.subtract(a, b))
    diffs = dict(zip(common, np.subtract(a, b).tolist()))
    return {"p": wilcoxon_paired(a, b)["p"], "mean": mean, "lo": lo, "hi": hi, "n": len(common), "diffs": diffs}


def _points(test: dict) -> str:
    return f"{100 * test['mean']:+.2f} [{100 * test['lo']:+.2f}, {100 * test['hi']:+.2f}]"


def _contrasts(res: Path, done, frac, lam, pairs, unit: str, unit_of: dict[str, str], note: str = "") -> str:
    """``contrasts_frac<f>_lambda<l>.{csv,md}``: for each [init, against] pair of the spec's ``contrasts`` (e.g.
    pixel-tag attention with the class queries of the pre-training against random ones), the test per unit of
    analysis over the seeds both ran, and the same difference seed by seed: the spread over seeds."""
    lam_name = "default" if lam is None else f"{lam:g}"
    stem = res / f"contrasts_frac{frac:g}_lambda{lam_name}"
    select = lambda init: {  # noqa: E731
        d["seed"]: d for d in done if d["init"] == init and d["label_fraction"] == frac and d["lambda_pta"] == lam
    }
    header = [
        "contrast",
        "n seeds",
        f"n {unit}s",
        f"Δ mean Dice per {unit} [95% CI]",
        f"Wilcoxon p per {unit}",
        "Holm p (the table's contrasts)",
        f"Δ per {unit} seed by seed",
    ]
    rows, tests, unpaired = [], [], []
    for init, against in pairs:
        ours, theirs = select(init), select(against)
        seeds = sorted(set(ours) & set(theirs))
        test = _unit_test([ours[k] for k in seeds], [theirs[k] for k in seeds], unit_of) if seeds else None
        if test is None:
            continue
        each = [_unit_test([ours[k]], [theirs[k]], unit_of) for k in seeds]
        by_seed = ", ".join(f"seed {k}: {100 * t['mean']:+.2f}" for k, t in zip(seeds, each) if t is not None)
        unpaired += _unpaired_weights(init, against, ours, theirs, seeds)
        rows.append(
            [f"{init} − {against}", str(len(seeds)), str(test["n"]), _points(test), f"{test['p']:.3g}", "", by_seed]
        )
        tests.append((f"{init} − {against}\n({len(seeds)} seed{'s' * (len(seeds) > 1)}, p = {test['p']:.2g})", test))
    for row, adjusted in zip(rows, holm_adjusted([t["p"] for _, t in tests])):
        row[5] = f"{adjusted:.3g}"
    if tests:
        _contrast_figure(Path(f"{stem}.png"), tests, unit, f"label fraction {frac:g}, lambda {lam_name}")
    n = max([int(r[2]) for r in rows] or [0])
    caption = note + (
        f"Label fraction {frac:g}, lambda {lam_name}: each contrast per {unit} (each the mean Dice over its cases and "
        f"classes, averaged over the seeds both inits ran): the mean difference in Dice points with its bootstrap "
        f"95 % CI (BCa, 10,000 resamples) and the Wilcoxon signed-rank p (smallest possible with {n} {unit}s: "
        f"{_min_p(n):.3g}), and that p adjusted by Holm's method over the {len(rows)} contrasts of this table "
        f"(family-wise error); then the mean difference seed by seed."
    )
    if unpaired:
        caption += (
            " Started from different runs of one pre-training (SHA-256), so that contrast also holds the runs' "
            f"difference: {'; '.join(unpaired)}."
        )
    return _write_table(stem, caption, header, rows)


def _unpaired_weights(init: str, against: str, ours: dict, theirs: dict, seeds: list[int]) -> list[str]:
    """The seeds at which two inits that consume the same pre-training (by definition) started from checkpoints of
    different content: a contrast meant to hold the pre-trained weights fixed then does not."""
    notes = []
    for k in seeds:
        a, b = ours[k], theirs[k]
        same_pretraining = (a.get("recipe") or {}).get("pretraining") == (b.get("recipe") or {}).get("pretraining")
        sha_a, sha_b = ((d.get("init_weights") or {}).get("sha256") for d in (a, b))
        if same_pretraining and (a.get("recipe") or {}).get("pretraining") and sha_a and sha_b and sha_a != sha_b:
            notes.append(f"{init} − {against} at seed {k} ({init} from {sha_a[:12]}, {against} from {sha_b[:12]})")
    return notes


def _contrast_figure(path: Path, tests: list[tuple[str, dict]], unit: str, title: str) -> None:
    """A forest plot of the contrasts with their data: each unit's difference in mean Dice (a dot, averaged over
    the seeds both inits ran), the mean and its bootstrap 95 % CI (a bar), and zero."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 1.1 + 0.62 * len(tests)))
    jitter = np.random.default_rng(0)
    for row, (_, test) in enumerate(reversed(tests)):
        d = 100 * np.asarray(list(test["diffs"].values()))
        ax.scatter(d, row + jitter.uniform(-0.18, 0.18, d.size), s=12, color="0.55", zorder=2)
        lo, hi, mean = 100 * test["lo"], 100 * test["hi"], 100 * test["mean"]
        color = "tab:blue" if lo > 0 else "tab:red" if hi < 0 else "black"
        ax.errorbar(mean, row, xerr=[[mean - lo], [hi - mean]], fmt="D", color=color, capsize=4, zorder=3)
    ax.axvline(0, color="0.3", lw=0.8, zorder=1)
    ax.set_yticks(range(len(tests)), [label for label, _ in reversed(tests)], fontsize=7)
    ax.set_xlabel(f"Δ mean Dice per {unit} (points)")
    ax.set_title(f"{title}\ndots: {unit}s; diamond: mean; bar: bootstrap 95 % CI (blue above 0, red below)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _min_p(n: int) -> float:
    """The smallest two-sided p of an exact Wilcoxon signed-rank test with ``n`` pairs."""
    return min(1.0, 2.0 / 2**n)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_efficiency_figure(done: list[dict], inits: list[str], unit: str = "case"):
    """Mean Dice against the labelled share (the paper's Fig. 6), mean ± sd (n − 1) over the seeds each point holds
    (their number in the legend, point by point, as arms may have run different seeds); where every cell records its
    training units, against their number (e.g. patients) on a log axis labelled at those numbers only. The arms
    stand side by side at each point (a few per cent apart, in the legend's order), so that no error bar hides
    another. Returns the matplotlib figure."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    counts = {d["label_fraction"]: len(d["training_units"]) for d in done if d.get("training_units")}
    by_count = len(counts) == len({d["label_fraction"] for d in done})
    shown = [i for i in inits if any(d["init"] == i for d in done)]
    for k, init in enumerate(shown):
        dodge = 10 ** (0.01 * (k - (len(shown) - 1) / 2))
        fr = sorted({d["label_fraction"] for d in done if d["init"] == init})
        means = [
            [
                next(r["dice"] for r in d["summary"] if r["class"] == "mean")
                for d in done
                if d["init"] == init and d["label_fraction"] == f
            ]
            for f in fr
        ]
        ax.errorbar(
            [dodge * (counts[f] if by_count else 100 * f) for f in fr],
            [100 * np.mean(m) for m in means],
            yerr=[100 * _seed_sd(m) for m in means],
            marker="o",
            capsize=3,
            label=f"{init} (seeds: {', '.join(str(len(m)) for m in means)})",
        )
    if by_count:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.set_xticks(sorted(set(counts.values())), [str(n) for n in sorted(set(counts.values()))])
        ax.xaxis.set_minor_formatter(NullFormatter())  # no 4x10^0 between the counts
    xlabel = f"labelled training {unit}s" if by_count else "labelled training cases (%)"
    ax.set(xlabel=xlabel, ylabel="test mean Dice (%), mean ± sd over seeds", title="Label efficiency")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    return fig


def _label_efficiency(res: Path, done, inits, unit: str = "case") -> None:
    """:func:`label_efficiency_figure` to ``res/label_efficiency.png``."""
    fig = label_efficiency_figure(done, inits, unit)
    fig.savefig(res / "label_efficiency.png", dpi=120)
    _plt().close(fig)


def _lambda_box(res: Path, done, inits) -> None:
    plt = _plt()
    lams = sorted({d["lambda_pta"] for d in done if d["lambda_pta"] is not None})
    fig, axes = plt.subplots(1, len(inits), figsize=(4 * len(inits), 3.5), squeeze=False)
    for ax, init in zip(axes[0], inits):
        data = [
            [
                100 * r["dice"]
                for d in done
                if d["init"] == init and d["lambda_pta"] == lam
                for r in d["summary"]
                if r["class"] != "mean" and not math.isnan(r["dice"])
            ]
            for lam in lams
        ]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(lams) + 1), [f"{lam:g}" for lam in lams])
        ax.set(xlabel="λ", ylabel="per-class Dice (%)", title=init)
    fig.tight_layout()
    fig.savefig(res / "lambda_box.png", dpi=120)
    plt.close(fig)


def _qualitative_panel(res: Path, done, inits) -> None:
    """The paper's Fig. 7: one test slice, its ground truth and each method's prediction (at the label fraction
    with the most methods finished, the largest of those; first seed and lambda), from the slices the evaluation
    kept (``eval/report/slices``)."""
    methods = {
        f: len({d["init"] for d in done if d["label_fraction"] == f}) for f in {d["label_fraction"] for d in done}
    }
    frac = max(methods, key=lambda f: (methods[f], f))
    done = [d for d in done if d["label_fraction"] == frac]
    seed = min(d["seed"] for d in done)
    lam = sorted({d["lambda_pta"] for d in done}, key=lambda x: -1 if x is None else x)[0]
    chosen = {}
    for init in inits:
        cell = next(
            (d for d in done if d["init"] == init and d["seed"] == seed and d["lambda_pta"] == lam),
            None,
        )
        if cell is not None:
            chosen[init] = Path(cell["per_case"]).parent / "slices"
    common = None
    for folder in chosen.values():
        names = {p.name for p in folder.glob("*.npz")}
        common = names if common is None else common & names
    if not common:
        return
    slices = {init: np.load(folder / sorted(common)[0]) for init, folder in chosen.items()}
    first = next(iter(slices.values()))
    from mosmos_components.visualize import label_row

    label_row(
        first["image"],
        [("ground truth", first["label"])] + [(init, s["pred"]) for init, s in slices.items()],
        [str(c) for c in first["names"]],
        res / "qualitative.png",
        f"{sorted(common)[0][:-4]}: label fraction {frac:g}, seed {seed}",
    )
