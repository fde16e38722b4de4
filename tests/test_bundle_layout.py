"""The model zoo's static checks on every bundle: required files, metadata schema, version in changelog, JSON style;
that the GPU check script names only what exists; and that the documents' links resolve and show every figure kept."""

import json
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[1]  # at collection time, for the parameter list
BUNDLES = sorted(p for p in (ROOT / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
REQUIRED = [
    "LICENSE",
    "configs/metadata.json",
    "configs/train.json",
    "configs/evaluate.json",
    "configs/multi_gpu_train.json",
    "configs/logging.conf",
    "configs/demo.json",
    "docs/README.md",
]


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_required_files(bundle):
    missing = [f for f in REQUIRED if not (bundle / f).is_file()]
    assert not missing, f"{bundle.name} lacks {missing}"


ZOO_HEADINGS = [
    "Overview",
    "Data",
    "Training configuration",
    "Input",
    "Output",
    "Performance",
    "Commands",
    "References",
    "License",
]


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_bundle_readme_has_the_model_zoo_headings(bundle):
    headings = [
        line[3:].strip() for line in (bundle / "docs" / "README.md").read_text().splitlines() if line.startswith("## ")
    ]
    assert headings == ZOO_HEADINGS, headings


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_large_files_say_where_the_trained_weights_go(bundle):
    text = (bundle / "large_files.yml").read_text()
    assert text.count("- path:") == 2 and '"models/model.pt"' in text and '"models/model.json"' in text
    yaml = pytest.importorskip("yaml")
    assert [f["path"] for f in yaml.safe_load(text)["large_files"]] == ["models/model.pt", "models/model.json"]


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_metadata_schema_and_changelog(bundle):
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    jsonschema.validate(meta, json.loads((ROOT / "bundles" / "metadata_schema.json").read_text()))
    assert meta["version"] in meta["changelog"]


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_configs_are_valid_json_with_4_space_indent(bundle):
    for f in (bundle / "configs").glob("*.json"):
        text = f.read_text()
        json.loads(text)
        indents = {len(line) - len(line.lstrip(" ")) for line in text.splitlines() if line.startswith(" ")}
        assert all(i % 4 == 0 for i in indents), f"{f} is not indented by 4 spaces"


def test_gpu_check_script_names_only_what_exists():
    """``scripts/gpu_check.sh`` runs only where a device is lent, so nothing else would notice it going stale (it once
    imported a module that had been renamed): every module, CLI command, script, config file and benchmark part or
    size it names must exist."""
    import importlib.util
    import re
    import sys

    from mosmos_components.cli import MosmosCLI

    text = (ROOT / "scripts" / "gpu_check.sh").read_text()
    modules = re.findall(r"python3 -m ([\w.]+)", text) + re.findall(r"from ([\w.]+) import", text)
    # not pip: asking for its spec turns off setuptools' distutils shim for the whole process (pypa/pip#8761),
    # and torch.compile then fails in later tests
    modules = [m for m in modules if m != "pip"]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    assert modules and not missing, missing
    commands = re.findall(r"python3 -m mosmos_components\.cli (\w+)", text)
    assert commands and all(callable(getattr(MosmosCLI, c, None)) for c in commands), commands
    scripts = re.findall(r"python3 (scripts/\S+\.py)", text)
    assert scripts and all((ROOT / s).is_file() for s in scripts), scripts
    configs = re.findall(r"bundles/[\w/]+\.json", text)
    assert configs and all((ROOT / c).is_file() for c in configs), configs
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import benchmark
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert set(re.findall(r"--size (\w+)", text)) <= set(benchmark.SIZES)
    assert set(re.findall(r"--only (\w+)", text)) <= set(benchmark.PARTS + benchmark.EXTRA_PARTS)


DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS += [b / "docs" / "README.md" for b in BUNDLES] + [ROOT / "experiments" / "records" / "README.md"]


def _relative_links() -> list[tuple[Path, str]]:
    """(document, target) for every relative Markdown link or image of the documents, outside code blocks."""
    import re

    pairs = []
    for md in DOCS:
        text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
        for url in re.findall(r"\]\(([^)\s]+)\)", text):
            target = url.split("#")[0]
            if target and not re.match(r"[a-z]+:", url):
                pairs.append((md, target))
    return pairs


def test_the_documents_link_only_files_that_exist():
    broken = [f"{md.relative_to(ROOT)} -> {u}" for md, u in _relative_links() if not (md.parent / u).exists()]
    assert not broken, broken


def test_every_figure_kept_in_docs_is_shown_or_named_by_a_document():
    """A picture in ``docs/figures`` that no document links or names is a stale result nobody reads."""
    named = "\n".join(md.read_text() for md in DOCS)
    linked = {(md.parent / u).resolve() for md, u in _relative_links()}
    orphans = [
        f.name
        for f in sorted((ROOT / "docs" / "figures").iterdir())
        if f.resolve() not in linked and f.name not in named
    ]
    assert not orphans, f"docs/figures holds files no document shows or names: {orphans}"
