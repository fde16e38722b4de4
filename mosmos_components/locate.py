"""``mosmos locate``: where in a scan is "the liver"? The pre-trained tag decoder attends to any named structure.

Each name becomes a tag query through the pre-trained text encoder and learned prompt (names outside the training
tags work too: zero-shot). The scan is read with MONAI (RAS), and every axial slice is shown to the pre-trained
image encoder the way the pre-training images were: in radiological display (patient right on the left, anterior
up), resized to the network's image size, as RGB with CLIP's normalisation. Per name the map is a distribution
over the whole scan:

* within a slice, the tag decoder's attention of the name's query over the slice's patches (its softmax, Eq. 3 of
  ``docs/method.md``), bilinearly upsampled to the slice and renormalised;
* across slices, the softmax over slices of the CLIP similarity between the slice's global image embedding and
  the name's text embedding (the slice most like the name weighs most).

The maps are written as NIfTI heat maps on the input's exact grid (float32, summing to 1), with a preview PNG.

    mosmos locate scan.nii.gz liver "left kidney" --model runs/pretrain --output_dir out/
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["locate", "name_queries", "slice_attention"]


def name_queries(net, names: list[str]) -> tuple[torch.Tensor, list[bool]]:
    """The tag queries (K, d) of ``names`` through the pre-trained prompt and text encoder, and which names
    were training tags (the others are zero-shot)."""
    tokens = net.prompt.tokenize(names)
    with torch.inference_mode():
        queries = net.tag_queries(tokens)
    known = {t.lower() for t in net.tags}
    return queries, [n.lower() in known for n in names]


def _appended(net, context: torch.Tensor, query: torch.Tensor, s: torch.Tensor, grid) -> torch.Tensor:
    """The attention (B, h*w) of ``query`` (d,) decoded as one more query beside ``context`` (T, d)."""
    _, attn = net.decoder(torch.cat([context, query[None]]), s, grid, output="attention")
    return attn[:, -1]


def slice_attention(
    net,
    slices: torch.Tensor,
    queries: torch.Tensor,
    batch: int = 16,
    context: torch.Tensor | None = None,
    rows: list[int | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``slices`` (Z, X, Y) in [0, 1], already in the pre-training's display layout -> attention (Z, K, X, Y)
    upsampled to the slice and summing to 1 per slice and name, and the slice-to-name similarity logits (Z, K).

    The tag decoder's queries attend to each other, so a name's map depends on the queries decoded with it. Without
    ``context`` the K queries are decoded together. With ``context`` (T, d; :func:`locate` gives the training tags',
    the set the decoder learned with) each name is decoded with the context alone: name k is the context's row
    ``rows[k]`` where that is given (a training tag), else the query appended to the context — its map is then the
    same whichever other names are asked with it."""
    if context is not None and (rows is None or len(rows) != queries.shape[0]):
        raise ValueError(f"slice_attention: give one row (or None) per query, got {rows!r} for {queries.shape[0]}")
    mean = torch.tensor(net.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(net.image_std).view(1, 3, 1, 1)
    size = int(net.image_size)
    maps, sims = [], []
    text = F.normalize(queries, dim=-1)
    scale = float(net.clip.logit_scale.exp().clamp(max=100.0))
    with torch.inference_mode():
        for start in range(0, slices.shape[0], batch):
            x = slices[start : start + batch, None].float()
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
            g, s, grid = net.encode_image((x - mean) / std)
            if context is None:
                _, attn = net.decoder(queries, s, grid, output="attention")  # (B, K, h*w)
            else:
                tags = None  # the context decoded alone only where a name is one of its rows
                if any(r is not None for r in rows):
                    _, tags = net.decoder(context, s, grid, output="attention")  # (B, T, h*w)
                each = [
                    tags[:, r] if r is not None else _appended(net, context, q, s, grid) for q, r in zip(queries, rows)
                ]
                attn = torch.stack(each, dim=1)
            a = attn.reshape(attn.shape[0], attn.shape[1], *grid)
            a = F.interpolate(a, size=slices.shape[1:], mode="bilinear", align_corners=False).clamp(min=0)
            maps.append(a / a.sum(dim=(2, 3), keepdim=True).clamp(min=1e-12))
            sims.append(scale * F.normalize(g, dim=-1) @ text.t())
    return torch.cat(maps), torch.cat(sims)


def _preview(
    intensity: np.ndarray,
    maps: np.ndarray,
    names: list[str],
    zero_shot: list[bool],
    affine: np.ndarray,
    out_png: Path,
    window,
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mosmos_components.inference import to_ras
    from mosmos_components.visualize import radiological_view

    img, zooms = to_ras(intensity, affine)
    lo, hi = window if window is not None else np.percentile(img, [1, 99])
    fig, axes = plt.subplots(len(names), 2, figsize=(6.4, 3.0 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        m, _ = to_ras(maps[r], affine)
        peak = np.unravel_index(int(np.argmax(m)), m.shape)
        views = [
            ("axial", img[:, :, peak[2]], m[:, :, peak[2]], zooms[1] / zooms[0]),
            ("coronal", img[:, peak[1], :], m[:, peak[1], :], zooms[2] / zooms[0]),
        ]
        for c, (view, im, mp, aspect) in enumerate(views):
            ax = axes[r, c]
            im, mp = radiological_view(im, view), radiological_view(mp, view)
            ax.imshow(im, cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
            ax.imshow(mp, cmap="jet", alpha=0.45, aspect=aspect)
            ax.set_title(f"{name}{' (zero-shot)' if zero_shot[r] else ''}: {view} through the peak", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return str(out_png)


def locate(
    input: str | os.PathLike,
    names: list[str],
    model: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    modality: str = "ct",
    ct_range: tuple[float, float] | None = None,
    series_uid: str | None = None,
    overwrite: bool = False,
    batch: int = 16,
    *,
    pretrained: str | os.PathLike | None = None,
) -> dict:
    """Write one heat map per name (``<case>_<name>.nii.gz``, on the input grid, summing to 1; file names unique
    and bounded: :func:`~mosmos_components.inference.file_names`), ``<case>_locate.json`` (name -> file, peak) and
    ``<case>_locate.png`` for the scan INPUT; returns per name the peak (voxel and world mm) and whether the name
    was a training tag. ``model``: the pre-training checkpoint (``model.pt``), its ``models/`` folder or the
    bundle folder, as ``mosmos locate --model`` (``pretrained``, its former name, works with a ``FutureWarning``
    until 0.9.0)."""
    if pretrained is not None:
        if model is not None:
            raise TypeError("locate() got both 'model' and 'pretrained', its former name: give model only")
        warnings.warn(
            "locate(pretrained=) was renamed locate(model=), as mosmos locate --model; the former name goes in 0.9.0",
            FutureWarning,
            stacklevel=2,
        )
        model = pretrained
    for value, what in (
        (model, "model (the pre-training checkpoint, its models/ folder or its bundle)"),
        (output_dir, "output_dir"),
    ):
        if value is None:
            raise TypeError(f"locate() needs {what}")
    from monai.data import MetaTensor
    from monai.transforms import Compose, CopyItemsd, EnsureChannelFirstd, Orientationd

    from mosmos_components.checkpoint import atomic_json_save, load_pretrain_network
    from mosmos_components.data.datalist import inference_inputs
    from mosmos_components.inference import case_name, file_names, resolve_model, write_nifti
    from mosmos_components.transforms import CT_WINDOW, RAS_LABELS, LoadImageNamed, ModalityIntensityd

    ct_range = tuple(CT_WINDOW if ct_range is None else ct_range)
    names = list(dict.fromkeys(n.strip() for n in names if n and n.strip()))
    if not names:
        raise ValueError("give at least one structure name, e.g. mosmos locate scan.nii.gz liver --model ...")
    items = inference_inputs(input, series_uid)
    if len(items) != 1:
        raise ValueError(f"{input}: mosmos locate takes one scan, found {len(items)}")
    item = items[0]
    case = case_name(item)
    out = Path(output_dir)
    targets = {n: out / f"{case}_{stem}.nii.gz" for n, stem in zip(names, file_names(names))}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists (--overwrite to replace it)")
    net = load_pretrain_network(resolve_model(model)).eval()
    pre = Compose(
        [
            LoadImageNamed(keys="image", image_only=True),
            EnsureChannelFirstd(keys="image"),
            CopyItemsd(keys="image", names="raw"),
            Orientationd(keys="image", axcodes="RAS", labels=RAS_LABELS),
            ModalityIntensityd(keys="image", default=modality, ct_range=ct_range),
        ]
    )
    data = pre(dict(item))
    image = data["image"]
    if image.shape[0] != 1:
        raise ValueError(f"{item['image']}: mosmos locate reads one-channel scans, this one has {image.shape[0]}")
    vol = image[0].as_tensor().float()  # (X, Y, Z) RAS in [0, 1]
    display = vol.flip(0, 1).permute(2, 0, 1)  # slices as the pre-training saw pictures (see MosmosUNETR's flip)
    queries, known = name_queries(net, names)
    with torch.inference_mode():
        tag_queries = net.tag_queries()  # the context each name is decoded in: every training tag, as in pre-training
    row_of = {t.lower(): i for i, t in enumerate(net.tags)}
    rows = [row_of.get(n.lower()) for n in names]
    maps, sims = slice_attention(net, display, queries, batch, context=tag_queries, rows=rows)  # (Z, K, X, Y), (Z, K)
    weights = torch.softmax(sims, dim=0)  # across slices, per name
    heat = (maps * weights[:, :, None, None]).flip(2, 3).permute(1, 2, 3, 0)  # (K, X, Y, Z) RAS
    heat = heat / heat.sum(dim=(1, 2, 3), keepdim=True)
    restored = MetaTensor(heat, affine=image.affine, meta={k: v for k, v in image.meta.items() if k != "affine"})
    restored.applied_operations = list(image.applied_operations)
    back = pre.inverse({"image": restored})["image"]  # orientation only: an exact permutation/flip
    raw = data["raw"]
    maps_np = np.asarray(back.detach().cpu(), dtype=np.float32)
    if maps_np.shape[1:] != tuple(raw.shape[1:]):
        raise RuntimeError(
            f"{item['image']}: maps came back as {maps_np.shape[1:]}, the scan is {tuple(raw.shape[1:])}"
        )
    out.mkdir(parents=True, exist_ok=True)
    affine = np.asarray(raw.affine, dtype=float)
    found = {}
    for k, name in enumerate(names):
        write_nifti(maps_np[k], item, affine, targets[name])  # float32 already
        peak = np.unravel_index(int(np.argmax(maps_np[k])), maps_np[k].shape)
        world = (affine @ np.array([*peak, 1.0]))[:3]
        found[name] = {
            "map": str(targets[name]),
            "zero_shot": not known[k],
            "peak_voxel": [int(v) for v in peak],
            "peak_mm": [round(float(v), 1) for v in world],
        }
    window = tuple(ct_range) if modality == "ct" else None
    png = _preview(
        np.asarray(raw[0].detach().cpu()),
        maps_np,
        names,
        [not k for k in known],
        affine,
        out / f"{case}_locate.png",
        window,
    )
    atomic_json_save({"scan": str(item["image"]), "names": found}, out / f"{case}_locate.json")
    return {"case": case, "names": found, "preview": png, "table": str(out / f"{case}_locate.json")}
