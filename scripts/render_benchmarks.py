"""The performance section of docs/benchmarks.md, generated from the JSON files of ``scripts/benchmark.py --json``.

    python scripts/render_benchmarks.py docs/benchmarks/*.json            # print the section
    python scripts/render_benchmarks.py docs/benchmarks/*.json --readme docs/benchmarks.md   # replace it there

The section sits between ``<!-- benchmark:start -->`` and ``<!-- benchmark:end -->``; each column is one file
(its device and network size), each row a measure with the issue's target where it has one.
"""

from __future__ import annotations

import json
from pathlib import Path

import fire

START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
GB = 1e9


def _joined(key: str, parts: tuple[str, ...]):
    """A cell of a dict-valued result: its ``parts`` in this order, in seconds."""
    return lambda res: " / ".join(f"{res[key][p]:.2f}" for p in parts)


def _onnx(res: dict) -> str:
    return f"{res['onnx_scan_seconds']:.1f} (×{res['onnx_ratio_vs_pytorch']:.2f}; {res['onnx_label_agreement']:.3%})"


# (label, keys, format string or function of the results (when keys[0] is there), target test or None, target text)
ROWS = [
    (
        "inference, PTA / no PTA (fp32 / AMP)",
        ("pta_infer_ratio_vs_no_pta", "pta_infer_ratio_vs_no_pta_amp"),
        "×{:.3f}",
        lambda v: v <= 1.05,
        "≤ 1.05",
    ),
    (
        "inference, PTA / MONAI UNETR (fp32 / AMP)",
        ("pta_infer_ratio_vs_monai_unetr", "pta_infer_ratio_vs_monai_unetr_amp"),
        "×{:.3f}",
        lambda v: v <= 1.05,
        "≤ 1.05",
    ),
    (
        "training step, PTA / no PTA (fp32 / AMP)",
        ("pta_train_step_ratio_vs_no_pta", "pta_train_step_ratio_vs_no_pta_amp"),
        "×{:.3f}",
        lambda v: v <= 1.15,
        "≤ 1.15",
    ),
    (
        "  its loss side: PTA upsampling + two DiceCE / one DiceCE (s, fp32)",
        ("train_loss_seconds",),
        _joined("train_loss_seconds", ("pta_pair", "dicece")),
        None,
        "",
    ),
    (
        "pre-training step / open_clip CLIP + ClipLoss (batch 64)",
        ("pretrain_step_ratio_vs_open_clip",),
        "×{:.3f}",
        lambda v: v <= 1.15,
        "≤ 1.15",
    ),
    (
        "  its arithmetic: FLOPs / open_clip's (the floor of the ratio)",
        ("pretrain_flop_ratio_vs_open_clip",),
        "×{:.3f}",
        None,
        "",
    ),
    ("training loop: share of time waiting for data", ("loader_wait_fraction",), "{:.1%}", lambda v: v < 0.05, "< 5 %"),
    ("training loop: time per iteration / MONAI UNETR", ("train_iteration_ratio_vs_monai_unetr",), "×{:.3f}", None, ""),
    ("one window through torch.compile / eager (fp32)", ("compile_window_ratio_vs_eager",), "×{:.3f}", None, ""),
    ("  compilation, first call (s)", ("compile_seconds",), "{:.1f}", None, ""),
    ("whole scan, 512×512×100 CT (s)", ("scan_seconds",), "{:.1f}", None, "≤ 90 (CPU), ≤ 2 (GPU, AMP)"),
    (
        "  read + preprocess / sliding window / to input grid / write (s)",
        ("scan_stage_seconds",),
        _joined("scan_stage_seconds", ("read_preprocess", "sliding_window", "to_input_grid", "write")),
        None,
        "",
    ),
    ("  peak RSS / peak GPU memory (GB)", ("scan_peak_rss_bytes", "scan_peak_cuda_bytes"), "{:.2f}", None, "≤ 6 (CPU)"),
    ("  through ONNX Runtime (s; ratio; labels equal)", ("onnx_scan_seconds",), _onnx, None, ""),
]


def _scan_target(res: dict) -> bool | None:
    if "scan_seconds" not in res or res.get("size") != "paper":
        return None
    if res["device"].startswith("cuda"):
        return res["scan_seconds"] <= 2.0 if res.get("scan_amp") else None
    return res["scan_seconds"] <= 90 and res.get("scan_peak_rss_bytes", 0) <= 6 * GB


def _cell(res: dict, keys: tuple, fmt, target) -> str:
    if callable(fmt):
        return fmt(res) if keys[0] in res else "–"
    parts = []
    for k in keys:
        if k not in res:
            continue
        v = res[k] / GB if k.endswith("_bytes") else res[k]
        text = fmt.format(v)
        if target is not None:
            text += " ✓" if target(v) else " ✗"
        elif k == "scan_seconds":
            ok = _scan_target(res)
            text += "" if ok is None else (" ✓" if ok else " ✗")
        parts.append(text)
    return " / ".join(parts) if parts else "–"


def _column(res: dict) -> str:
    dev = res.get("device_name") or res["device"]
    return (
        f"{res['size']}, {dev} ({res.get('threads', '?')} threads)"
        if res["device"] == "cpu"
        else f"{res['size']}, {dev}"
    )


def render(files: list[str]) -> str:
    """The Markdown of the section for ``files`` (performance JSONs; ``fast_modes`` files make a second table)."""
    results = [(Path(f).name, json.loads(Path(f).read_text(encoding="utf-8"))) for f in sorted(files)]
    perf = [(n, r) for n, r in results if "fast_modes" not in r and "ddp_samples_per_s" not in r]
    fast = [(n, r) for n, r in results if "fast_modes" in r]
    ddp = [(n, r) for n, r in results if "ddp_samples_per_s" in r]
    lines = [
        START,
        "",
        "Generated by `python scripts/render_benchmarks.py docs/benchmarks/*.json --readme docs/benchmarks.md` "
        "from the files of `scripts/benchmark.py --json` (one column per file; ✓ / ✗: the project's speed "
        "targets). Ratios come from one process, the candidates timed in turns, the fastest of the repeats; "
        "a ratio > 1 means MOSMOS is slower.",
        "",
    ]
    if perf:
        lines += [
            "| measure | target | " + " | ".join(f"{_column(r)} `{n}`" for n, r in perf) + " |",
            "|---|---|" + "---|" * len(perf),
        ]
        for label, keys, fmt, target, text in ROWS:
            cells = [_cell(r, keys, fmt, target) for _, r in perf]
            if all(c == "–" for c in cells):
                continue
            lines.append(f"| {label} | {text} | " + " | ".join(cells) + " |")
        lines.append("")
    if fast:
        lines += [
            "Settings of `mosmos segment` (`--amp`, `--overlap 0.25`, and `no_crop`: `--nocrop_foreground`, windows "
            "over the whole field of view) on the demo's labelled test scans (`benchmark.py --only fastmode`): mean "
            "foreground Dice, seconds per scan, voxels labelled as by the default.",
            "",
            "| file | setting | Dice | s / scan | labels as default |",
            "|---|---|---|---|---|",
        ]
        for n, r in fast:
            for mode, v in r["fast_modes"].items():
                lines.append(
                    f"| `{n}` ({_column(r)}) | {mode} | {v['dice']:.4f} | {v['seconds_per_scan']:.2f} | "
                    f"{v['label_agreement_vs_default']:.3%} |"
                )
        lines.append("")
    if ddp:
        lines += [
            "Data-parallel training (`benchmark.py --only ddp`: DDP steps of the network, gloo on a CPU, "
            "samples per second over all processes):",
            "",
            "| file | processes | samples / s | scaling |",
            "|---|---|---|---|",
        ]
        for n, r in ddp:
            base = r["ddp_samples_per_s"]["1"]
            for k, v in r["ddp_samples_per_s"].items():
                lines.append(f"| `{n}` ({_column(r)}) | {k} | {v:.2f} | ×{v / base:.2f} |")
        lines.append("")
    notes = [(n, r["provenance"]) for n, r in results if r.get("provenance")]
    if notes:
        lines += ["Where the files come from:", ""] + [f"* `{n}`: {text}" for n, text in notes] + [""]
    lines.append(END)
    return "\n".join(lines)


def main(*files: str, readme: str | None = None) -> str | None:
    section = render(list(files))
    if readme is None:
        return section
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise ValueError(f"{path}: no {START} ... {END} markers to replace")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(head + section + tail, encoding="utf-8")
    tmp.replace(path)
    return None


if __name__ == "__main__":
    fire.Fire(main)
