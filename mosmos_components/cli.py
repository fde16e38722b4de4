"""The ``mosmos`` command line (python-fire).

mosmos tags "No splenomegaly, left renal cyst."            # the tags found in a report (or --stdin, --file PATH)
mosmos demo-data OUT_DIR --kind roco|btcv|amos|mmwhs|brats --n N --seed S
mosmos clip-checkpoint clip/model.pt --clip_pretrained PATH --backbone ViT-B-16   # CLIP baselines' weights
mosmos tag-stats CORPUS --output_dir tag_stats                 # tag frequencies of a ROCO / MedPix 2.0 corpus
mosmos experiment experiments/demo_btcv.json                 # a resumable grid, aggregated
mosmos wilcoxon A/per_case.csv B/per_case.csv --metric dice  # paired per class (--unit case: per case)
mosmos curves runs/pretrain/eval curves.png                 # a run's training and validation curves
mosmos bundle-demo amos_seg --pretrained_ckpt demo_output/pretrain/models/model.pt   # one bundle's demo
mosmos demo                                                  # the whole pipeline on generated data
mosmos segment scan.nii.gz out/ --model bundles/btcv_seg --statistics --preview   # a scan in, organs out
mosmos locate scan.nii.gz liver "left kidney" --model PRETRAIN/model.pt          # attention maps by name
mosmos export-onnx demo_output/btcv_mosmos btcv.onnx        # ONNX (+ sidecar) that mosmos segment runs
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import fire

from mosmos_components.bundle_runner import bundles_dir, run_bundle
from mosmos_components.data.synthetic import DEMO_KINDS, write_demo_data
from mosmos_components.tags import TagExtractor, TagVocabulary

__all__ = ["MosmosCLI", "main", "bundles_dir", "run_bundle"]


class MosmosCLI:
    """MOSMOS: multi-organ segmentation facilitated by medical report supervision."""

    def tags(
        self,
        text: str | None = None,
        vocab: str | list[str] | None = None,
        unsided: str = "both",
        file: str | None = None,
        stdin: bool = False,
    ) -> str:
        """Print the organ tags found in TEXT (JSON list); --stdin reads the text from standard input, --file from
        a UTF-8 text file. --vocab adds your own vocabulary file(s)."""
        import sys

        files = [vocab] if isinstance(vocab, str) else vocab
        extractor = TagExtractor(TagVocabulary(files), unsided=unsided)
        if (text is not None) + (file is not None) + bool(stdin) != 1:
            raise ValueError("give one of: the report TEXT, --file PATH, or --stdin")
        if file is not None:
            data = Path(file).read_bytes()
            try:
                return json.dumps(extractor(data))
            except ValueError as e:
                raise ValueError(f"{file}: {e}") from e
        if stdin:
            return json.dumps(extractor(sys.stdin.buffer.read()))
        text = str(text)
        if any("\udc80" <= ch <= "\udcff" for ch in text):  # bytes the command line could not decode as UTF-8
            raise ValueError(
                "the report text on the command line is not valid UTF-8 (check the terminal's "
                "encoding, or pass the text with --file or on standard input)"
            )
        return json.dumps(extractor(text))

    def demo_data(
        self,
        output_dir: str | None = None,
        kind: str = "roco",
        n: int | None = None,
        seed: int = 0,
    ) -> str:
        """Write synthetic data in the real layout of KIND (roco, btcv, amos, mmwhs, brats) under OUTPUT_DIR."""
        if kind not in DEMO_KINDS:
            raise ValueError(f"--kind must be one of {sorted(DEMO_KINDS)}, got {kind!r}")
        t = time.time()
        if output_dir is None:
            raise ValueError("OUTPUT_DIR is required: the folder to write the data into")
        root = write_demo_data(output_dir, kind=kind, n=n, seed=seed)
        return f"wrote {kind} demo data to {root} in {time.time() - t:.1f} s"

    def clip_checkpoint(
        self,
        out_path: str,
        clip_pretrained: str,
        backbone: str = "ViT-B-16",
        force_quick_gelu: bool = False,
        text_tower: str | None = None,
    ) -> str:
        """Write CLIP (or PubMedCLIP, BiomedCLIP) weights, without MOSMOS pre-training, as a checkpoint the
        segmentation bundles take as --pretrained_ckpt: the CLIP baseline (--use_pta False) and CLIP+DenseCLIP
        (--pta_mode denseclip). CLIP_PRETRAINED: a local weights file, a local-dir:/path open_clip model folder
        (BiomedCLIP as released), or an open_clip tag or hf-hub:org/name when online. TEXT_TOWER: the local folder
        of a Hugging Face text tower's config and tokenizer, when the model folder names one that is not on disk."""
        from mosmos_components.transfer import save_clip_checkpoint

        save_clip_checkpoint(out_path, backbone, clip_pretrained, force_quick_gelu, text_tower)
        return f"wrote {out_path} (+ sidecar): {backbone} from {clip_pretrained}, no MOSMOS pre-training"

    def tag_stats(
        self,
        corpus: str,
        output_dir: str = "tag_stats",
        layout: str = "auto",
        vocab: str | list[str] | None = None,
    ) -> str:
        """Tag statistics of an image-report CORPUS (ROCO or MedPix 2.0 folder; the paper's Fig. 2): tag
        frequencies, tags per report and the share of reports without a tag, as CSV files, JSON and a bar chart."""
        from mosmos_components.data.corpus_stats import tag_statistics

        files = [vocab] if isinstance(vocab, str) else vocab
        s = tag_statistics(corpus, output_dir, layout, files)
        top = sorted(s["tag_reports"].items(), key=lambda kv: -kv[1])[:5]
        return (
            f"{s['reports']} reports ({s['layout']}): {s['share_without_tag']:.1%} without a tag, "
            f"{s['mean_tags_per_report']:.2f} tags per report; most frequent: "
            + ", ".join(f"{t} {n}" for t, n in top)
            + f"; wrote {output_dir}/tag_frequencies.csv, .png, "
            "tags_per_report.csv, tag_stats.json"
        )

    def experiment(
        self,
        spec: str,
        output_dir: str | None = None,
        max_cells: int | None = None,
        pretrain_dir: str | None = None,
        status: bool = False,
        records: str | None = None,
    ) -> str:
        """Run the grid of an experiment SPEC (blocks x initialisations x label fractions x seeds x lambda) through
        the bundles, each cell after the pre-training its initialisation consumes, skipping finished cells and
        resuming interrupted ones, then aggregate it into tables and figures (see mosmos_components.experiment).
        PRETRAIN_DIR: where chained pre-trainings are written and found (default OUTPUT_DIR/pretrain; specs that
        share one reuse a pre-training of the same name and definition). --status: list each cell (done with its
        mean Dice and wall time, started with its checkpoint's iteration, or pending) and the time left, running
        nothing. RECORDS (or the spec's "records"): a folder kept up to date, before the first cell and after each
        cell, with the grid's weightless record (split, each finished cell's results and histories, each
        pre-training's histories), from which the grid goes on on another machine."""
        from mosmos_components.experiment import grid_status, run_experiment

        if status:
            return grid_status(spec, output_dir)
        t = time.time()
        r = run_experiment(spec, output_dir, max_cells, pretrain_dir, records)
        return (
            f"{r['ran']} cell(s) run, {r['skipped']} already done, of {r['cells']} ({time.time() - t:.0f} s); "
            f"results in {r['results']}: " + ", ".join(Path(t).name for t in r["tables"])
        )

    def curves(self, run: str, out_png: str, title: str = "") -> str:
        """Training and validation curves of a bundle run (its output folder: train_history.csv and
        val_history.csv, e.g. the loss, dev loss, retrieval and tag mAP of a pre-training) as one PNG."""
        from mosmos_components.visualize import plot_curves

        folder = Path(run)
        histories = {
            n: folder / f"{n}_history.csv" for n in ("train", "val") if (folder / f"{n}_history.csv").is_file()
        }
        if not histories:
            raise FileNotFoundError(f"{folder}: no train_history.csv or val_history.csv (a bundle run's output_dir)")
        return plot_curves(histories, out_png, title or folder.name)

    def wilcoxon(self, per_case_a: str, per_case_b: str, metric: str = "dice", unit: str = "class") -> str:
        """Wilcoxon signed-rank test between two evaluations' per_case.csv: paired per class on the test-set mean
        METRIC (the paper's unit, default) or, with --unit case, per case on the mean over classes."""
        from mosmos_components.evaluation import wilcoxon_test

        return json.dumps(wilcoxon_test(per_case_a, per_case_b, metric, unit))

    def bundle_demo(
        self,
        bundle: str,
        pretrained_ckpt: str,
        output_dir: str = "demo_output",
        seed: int = 0,
        n: int | None = None,
        max_epochs: int | None = None,
    ) -> str:
        """Demo of one segmentation BUNDLE (btcv_seg, amos_seg, mmwhs_seg, brats_seg): generated data in its real
        layout, fine-tuning (demo.json) from PRETRAINED_CKPT, evaluation and inference; prints the table."""
        from pathlib import Path

        from mosmos_components.demo import BUNDLE_KINDS, segmentation_stage
        from mosmos_components.evaluation import format_table

        if bundle not in BUNDLE_KINDS:
            raise ValueError(f"bundle must be one of {sorted(BUNDLE_KINDS)}, got {bundle!r}")
        t = time.time()
        stage = segmentation_stage(bundle, Path(output_dir).resolve(), Path(pretrained_ckpt), seed, n, max_epochs)
        run = stage["runs"]["mosmos"]
        return (
            f"{bundle} demo: {time.time() - t:.0f} s in all, {run['train_s']:.0f} s training; held-out split "
            f"({run['per_case']}):\n{format_table(run['summary'])}\ninference: {stage['prediction']}"
        )

    def segment(
        self,
        input: str,
        output_dir: str | None = None,
        model: str | None = None,
        device: str | None = None,
        split: bool = False,
        roi_subset: str | None = None,
        statistics: bool = False,
        preview: bool = False,
        output_type: str = "nifti",
        series_uid: str | None = None,
        overwrite: bool = False,
        sw_batch_size: int | None = None,
        overlap: float | None = None,
        amp: bool | None = None,
        compile: bool = False,
        crop_foreground: bool = True,
        spacing_range: str | None = None,
        fov_range: str | None = None,
        check_geometry: bool = True,
        keep_largest: bool | str = False,
    ) -> str:
        """Segment INPUT (a NIfTI file, a folder of NIfTI files, or a DICOM series folder) into OUTPUT_DIR (a folder)
        with MODEL (a segmentation bundle folder or name, its models/ folder, a model.pt with its model.json, or an
        exported model.ts with the model.json of its weights beside it). How the scan is read (orientation,
        spacing, intensities, window) comes from the model. --split: one mask per structure; --roi_subset
        liver,spleen; --statistics: volumes (mL), intensities and bounding boxes as JSON and CSV; --preview: a
        PNG of axial/coronal/sagittal overlays; --output_type dicom_seg for DICOM inputs (needs highdicom: pip
        install "mosmos[dicom]"); --amp / --noamp: mixed precision (fp16 on a GPU, the default there; bf16 on a
        CPU, off by default); --overlap 0.25: fewer windows; --compile: the network through torch.compile (the first
        window pays the compilation; for many scans in one process); --nocrop_foreground: windows over the whole
        field of view, not only the box around the body as in training. A scan whose geometry no scan has (voxel
        sizes outside 0.1-30 mm, an extent outside 5-2500 mm, a resampled grid larger than the memory, a qform
        and sform that disagree) is refused before any work: --spacing_range MIN,MAX and --fov_range MIN,MAX (mm)
        change the limits, --nocheck_geometry skips the checks. A scan whose outputs all exist is skipped unless
        --overwrite (one with some of them gets the missing ones); a scan that fails is reported, the others go
        on, and the command fails at the end. --keep_largest: only the largest connected piece of each structure
        kept (--keep_largest LV,myocardium: of those), for models that leave fragments far from the organ (needs
        scikit-image: pip install "mosmos[post]")."""
        from mosmos_components.inference import segment
        from mosmos_components.inference.run import report

        if output_dir is None:
            raise ValueError("OUTPUT_DIR is required: the folder to write the segmentations into")
        if model is None:
            raise ValueError("--model is required: a segmentation bundle folder or name, its models/, or a model.pt")
        t = time.time()
        roi = ",".join(roi_subset) if isinstance(roi_subset, (list, tuple)) else roi_subset
        limits: dict | bool = {}
        for key, value, flag in (
            ("spacing_mm", spacing_range, "--spacing_range"),
            ("field_of_view_mm", fov_range, "--fov_range"),
        ):
            if value is not None:
                limits[key] = _range(value, flag)
        if not check_geometry:
            limits = False
        res = segment(
            input,
            output_dir,
            model,
            device=device,
            split=split,
            roi_subset=roi,
            statistics=statistics,
            preview=preview,
            output_type=output_type,
            series_uid=series_uid,
            overwrite=overwrite,
            sw_batch_size=sw_batch_size,
            overlap=overlap,
            amp=amp,
            compile=compile,
            crop_foreground=crop_foreground,
            geometry_limits=limits,
            keep_largest=keep_largest,
        )
        return "mosmos segment: " + report(res, time.time() - t)

    def locate(
        self,
        input: str,
        *names: str,
        model: str | None = None,
        output_dir: str = "locate_output",
        modality: str = "ct",
        series_uid: str | None = None,
        overwrite: bool = False,
    ) -> str:
        """Where is each named structure in the scan INPUT? The pre-trained tag decoder's attention for NAMES (any
        text: names outside the training tags are zero-shot) as NIfTI heat maps on the input grid (each a
        distribution over the scan), a table of names, files and peaks (<case>_locate.json) and a preview PNG, in
        OUTPUT_DIR. MODEL: the pre-training checkpoint (model.pt), its models/ folder or the mosmos_pretrain bundle
        folder. --modality ct (abdominal window) or mri."""
        from mosmos_components.locate import locate

        if model is None:
            raise ValueError("--model is required: the pre-training checkpoint, its models/ folder or its bundle")
        res = locate(
            input, list(names), model, output_dir, modality=modality, series_uid=series_uid, overwrite=overwrite
        )
        lines = [f"mosmos locate: {res['case']} -> {output_dir} (table {res['table']}, preview {res['preview']})"]
        for name, r in res["names"].items():
            note = " (zero-shot: not a training tag)" if r["zero_shot"] else ""
            lines.append(f"  {name}{note}: peak at voxel {r['peak_voxel']}, {r['peak_mm']} mm -> {r['map']}")
        return "\n".join(lines)

    def export_onnx(self, model: str, out_path: str, opset: int = 17, overwrite: bool = False) -> str:
        """Export the segmentation MODEL (a model.pt with its model.json, or a folder holding one) to OUT_PATH
        (.onnx, with its sidecar beside it), checked against PyTorch with ONNX Runtime; mosmos segment runs it."""
        from mosmos_components.export import export_onnx
        from mosmos_components.inference import resolve_model

        return export_onnx(resolve_model(model), out_path, opset=opset, overwrite=overwrite)

    def demo(self, output_dir: str = "demo_output", seed: int = 0, quick: bool = False) -> str:
        """Run the MOSMOS pipeline end to end on generated data (see the README)."""
        from mosmos_components.demo import run_demo

        return run_demo(output_dir, seed=seed, quick=quick)


# options renamed in 0.7.0 and removed in 0.8.0: command -> {former: current}
_REMOVED_OPTIONS = {
    "demo": {"out_dir": "output_dir"},
    "demo_data": {"out_dir": "output_dir"},
    "tag_stats": {"out_dir": "output_dir"},
    "bundle_demo": {"out_dir": "output_dir"},
    "segment": {"output": "output_dir (or OUTPUT_DIR, the second argument)"},
    "locate": {"pretrained": "model"},
}


def _range(value, flag: str) -> tuple[float, float]:
    """``MIN,MAX`` (text or a pair) as two increasing positive numbers, else an error naming ``flag``."""
    parts = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        lo, hi = (float(v) for v in parts)
    except (TypeError, ValueError):
        raise ValueError(f"{flag} takes MIN,MAX in millimetres (e.g. 0.1,30), got {value!r}") from None
    if not 0 <= lo < hi:
        raise ValueError(f"{flag}: MIN must be below MAX and not negative, got {value!r}")
    return lo, hi


# flags Fire itself reads (after a lone "--")
_FIRE_FLAGS = {"help", "h", "helpfull", "interactive", "i", "separator", "completion", "trace", "t", "verbose", "v"}


def check_arguments(argv: list[str]) -> None:
    """Refuse an option the command does not have before the command runs. Fire would run the command with the
    options it knows and complain about the others only afterwards, when the work is done (and, for ``segment``,
    the outputs written, so that the corrected command then skips the scan)."""
    import difflib
    import inspect

    args = list(argv)
    if "--" in args:
        args = args[: args.index("--")]
    if not args or args[0].startswith("-"):
        return
    name = args[0].replace("-", "_")
    method = getattr(MosmosCLI, name, None)
    if method is None or name.startswith("_") or not callable(method):
        commands = sorted(n.replace("_", "-") for n in vars(MosmosCLI) if not n.startswith("_"))
        close = difflib.get_close_matches(args[0], commands, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SystemExit(f"mosmos: no command {args[0]!r}{hint}; commands: {', '.join(commands)}")
    params = [p for p in inspect.signature(method).parameters if p != "self"]
    kinds = inspect.signature(method).parameters
    known = {
        p for p in params if kinds[p].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }
    for token in args[1:]:
        if not token.startswith("--") or len(token) == 2:
            continue
        flag = token[2:].split("=", 1)[0].replace("-", "_")
        if flag in known or (flag.startswith("no") and flag[2:] in known) or flag in _FIRE_FLAGS:
            continue
        renamed = _REMOVED_OPTIONS.get(name, {}).get(flag)
        if renamed:
            raise SystemExit(f"mosmos {args[0]}: --{flag} was renamed --{renamed} (removed in 0.8.0); nothing was run")
        close = difflib.get_close_matches(flag, sorted(known), n=1)
        hint = f" (did you mean --{close[0]}?)" if close else ""
        raise SystemExit(
            f"mosmos {args[0]}: unknown option --{flag}{hint}; nothing was run. Options: "
            + ", ".join(f"--{k}" for k in params if k in known)
        )


def main() -> None:
    from mosmos_components.errors import install_summary_hook
    from mosmos_components.runtime import keep_freed_memory

    keep_freed_memory()  # large tensors reused, not faulted in again at every step (runtime.py)
    logging.basicConfig(level=logging.WARNING)
    install_summary_hook()  # the root cause of a failure is the last line printed
    check_arguments(sys.argv[1:])
    fire.Fire(MosmosCLI, name="mosmos")


if __name__ == "__main__":
    main()
