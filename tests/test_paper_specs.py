"""Every shipped experiment spec, run end to end at smoke size: the same blocks, initialisations, variants,
chained pre-trainings and aggregation, on generated data (ACDC: the real sample of ../shared) with tiny networks,
one iteration per cell, one seed, one lambda and one label fraction (the one at which most initialisations run).
A spec naming a missing variant, an override that is no config key, or a combination that fails at run time fails
here, not a day into a GPU run. The generated data and the pre-trainings are shared by all specs (one
``pretrain_dir``: a pre-training of the same name and definition runs once)."""

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_PRETRAIN, TINY_RUN

from mosmos_components.checkpoint import file_sha256
from mosmos_components.experiment import _overrides, cell_configs, cells_of, grid_of, load_spec, run_experiment

pytestmark = pytest.mark.specs  # not in the default run: .ci/run runs them as a step of their own

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted(p.name for p in (REPO / "experiments").glob("*.json"))

#: the paper's backbones -> the tiny architectures of the same kind (the `pretrained` fixture's and demo.json's)
TINY_BACKBONES = {"RN50": "mosmos-tiny-rn", "ViT-B-16": "mosmos-tiny-vit", "ViT-B-32": "mosmos-tiny-vit32"}

#: every cell: one iteration on tiny crops (cubes of 32 voxels, so that a 32-voxel patch fits), validated once
SMOKE_RUN = {
    **TINY_RUN,
    "pixdim": [8.0, 8.0, 8.0],
    "roi_size": [32, 32, 32],
    "epoch_length": 1,
    "batch_size": 1,
    "num_samples": 2,  # two slices per 2D batch: batch norm needs more than one value per channel
}
SMOKE_PRETRAIN = {**TINY_PRETRAIN, "max_epochs": 1}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, roco_dir, btcv_dir):
    """The generated data of each bundle, tiny stand-ins for every weights file a spec names, a tiny ViT with
    32-pixel patches (ViT-B/32's kind) and a tiny BERT folder (mosmos-lite's text tower kind)."""
    import open_clip
    import timm
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer
    from torchvision.models.resnet import Bottleneck, ResNet
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from mosmos_components.data.synthetic import write_amos, write_brats, write_mmwhs
    from mosmos_components.networks.mosmos_clip import MODEL_CONFIG_DIR, register_model_configs

    root = tmp_path_factory.mktemp("smoke")
    register_model_configs()
    configs = root / "model_configs"
    configs.mkdir()
    tiny = json.loads((MODEL_CONFIG_DIR / "mosmos-tiny-vit.json").read_text())
    tiny["vision_cfg"]["patch_size"] = 32
    (configs / "mosmos-tiny-vit32.json").write_text(json.dumps(tiny))
    open_clip.add_model_config(configs)
    weights = root / "weights"
    weights.mkdir()
    clip = {}
    for arch in TINY_BACKBONES.values():
        torch.manual_seed(0)
        clip[arch] = weights / f"{arch}.pt"
        torch.save(open_clip.create_model(arch, force_quick_gelu=True).state_dict(), clip[arch])
    vit = VisionTransformer(img_size=96, patch_size=16, embed_dim=64, depth=4, num_heads=2, num_classes=10)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights / "vit.safetensors"))
    torch.save(ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10).state_dict(), weights / "resnet.pth")
    torch.save(timm.create_model("efficientnet_lite0").state_dict(), weights / "efficientnet_lite0.pth")
    bert = root / "bert"
    words = "the a of is in and with no normal liver heart kidney left right ventricle".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *"abcdefghijklmnopqrstuvwxyz.,;"]
    bert.mkdir()
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(bert / "vocab.txt")).save_pretrained(bert)
    BertModel(
        BertConfig(
            vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    ).save_pretrained(bert)
    acdc = REPO.parent / "shared" / "data" / "acdc_sample"
    data = {
        "btcv_seg": btcv_dir,
        "mmwhs_seg": write_mmwhs(root / "mmwhs", n=5, seed=1, shape=(40, 40, 32), spacing=(8.0, 8.0, 8.0)),
        "amos_seg": write_amos(root / "amos", n=8, seed=1, n_mri=4, shape=(40, 40, 32), spacing=(8.0, 8.0, 8.0)),
        "brats_seg": write_brats(root / "brats", n=5, seed=1, shape=(32, 32, 32)),
        "acdc_seg": acdc if (acdc / "database" / "training").is_dir() else None,
    }
    return {"root": root, "data": data, "roco": roco_dir, "clip": clip, "weights": weights, "bert": bert}


def _grids(spec: dict) -> list[dict]:
    return list(spec["blocks"].values()) if spec.get("blocks") else [spec]


def _architecture(configs: list[str]) -> str:
    """The tiny pre-training architecture a segmentation network of these configs consumes."""
    if "unet2d_timm.json" in configs:
        return "mosmos-lite"
    return "mosmos-tiny-rn" if "unet2d.json" in configs else "mosmos-tiny-vit"


def _smoke_init(init: dict, configs: list[str], smoke: dict, pretrained: dict) -> dict:
    """An init with its weights file replaced by a tiny stand-in of the same kind."""
    init = dict(init)
    if "pretrained_ckpt" not in init:
        return init
    variants = [init["variant"]] if isinstance(init.get("variant"), str) else list(init.get("variant") or [])
    if "baselines/imagenet_vit.json" in variants:
        init["pretrained_ckpt"] = str(smoke["weights"] / "vit.safetensors")
    elif "baselines/imagenet_resnet.json" in variants:
        init.update(pretrained_ckpt=str(smoke["weights"] / "resnet.pth"), resnet_width=64)  # torchvision's widths
    elif "baselines/imagenet_efficientnet.json" in variants:
        init["pretrained_ckpt"] = str(smoke["weights"] / "efficientnet_lite0.pth")
    else:  # a MOSMOS pre-training given as a file
        init["pretrained_ckpt"] = str(pretrained[_architecture(configs)])
    return init


def _smoke_pretraining(pre: dict, smoke: dict) -> dict:
    pre = copy.deepcopy(pre)
    if "clip_checkpoint" in pre:
        args = pre["clip_checkpoint"]
        args["backbone"] = TINY_BACKBONES.get(args.get("backbone", "ViT-B-16"), args.get("backbone"))
        args["clip_pretrained"] = str(smoke["clip"][args["backbone"]])
        return pre
    over = pre.setdefault("overrides", {})
    backbone = over.get("backbone", "RN50")  # the pre-training bundle's default
    over["backbone"] = TINY_BACKBONES.get(backbone, backbone)
    if over.get("clip_pretrained"):
        over["clip_pretrained"] = str(smoke["clip"][over["backbone"]])
    if "text_tower" in over:
        over["text_tower"] = str(smoke["bert"])
    if "image_tower_weights" in over:
        over["image_tower_weights"] = str(smoke["weights"] / "efficientnet_lite0.pth")
    over.update(SMOKE_PRETRAIN)
    if over["backbone"].startswith("mosmos-tiny"):
        over["decoder_heads"] = 4  # the tiny towers' width (64) in heads of 16, as demo.json
    pre["dataset_dir"] = str(smoke["roco"])
    return pre


def smoke_spec(name: str, smoke: dict, pretrained: dict) -> dict | None:
    """The shipped spec ``name`` at smoke size (None where its data set is not available here)."""
    spec = json.loads((REPO / "experiments" / name).read_text())
    spec["root"] = str(smoke["root"])
    spec.pop("fraction_overrides", None)
    spec["overrides"] = {**(spec.get("overrides") or {}), **SMOKE_RUN}
    spec["seeds"] = spec.get("seeds", [0])[:1]
    spec["lambdas"] = spec.get("lambdas", [None])[:1]
    inits_at = spec.get("fraction_inits") or {}
    fractions = spec.get("label_fractions", [1.0])
    spec["label_fractions"] = [
        max(fractions, key=lambda f: (len(inits_at.get(f"{f}", inits_at.get(str(f), spec["inits"]))), -f))
    ]
    if "later_fractions" in spec:  # only the fraction kept
        spec["later_fractions"] = [f for f in spec["later_fractions"] if f in spec["label_fractions"]]
    for grid in _grids(spec):
        bundle = grid.get("bundle", spec.get("bundle"))
        if smoke["data"][bundle] is None:
            return None
        grid["dataset_dir"] = str(smoke["data"][bundle])
        if grid is not spec:
            grid["configs"] = list(grid.get("configs") or []) + ["demo.json"]
    if not spec.get("blocks") and "unet2d_timm.json" not in spec["configs"]:  # EfficientNet-Lite0 is small already
        spec["configs"] = list(spec["configs"]) + ["demo.json"]
    for grid in _grids(spec):
        if grid is spec:
            continue
        configs = list(spec.get("configs") or []) + list(grid["configs"])
        entries = grid.get("inits") or {}
        grid["inits"] = {}  # each init in full (its smoke weights are the block's architecture's), or null
        for key in [*spec["inits"], *(k for k in entries if k not in spec["inits"])]:
            if key in entries and entries[key] is None:
                grid["inits"][key] = None
            else:
                merged = {**spec["inits"].get(key, {}), **(entries.get(key) or {})}
                grid["inits"][key] = _smoke_init(merged, configs, smoke, pretrained)
    spec["inits"] = {k: _smoke_init(v, spec.get("configs") or [], smoke, pretrained) for k, v in spec["inits"].items()}
    spec["pretrainings"] = {k: _smoke_pretraining(v, smoke) for k, v in (spec.get("pretrainings") or {}).items()}
    return spec


@pytest.fixture(scope="module")
def tiny_pretrained(pretrained, smoke):
    """The tiny MOSMOS checkpoints a spec's ``pretrained_ckpt`` files stand for (mosmos-lite: none needed)."""
    return {**pretrained, "mosmos-lite": None}


#: per-run keys of a cell (where it writes, how it is tracked): not part of what it computes
_WHERE = ("ckpt_dir", "output_dir", "datalist_file", "tracking", "tracking_uri", "run_name", "experiment_name")


def _signature(spec: dict, cell) -> str:
    """What a cell computes: its bundle, configs and overrides, a chained pre-training by its definition."""
    grid = grid_of(spec, cell)
    over = _overrides(grid, cell, Path("."), Path("."))
    pre = grid["inits"][cell.init].get("pretraining")
    if pre is not None:
        over["pretrained_ckpt"] = grid["pretrainings"][pre]
    over = {k: v for k, v in over.items() if k not in _WHERE}
    return json.dumps([grid["bundle"], cell_configs(grid, cell), over], sort_keys=True, default=str)


def _share_cells(spec: dict, shared: dict[str, Path]) -> int:
    """Cells another spec already ran (the same computation) are copied in, so each combination runs once."""
    copied = 0
    for cell in cells_of(spec):
        folder = Path(grid_of(spec, cell)["output_dir"]) / "cells" / cell.name
        known = shared.get(_signature(spec, cell))
        if known is not None and known != folder and not (folder / "done.json").is_file():
            shutil.copytree(known, folder)
            done = json.loads((folder / "done.json").read_text())
            done = {k: v for k, v in done.items() if k not in ("block", "init", "label_fraction", "seed", "lambda_pta")}
            (folder / "done.json").write_text(json.dumps({**cell.coords(), **done, "cell": cell.name}))
            copied += 1
    return copied


@pytest.fixture(scope="module")
def shared_cells():
    return {}


@pytest.mark.parametrize("name", SPECS)
def test_every_shipped_spec_runs_end_to_end_at_smoke_size(name, smoke, tiny_pretrained, shared_cells, capsys):
    spec = smoke_spec(name, smoke, tiny_pretrained)
    if spec is None:
        pytest.skip(f"{name}: its data set (the ACDC sample of ../shared) is not available")
    path = smoke["root"] / name
    path.write_text(json.dumps(spec))
    loaded = load_spec(path)
    copied = _share_cells(loaded, shared_cells)
    result = run_experiment(path, pretrain_dir=str(smoke["root"] / "pretrain"))
    assert result["ran"] + result["skipped"] == result["cells"] == len(cells_of(loaded))
    grids = loaded.get("_blocks") or {None: loaded}
    for block, grid in grids.items():
        out = Path(grid["output_dir"])
        for cell in cells_of(grid):
            assert (out / "cells" / cell.name / "done.json").is_file(), (block, cell.name)
        tables = sorted((out / str(grid.get("results") or "results")).glob("table_*.md"))
        assert tables, block
        rows = [r for r in tables[0].read_text().splitlines() if r.startswith("| ") and "method" not in r]
        assert {r.split(" | ")[0][2:] for r in rows} == set(grid["inits"]), (block, rows)
        if grid.get("open_set"):
            assert all(f"{c}† Dice" in tables[0].read_text() for c in grid["open_set"])
        if grid.get("positioning"):
            assert (out / str(grid.get("results") or "results") / "positioning").is_dir()
    for pre_name, pre in (loaded.get("pretrainings") or {}).items():  # each one run (here or by an earlier spec)
        path = smoke["root"] / "pretrain" / pre_name / "done.json"  # (none where every consumer's cell was shared)
        if not path.is_file():
            continue
        done = json.loads(path.read_text())
        assert done["checkpoint_sha256"] == file_sha256(done["checkpoint"]), pre_name  # what the cells name
        if "clip_checkpoint" in pre or "ssl.json" in (pre.get("configs") or []):  # no report supervision to judge
            assert done["gate"]["passed"] is None and "not applicable" in done["gate"]["summary"], pre_name
        else:
            assert isinstance(done["gate"]["passed"], bool) and "Gate 1" in done["gate"]["summary"], pre_name
    for cell in cells_of(loaded):
        folder = Path(grid_of(loaded, cell)["output_dir"]) / "cells" / cell.name
        shared_cells.setdefault(_signature(loaded, cell), folder)
    with capsys.disabled():
        print(
            f"\n{name}: {result['ran']} cell(s) run, {copied} copied from an earlier spec, {len(grids)} grid(s): "
            + ", ".join(os.path.relpath(t, smoke["root"]) for t in result["tables"])
        )
