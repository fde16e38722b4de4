"""The recipes of docs/architecture.md, each done once on throw-away files, and the import graph."""

import ast
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn


def _build_bundles_module(repo: Path, root: Path):
    spec = importlib.util.spec_from_file_location("build_bundles_under_test", repo / "scripts" / "build_bundles.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.ROOT = root
    mod.INFERENCE_TEMPLATE = root / "_template" / "configs" / "inference.json"
    return mod


def test_recipe_add_a_data_set(tmp_path, btcv_dir, repo):
    """A bundle_spec.json with data differences only becomes a whole, marked, runnable bundle."""
    from monai.bundle import ConfigParser

    root = tmp_path / "bundles"
    shutil.copytree(repo / "bundles" / "_template", root / "_template")
    (root / "toy_seg").mkdir()
    classes = ["background", "liver", "spleen"]
    (root / "toy_seg" / "bundle_spec.json").write_text(
        json.dumps(
            {
                "configs": {
                    "train.json": {
                        "bundle_root": "bundles/toy_seg",
                        "class_names": classes,
                        "dataset_dir": "/data/toy",
                        "pairs": "$mosmos_components.data.datalist.btcv_pairs(@dataset_dir)",  # a reader by name
                        "label_values": list(range(14)),  # the reader's raw values (checked), then mapped
                        "label_transforms": [
                            {
                                "_target_": "MapLabelValued",
                                "keys": "label",
                                "orig_labels": list(range(14)),
                                "target_labels": [2 if v == 1 else 1 if v == 6 else 0 for v in range(14)],
                            }
                        ],
                    }
                }
            }
        )
    )
    build = _build_bundles_module(repo, root)
    assert build.main() == 0 and build.main(check=True) == 0
    spec = json.loads((root / "toy_seg" / "bundle_spec.json").read_text())
    del spec["configs"]["train.json"]["class_names"]
    (root / "half_seg").mkdir()
    (root / "half_seg" / "bundle_spec.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"half_seg/bundle_spec.json: train.json leaves .*\['class_names'\] unset"):
        build.main()  # the template's data entries are never inherited
    shutil.rmtree(root / "half_seg")
    train = json.loads((root / "toy_seg" / "configs" / "train.json").read_text())
    assert "_generated_" in train and "bundle_spec.json" in train["_generated_"]
    assert (root / "toy_seg" / "configs" / "baselines" / "random.json").is_file()
    parser = ConfigParser()
    parser.read_config([str(root / "toy_seg" / "configs" / f) for f in ("train.json", "demo.json")])
    parser.update(
        {"bundle_root": str(root / "toy_seg"), "dataset_dir": str(btcv_dir), "output_dir": str(tmp_path / "out")}
    )
    assert parser.get_parsed_content("num_classes") == 3
    item = parser.get_parsed_content("train#dataset")[0][0]
    assert set(torch.unique(item["label"]).tolist()) <= {0, 1, 2}
    inference = json.loads((root / "toy_seg" / "configs" / "inference.json").read_text())
    assert inference["checkpoint_expect"]["class_names"] == classes


def test_recipe_add_a_baseline(tmp_path, monkeypatch, repo):
    """A variant file and an INIT_KINDS entry: composed with train.json, the network starts from the new weights."""
    from monai.bundle import ConfigParser

    from mosmos_components import transfer

    def constant_weights(network, path, prompt_template):
        with torch.no_grad():
            network.encoder.conv1.weight.fill_(float(Path(path).read_text()))

    monkeypatch.setitem(transfer.INIT_KINDS, "toy", constant_weights)
    weights = tmp_path / "weights.txt"
    weights.write_text("0.25")
    variant = tmp_path / "toy.json"
    variant.write_text(
        json.dumps({"_description": "a throw-away baseline", "pretrained_kind": "toy", "use_pta": False})
    )
    configs = repo / "bundles" / "btcv_seg" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "demo.json"), str(variant)])
    parser.update({"pretrained_ckpt": str(weights)})
    net = parser.get_parsed_content("initialised_network")
    assert net.pta is None and torch.all(net.encoder.conv1.weight == 0.25)
    monkeypatch.delitem(transfer.INIT_KINDS, "toy")
    with pytest.raises(RuntimeError) as info:  # the kind is gone: refused, naming the known ones
        ConfigParser(parser.get()).get_parsed_content("initialised_network")
    assert "pretrained_kind must be one of ['clip', 'imagenet', 'mosmos', 'ssl']" in str(info.value.__cause__)


def test_recipe_add_an_encoder(tmp_path, pretrained):
    """A new encoder in its own class (registered by its name) and its transfer rule: plugged into the U-Net with
    pixel-tag attention without touching a network class, transferred from a pre-training checkpoint, trained one
    step, saved and rebuilt from its sidecar alone."""
    from mosmos_components import transfer
    from mosmos_components.checkpoint import load_segmentation_network, save_network
    from mosmos_components.losses import MosmosSegLoss
    from mosmos_components.networks import MosmosUNet
    from mosmos_components.networks.encoders import ENCODERS, EncoderFeatures, PTAEncoder, map_to_tokens

    class ToyEncoder3D(PTAEncoder, name="toy3d"):  # a two-level conv pyramid, tokens at 1/4
        def __init__(self, in_channels=1, img_size=(16, 16, 8), width=8, embed_dim=64):
            super().__init__()
            self.spatial_dims, self.in_channels, self.token_channels = 3, in_channels, 2 * width
            self.skip_channels, self.skip_strides, self.reduction = (width, in_channels), (2, 1), 4
            self.embed_dim, self.grid = embed_dim, tuple(s // 4 for s in img_size)
            self.down1 = nn.Conv3d(in_channels, width, 2, stride=2)
            self.down2 = nn.Conv3d(width, 2 * width, 2, stride=2)
            self.proj = nn.Linear(2 * width, embed_dim)

        def forward(self, x):
            z = x - 0.5
            s2 = self.down1(z)
            tokens, grid = map_to_tokens(self.down2(s2))
            return EncoderFeatures(tokens, [s2, z], grid)

        def project(self, tokens):
            return self.proj(tokens)

    calls = []

    @transfer.transfer_rule(ToyEncoder3D)
    def _into_toy(pre, seg, report, source):
        calls.append(source)
        with torch.no_grad():
            seg.encoder.down1.bias.fill_(0.5)  # a real rule copies tensors of ``pre`` with transfer._copy
        report.transferred.append("encoder.down1.bias")

    try:
        kw = dict(encoder="toy3d", encoder_args={"img_size": [16, 16, 8]}, decoder_channels=(16, 8), decoder_heads=4)
        net = MosmosUNet(1, 3, class_names=["background", "liver", "spleen"], **kw)
        transfer.transfer_pretrained(net, pretrained["mosmos-tiny-vit"])  # the rule, then the tag decoder + embeddings
        assert calls and bool(net.pta.embeddings_ready) and torch.all(net.encoder.down1.bias == 0.5)
        x, y = torch.rand(2, 1, 16, 16, 8), torch.randint(0, 3, (2, 1, 16, 16, 8))
        out = net.train()(x)
        assert [o.shape for o in out] == [(2, 3, 16, 16, 8)] * 2  # segmentation and PTA logits
        MosmosSegLoss()(out, y).backward()
        assert net.pta.decoder.layers[-1].cross_attn.in_proj_weight.grad.abs().sum() > 0
        assert net.attention_maps(x).shape == (2, 3, 4, 4, 2)
        save_network(net, tmp_path / "model.pt")
        side = json.loads((tmp_path / "model.json").read_text())
        assert side["encoder"] == "toy3d" and side["spatial_dims"] == 3
        again = load_segmentation_network(tmp_path / "model.pt")
        assert type(again.encoder) is ToyEncoder3D
        torch.testing.assert_close(again(x), net.eval()(x))
        with pytest.raises(ValueError, match="token encoder such as 'clip_vit3d' goes with MosmosUNETR"):
            MosmosUNet(1, 3, encoder="clip_vit3d", encoder_args={"img_size": [32, 32, 32], "width": 32, "heads": 2})
    finally:
        ENCODERS.pop("toy3d", None)
        transfer.TRANSFER_RULES.pop(ToyEncoder3D, None)


def _module_imports(repo: Path) -> dict[str, set[str]]:
    """mosmos_components module -> the mosmos_components modules it imports at module level (not in functions)."""
    pkg = repo / "mosmos_components"
    names = {}
    for f in pkg.rglob("*.py"):
        parts = f.relative_to(repo).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {}
    for name, f in names.items():
        deps = set()
        for node in ast.parse(f.read_text(encoding="utf-8")).body:  # top-level statements only
            mods = []
            if isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            deps |= {m for m in mods if m in names and m != name and not name.startswith(m + ".")}
        graph[name] = deps
    return graph


def test_import_graph_has_no_cycle(repo):
    graph = _module_imports(repo)
    state: dict[str, int] = {}

    def visit(n, path):
        if state.get(n) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(n) :] + [n]))
        if state.get(n) == 2:
            return
        state[n] = 1
        for m in sorted(graph[n]):
            visit(m, path + [n])
        state[n] = 2

    sys.setrecursionlimit(max(1000, sys.getrecursionlimit()))
    for n in sorted(graph):
        visit(n, [])
    assert "mosmos_components.cli" not in set().union(*graph.values())  # the command line sits on top


# docs/architecture.md's table: module (prefix) -> what it may import from mosmos_components at module level
ALLOWED = {
    "errors": [],
    "runtime": [],
    "tags": [],
    "distributed": [],
    "checkpoint": [],
    "data": ["data", "tags", "checkpoint"],
    "networks": ["networks", "tags"],
    "transforms": ["data", "tags", "errors"],
    "transfer": ["networks", "checkpoint"],
    **{
        m: ["distributed", "checkpoint", "evaluation"]
        for m in ("losses", "evaluation", "metrics", "handlers", "engines")
    },
}
TOP = ("bundle_runner", "demo", "experiment", "cli")


def test_modules_import_only_what_the_architecture_allows(repo):
    graph = _module_imports(repo)
    for name, deps in graph.items():
        short = name.removeprefix("mosmos_components").lstrip(".")
        rule = next((ALLOWED[k] for k in ALLOWED if short == k or short.startswith(k + ".")), None)
        for dep in deps:
            d = dep.removeprefix("mosmos_components.")
            if d.split(".")[0] in TOP:
                assert short in TOP, f"{name} imports {dep}: only the top layer (commands, pipelines) may"
            if rule is not None:
                assert any(d == a or d.startswith(a + ".") for a in rule), f"{name} may not import {dep} ({rule})"
