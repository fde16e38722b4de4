"""Weight transfer from the ``mosmos_pretrain`` checkpoint into the segmentation networks (docs/method.md §4).

* ResNet (CLIP ``ModifiedResNet``) -> :class:`ClipResNetEncoder` (of :class:`MosmosUNet2D`): stem and layer1-4 one
  to one; the attention pool's value/output projections become the encoder's projection into the text space.
* ViT (CLIP ``VisionTransformer``) -> :class:`ClipViT3DEncoder` (of :class:`MosmosUNETR`): the transformer
  blocks, ``ln_pre``, ``ln_post``, ``proj`` and the class token one to one; the 3-channel patch kernel summed over
  RGB, shared over the input channels and inflated over depth (I3D, divided by the patch depth); the position grid
  resized to the 3D grid's in-plane size and broadcast over depth.
* Rules are registered per encoder class (:func:`transfer_rule`), so a new encoder brings its own.
* The tag decoder without its classifier -> the PTA branch; the class embeddings are computed here, once, by
  the pre-trained prompt + frozen text encoder, and stored as a buffer.
* Baselines (docs/method.md §5): :func:`save_clip_checkpoint` writes plain CLIP (or PubMedCLIP) weights in the
  pre-training checkpoint format, so the same transfer gives the CLIP baseline (``use_pta=False``) and, with
  ``pta_mode="denseclip"``, CLIP+DenseCLIP (class embeddings from a fixed prompt, made image-specific by
  DenseCLIP's context decoder; no tag decoder); ``"score"``, the same score maps without the context decoder. On a
  MOSMOS pre-training these modes take its learned prompt's class embeddings instead of the fixed prompt.

Every tensor of the segmentation network is reported as transferred, inflated or left at its initial value;
a checkpoint that does not fit is an error, never a silent partial load.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import QuickGELU, VisionTransformer
from torch import nn

from mosmos_components.checkpoint import file_sha256, load_pretrain_network, read_sidecar, save_network
from mosmos_components.networks.mosmos_clip import MosmosPretrainNet
from mosmos_components.networks.resnet import ClipResNetEncoder, TorchvisionResNetEncoder
from mosmos_components.networks.timm_encoder import TimmCNNEncoder, read_weight_file
from mosmos_components.networks.unet import MosmosUNet2D
from mosmos_components.networks.unetr import MosmosUNETR
from mosmos_components.networks.vit3d import ClipViT3DEncoder

__all__ = [
    "TransferReport",
    "class_embeddings",
    "class_query_separation",
    "embedding_separation",
    "CLASS_COSINE_WARNING",
    "fixed_prompt_embeddings",
    "transfer_pretrained",
    "prepare_network",
    "inflate_patch_kernel",
    "resize_position_grid",
    "save_clip_checkpoint",
    "load_imagenet_vit",
    "load_imagenet_resnet",
    "load_imagenet_timm",
    "INIT_KINDS",
    "WEIGHTS_KINDS",
    "weights_kind",
    "initialisation_record",
    "CLASS_QUERIES",
    "random_class_queries",
    "TRANSFER_RULES",
    "transfer_rule",
]

logger = logging.getLogger(__name__)

# encoder (or whole network) class -> how a pre-training network's image tower goes into it:
# rule(pretrain_net, network, report, source) copies tensors with _copy() and records them in the report
TRANSFER_RULES: dict[type, Callable[..., None]] = {}


def transfer_rule(cls: type) -> Callable:
    """Register the function that carries pre-trained image-tower weights into a segmentation network whose
    encoder is a ``cls`` (or a subclass), or into a network of class ``cls``, for :func:`transfer_pretrained`."""

    def register(fn: Callable) -> Callable:
        TRANSFER_RULES[cls] = fn
        return fn

    return register


@dataclass
class TransferReport:
    """Names of the segmentation network's tensors by what the transfer did to them."""

    transferred: list[str] = field(default_factory=list)
    inflated: list[str] = field(default_factory=list)
    computed: list[str] = field(default_factory=list)
    initial: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.transferred)} tensors transferred, {len(self.inflated)} inflated/resized, "
            f"{len(self.computed)} computed (class embeddings), {len(self.initial)} left at initial values"
        )

    def finish(self, network: nn.Module, source: str) -> TransferReport:
        """Mark every tensor of ``network`` the transfer did not touch as initial, and log the report."""
        done = set(self.transferred) | set(self.inflated) | set(self.computed)
        self.initial = [k for k in network.state_dict() if k not in done]
        self.log(source)
        return self

    def log(self, source: str) -> None:
        """One line per kind at INFO, tensors grouped by module (``encoder.trunk.* (262)``); every name at DEBUG."""
        logger.info("pre-trained weights from %s: %s", source, self.summary())
        for what in ("inflated", "computed", "initial", "transferred"):
            names = getattr(self, what)
            if names:
                logger.info("  %s: %s", what, grouped_names(names))
                logger.debug("  %s, every tensor: %s", what, ", ".join(names))


def grouped_names(names: list[str], width: int = 300) -> str:
    """Tensor names grouped by module with counts, in order of first appearance (``encoder.trunk.* (262),
    pta.class_embeddings``): by their first two dotted parts, or by the first alone where that line would be
    longer than ``width`` characters. A group of one tensor shows its name."""
    for depth in (2, 1):
        groups: dict[str, list[str]] = {}
        for name in names:
            parts = name.split(".")
            groups.setdefault(name if len(parts) <= depth else ".".join(parts[:depth]) + ".*", []).append(name)
        line = ", ".join(v[0] if len(v) == 1 else f"{k} ({len(v)})" for k, v in groups.items())
        if len(line) <= width:
            break
    return line


@contextmanager
def _eval_mode(net: nn.Module):
    """``net`` in eval mode for the block, then back to the mode it was in."""
    was = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was)


@torch.no_grad()
def class_embeddings(pretrain: MosmosPretrainNet, names: Sequence[str]) -> torch.Tensor:
    """One embedding per class name (K, d): the learned prompt + frozen text encoder, computed once.

    Names outside the pre-training tags (open-set classes) go through the very same prompt."""
    with _eval_mode(pretrain):
        return pretrain.tag_queries(pretrain.prompt.tokenize(list(names))).float()


# above this cosine two class embeddings are nearly indistinguishable to pixel-tag attention: its maps for the two
# classes can then differ only by what fine-tuning teaches the decoder, not by what the text side knows
CLASS_COSINE_WARNING = 0.99


def embedding_separation(embeddings: torch.Tensor, names: Sequence[str]) -> dict:
    """How distinguishable K class embeddings (K, d) are: the mean and the largest cosine between two different
    classes, and the closest pair by name.

    >>> sep = embedding_separation(torch.eye(3), ["a", "b", "c"])
    >>> sep["mean_cosine"], sep["max_cosine"]
    (0.0, 0.0)
    """
    from mosmos_components.metrics import mean_pairwise_cosine

    e = F.normalize(embeddings.detach().float(), dim=-1)
    k = e.shape[0]
    if k < 2:
        return {"mean_cosine": float("nan"), "max_cosine": float("nan"), "closest": []}
    off = (e @ e.t()).masked_fill(torch.eye(k, dtype=torch.bool, device=e.device), float("-inf"))
    i, j = divmod(int(off.argmax()), k)
    return {"mean_cosine": mean_pairwise_cosine(e), "max_cosine": float(off.max()), "closest": [names[i], names[j]]}


def class_query_separation(pretrain: MosmosPretrainNet, names: Sequence[str]) -> dict:
    """:func:`embedding_separation` of the class embeddings ``names`` get from the pre-trained prompt and text
    tower (those pixel-tag attention would use)."""
    return embedding_separation(class_embeddings(pretrain, names), list(names))


def _warn_if_indistinguishable(embeddings: torch.Tensor, names: Sequence[str], source: str) -> None:
    sep = embedding_separation(embeddings, list(names))
    if sep["max_cosine"] > CLASS_COSINE_WARNING:
        a, b = sep["closest"]
        warnings.warn(
            f"{source}: the class embeddings of '{a}' and '{b}' are nearly indistinguishable (cosine "
            f"{sep['max_cosine']:.4f} > {CLASS_COSINE_WARNING}; mean over all pairs {sep['mean_cosine']:.3f}): "
            "pixel-tag attention cannot tell these classes apart from the text side (a text tower that learned "
            "little, or prompts that collapsed in pre-training)",
            stacklevel=3,
        )


DEFAULT_PROMPT_TEMPLATE = "a medical image of the {}."


@torch.no_grad()
def fixed_prompt_embeddings(
    pretrain: MosmosPretrainNet, names: Sequence[str], template: str = DEFAULT_PROMPT_TEMPLATE
) -> torch.Tensor:
    """One embedding per class name (K, d) from a fixed prompt (``template.format(name)``) through the text
    encoder alone: the class embeddings of the CLIP+DenseCLIP baseline, with no learned context."""
    if "{}" not in template:
        raise ValueError(f"prompt template {template!r} has no '{{}}' for the class name")
    with _eval_mode(pretrain):
        tokens = pretrain.tokenizer([template.format(n) for n in names])
        return pretrain.clip.encode_text(tokens.to(next(pretrain.parameters()).device)).float()


def inflate_patch_kernel(kernel_2d: torch.Tensor, in_channels: int, depth: int) -> torch.Tensor:
    """(width, 3, p, p) -> (width, in_channels, p, p, depth): sum over RGB, share over the input channels
    (divided by their number), repeat over depth divided by ``depth`` (I3D)."""
    grey = kernel_2d.sum(dim=1, keepdim=True) / in_channels
    return grey.unsqueeze(-1).repeat(1, in_channels, 1, 1, depth) / depth


def resize_position_grid(pos_2d: torch.Tensor, grid_3d: Sequence[int]) -> torch.Tensor:
    """(1 + g*g, width) -> (1 + h*w*d, width): the class position kept, the g x g grid resized (bilinear) to
    h x w and broadcast over d, in the token order of a flattened (h, w, d) grid."""
    cls, grid = pos_2d[:1], pos_2d[1:]
    g = int(round(grid.shape[0] ** 0.5))
    if g * g != grid.shape[0]:
        raise ValueError(f"2D position grid of {grid.shape[0]} tokens is not square")
    h, w, d = grid_3d
    img = grid.reshape(g, g, -1).permute(2, 0, 1).unsqueeze(0)
    if (h, w) != (g, g):
        img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False)
    out = img[0].permute(1, 2, 0).unsqueeze(2).expand(h, w, d, -1).reshape(h * w * d, -1)
    return torch.cat([cls, out], dim=0)


def _copy(dst: nn.Module, dst_prefix: str, src_state: dict, report: TransferReport, source: str) -> None:
    target = dst.state_dict()
    for k, v in src_state.items():
        name = f"{dst_prefix}{k}"
        if name not in target:
            raise RuntimeError(f"{source}: tensor '{k}' has no counterpart '{name}' in {type(dst).__name__}")
        if target[name].shape != v.shape:
            raise RuntimeError(
                f"{source}: '{k}' {tuple(v.shape)} does not fit '{name}' {tuple(target[name].shape)}: "
                "the segmentation network's size differs from the pre-trained one"
            )
        target[name].copy_(v)
        report.transferred.append(name)


def _check_vit_fits(source: str, enc: nn.Module, width: int, n_blocks: int, patch: tuple[int, ...]) -> None:
    """A 2D ViT of ``width`` x ``n_blocks`` with ``patch`` patches must match the UNETR encoder ``enc``."""
    if width != enc.transformer.width or n_blocks != len(enc.transformer.resblocks):
        raise ValueError(
            f"{source}: pre-trained ViT is width {width} x {n_blocks} layers, the UNETR encoder width "
            f"{enc.transformer.width} x {len(enc.transformer.resblocks)}: set hidden_size/num_layers "
            "to match"
        )
    if tuple(patch) != tuple(enc.conv1.kernel_size[:2]):
        raise ValueError(
            f"{source}: pre-trained ViT has {tuple(patch)} patches, the UNETR encoder "
            f"{tuple(enc.conv1.kernel_size[:2])}: set patch_size={patch[0]} "
            "(UNETR takes /16 and /32 ViTs)"
        )


def _inflate_patches_and_positions(
    seg: MosmosUNETR, kernel_2d: torch.Tensor, positions_2d: torch.Tensor, report: TransferReport
) -> None:
    """The 2D patch kernel inflated over depth, the 2D position grid resized to the 3D grid."""
    enc = seg.encoder
    with torch.no_grad():
        enc.conv1.weight.copy_(inflate_patch_kernel(kernel_2d, enc.conv1.in_channels, enc.conv1.kernel_size[2]))
        enc.positional_embedding.copy_(resize_position_grid(positions_2d, enc.grid))
    report.inflated += ["encoder.conv1.weight", "encoder.positional_embedding"]


def _timm_vit_into_vit3d(pre: MosmosPretrainNet, seg: nn.Module, report: TransferReport, source: str) -> None:
    """A CLIP whose image tower is a timm ViT (BiomedCLIP's ``vit_base_patch16_224``) into UNETR's encoder: the
    blocks as for the ImageNet ViT, the linear projection head as the encoder's projection."""
    vis, enc = pre.clip.visual, seg.encoder
    trunk = vis.trunk
    if not hasattr(trunk, "patch_embed") or not hasattr(trunk, "blocks") or getattr(trunk, "cls_token", None) is None:
        raise ValueError(f"{source}: its timm image tower {type(trunk).__name__} is not a class-token ViT")
    if not isinstance(enc.ln_pre, nn.Identity):
        raise ValueError(
            f"{source} holds a timm ViT (no pre-norm, patch bias): build the network with vit_style='timm'"
        )
    grey = (round(sum(pre.image_mean) / 3, 4), round(sum(pre.image_std) / 3, 4))
    if (round(enc.input_mean, 4), round(enc.input_std, 4)) != grey:
        raise ValueError(
            f"{source} standardised images with mean {list(pre.image_mean)}, std {list(pre.image_std)}; the encoder "
            f"with {enc.input_mean}, {enc.input_std}: set image_mean/image_std to the pre-training's"
        )
    state = trunk.state_dict()
    kernel = state["patch_embed.proj.weight"]
    _check_vit_fits(source, enc, trunk.cls_token.shape[-1], len(trunk.blocks), kernel.shape[2:])
    with torch.no_grad():
        mapped = {**_timm_vit_to_open_clip(state), "conv1.bias": state["patch_embed.proj.bias"]}
        _copy(seg, "encoder.", mapped, report, source)
        if enc.proj is not None:
            _copy(seg, "encoder.", {"proj": vis.head.proj.weight.t()}, report, source)
    _inflate_patches_and_positions(seg, kernel, state["pos_embed"][0], report)


@transfer_rule(ClipViT3DEncoder)
def _vit_into_vit3d(pre: MosmosPretrainNet, seg: nn.Module, report: TransferReport, source: str) -> None:
    from open_clip.timm_model import TimmModel

    vis = pre.clip.visual
    if isinstance(vis, TimmModel):
        return _timm_vit_into_vit3d(pre, seg, report, source)
    if not isinstance(vis, VisionTransformer):
        raise ValueError(
            f"{source} holds a {type(vis).__name__} image encoder; {type(seg).__name__}'s ViT encoder needs a ViT "
            "(pre-train with a ViT backbone, or use MosmosUNet2D for a ResNet)"
        )
    enc = seg.encoder
    _check_vit_fits(source, enc, vis.transformer.width, len(vis.transformer.resblocks), vis.conv1.kernel_size)
    quick_pre = bool(pre.model_cfg.get("quick_gelu", False) or pre.force_quick_gelu)
    quick_seg = isinstance(enc.transformer.resblocks[0].mlp.gelu, QuickGELU)
    if quick_pre != quick_seg:
        raise ValueError(
            f"{source}: pre-trained ViT uses {'Quick' if quick_pre else ''}GELU, the UNETR encoder "
            f"{'Quick' if quick_seg else ''}GELU: set quick_gelu={quick_pre}"
        )
    heads_pre = vis.transformer.resblocks[0].attn.num_heads
    heads_seg = enc.transformer.resblocks[0].attn.num_heads
    if heads_pre != heads_seg:
        raise ValueError(f"{source}: pre-trained ViT has {heads_pre} heads, the UNETR encoder {heads_seg}")
    with torch.no_grad():
        _copy(seg, "encoder.transformer.", vis.transformer.state_dict(), report, source)
        _copy(seg, "encoder.", {f"ln_pre.{k}": v for k, v in vis.ln_pre.state_dict().items()}, report, source)
        _copy(seg, "encoder.", {f"ln_post.{k}": v for k, v in vis.ln_post.state_dict().items()}, report, source)
        _copy(seg, "encoder.", {"class_embedding": vis.class_embedding}, report, source)
        if seg.encoder.proj is not None:
            _copy(seg, "encoder.", {"proj": vis.proj}, report, source)
    _inflate_patches_and_positions(seg, vis.conv1.weight, vis.positional_embedding, report)


@transfer_rule(ClipResNetEncoder)
def _resnet_into_resnet(pre: MosmosPretrainNet, seg: nn.Module, report: TransferReport, source: str) -> None:
    vis = pre.clip.visual
    if not isinstance(vis, ModifiedResNet):
        raise ValueError(
            f"{source} holds a {type(vis).__name__} image encoder; {type(seg).__name__}'s ResNet encoder needs a "
            "CLIP ResNet (pre-train with an RN backbone, or use MosmosUNETR for a ViT)"
        )
    state = {k: v for k, v in vis.state_dict().items() if not k.startswith("attnpool.")}
    with torch.no_grad():
        _copy(seg, "encoder.", state, report, source)
        if seg.encoder.embed_dim is not None:
            _copy(seg, "encoder.v_proj.", vis.attnpool.v_proj.state_dict(), report, source)
            _copy(seg, "encoder.c_proj.", vis.attnpool.c_proj.state_dict(), report, source)


@transfer_rule(TimmCNNEncoder)
def _timm_into_timm(pre: MosmosPretrainNet, seg: nn.Module, report: TransferReport, source: str) -> None:
    from open_clip.timm_model import TimmModel

    vis, enc = pre.clip.visual, seg.encoder
    if not isinstance(vis, TimmModel):
        raise ValueError(
            f"{source} holds a {type(vis).__name__} image encoder; the 'timm_cnn' encoder needs a timm image tower "
            "(pre-train with a timm backbone such as mosmos-lite)"
        )
    name = type(vis.trunk).__name__
    if name != type(enc.trunk).__name__:
        raise ValueError(f"{source} holds a timm {name}; the encoder is a {type(enc.trunk).__name__}: set model_name")
    if tuple(pre.image_mean) != tuple(enc.mean.flatten().tolist()) or tuple(pre.image_std) != tuple(
        enc.std.flatten().tolist()
    ):
        raise ValueError(
            f"{source} standardised images with mean {pre.image_mean}, std {pre.image_std}; the encoder with "
            f"{enc.mean.flatten().tolist()}, {enc.std.flatten().tolist()}: set image_mean/image_std"
        )
    with torch.no_grad():
        _copy(seg, "encoder.trunk.", vis.trunk.state_dict(), report, source)
        if enc.proj is not None:
            _copy(seg, "encoder.proj.", vis.head.proj.state_dict(), report, source)


def load_imagenet_timm(network: nn.Module, path: str | os.PathLike) -> TransferReport:
    """The ImageNet baseline of a U-Net on a timm CNN (``encoder="timm_cnn"``): the timm model's ImageNet weights
    (timm's names, or efficientnet_pytorch's for EfficientNets, mapped one to one) into the encoder's trunk, the
    classifier dropped. Returns the report (also logged)."""
    from mosmos_components.networks.mosmos_clip import load_image_tower_weights

    source = str(path)
    if not isinstance(getattr(network, "encoder", None), TimmCNNEncoder):
        raise ValueError("timm ImageNet weights need a network whose encoder is 'timm_cnn'")
    if network.pta is not None:
        raise ValueError("the ImageNet baseline has no text encoder for class embeddings: set use_pta to false")
    load_image_tower_weights(network.encoder.trunk, path)
    report = TransferReport()
    report.transferred += [f"encoder.trunk.{k}" for k in network.encoder.trunk.state_dict()]
    return report.finish(network, source)


_TIMM_BLOCK = {
    "norm1": "ln_1",
    "attn.qkv.weight": "attn.in_proj_weight",
    "attn.qkv.bias": "attn.in_proj_bias",
    "attn.proj": "attn.out_proj",
    "norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def _timm_vit_to_open_clip(state: dict) -> dict:
    """A timm ViT's blocks, final norm and class token under open_clip's ``VisionTransformer`` names (the patch
    kernel and the position grid are inflated separately)."""
    mapped = {}
    for k, v in state.items():
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            for old, new in _TIMM_BLOCK.items():
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
                    break
            mapped[f"transformer.resblocks.{i}.{rest}"] = v
        elif k.startswith("norm."):
            mapped["ln_post." + k[len("norm.") :]] = v
        elif k == "cls_token":
            mapped["class_embedding"] = v.reshape(-1)
    return mapped


def load_imagenet_vit(network: MosmosUNETR, path: str | os.PathLike) -> TransferReport:
    """The ImageNet baseline (docs/method.md §5): an ImageNet ViT-B/16 in timm's format (``patch_embed``,
    ``cls_token``, ``pos_embed``, ``blocks.N``, ``norm``; e.g. timm's ``vit_base_patch16_224`` weights) into a
    ``MosmosUNETR(vit_style="timm", use_pta=False)``: blocks one to one, patch kernel and position grid inflated
    as for CLIP, the classifier head dropped. Returns the report (also logged)."""
    source = str(path)
    if not isinstance(getattr(network, "encoder", None), ClipViT3DEncoder):
        raise TypeError(f"the ImageNet ViT goes into MosmosUNETR, not {type(network).__name__}")
    if network.pta is not None:
        raise ValueError("the ImageNet baseline has no text encoder for class embeddings: set use_pta to false")
    enc = network.encoder
    if not isinstance(enc.ln_pre, nn.Identity):
        raise ValueError("ImageNet ViT weights need the network built with vit_style='timm' (no pre-norm, patch bias)")
    state = read_weight_file(path, "ImageNet weights")
    if "patch_embed.proj.weight" not in state or "cls_token" not in state:
        raise ValueError(f"{source} is not a timm ViT state dict (no patch_embed.proj.weight / cls_token)")
    other = sorted(
        {k.split(".")[0] for k in state}
        - {"patch_embed", "cls_token", "pos_embed", "blocks", "norm", "head", "fc_norm"}
    )
    if other or any(k.startswith("fc_norm.") for k in state):
        raise ValueError(
            f"{source}: unsupported ViT variant (has {other or ['fc_norm']}); the ImageNet baseline "
            "takes the plain class-token ViT (timm's vit_base_patch16_224 family)"
        )
    mapped = _timm_vit_to_open_clip(state)
    kernel = state["patch_embed.proj.weight"]
    _check_vit_fits(
        source,
        enc,
        state["cls_token"].shape[-1],
        len({k.split(".")[1] for k in state if k.startswith("blocks.")}),
        kernel.shape[2:],
    )
    report = TransferReport()
    with torch.no_grad():
        _copy(network, "encoder.", {**mapped, "conv1.bias": state["patch_embed.proj.bias"]}, report, source)
    _inflate_patches_and_positions(network, kernel, state["pos_embed"][0], report)
    return report.finish(network, source)


def load_imagenet_resnet(network: MosmosUNet2D, path: str | os.PathLike) -> TransferReport:
    """The ImageNet baseline of the 2D U-Net: torchvision ResNet-50 weights (e.g. ``resnet50-0676ba61.pth``) into
    a ``MosmosUNet2D(resnet_style="torchvision", use_pta=False)``, every encoder tensor one to one, the
    classifier ``fc`` dropped. Returns the report (also logged)."""
    source = str(path)
    if not isinstance(getattr(network, "encoder", None), TorchvisionResNetEncoder):
        raise ValueError("torchvision ResNet weights need MosmosUNet2D built with resnet_style='torchvision'")
    state = read_weight_file(path, "ImageNet weights")
    if "conv1.weight" not in state or "layer4.0.conv1.weight" not in state:
        raise ValueError(f"{source} is not a torchvision ResNet state dict (no conv1.weight / layer4)")
    encoder = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = set(network.encoder.state_dict())
    extra = sorted(set(encoder) - expected)
    if extra:
        raise ValueError(
            f"{source}: {len(extra)} tensors have no place in the encoder (e.g. {extra[:3]}): "
            "set layers to the ResNet's blocks per stage ((3, 4, 6, 3) for ResNet-50)"
        )
    missing = sorted(expected - set(encoder))
    if missing:
        raise ValueError(f"{source}: the encoder's {missing[:3]} ... are not in the file: set layers to match it")
    report = TransferReport()
    with torch.no_grad():
        _copy(network, "encoder.", encoder, report, source)
    return report.finish(network, source)


def transfer_pretrained(
    network: MosmosUNETR | MosmosUNet2D,
    pretrained_ckpt: str | os.PathLike,
    pretrain: MosmosPretrainNet | None = None,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
) -> TransferReport:
    """Transfer the ``mosmos_pretrain`` checkpoint at ``pretrained_ckpt`` (+ its JSON sidecar) into ``network``.

    With PTA in ``"decoder"`` mode (MOSMOS) the tag decoder is transferred and the class embeddings come from the
    learned prompt; in ``"denseclip"`` and ``"score"`` modes only the class embeddings are computed: from the
    learned prompt of a MOSMOS pre-training that trained one (with ``L_mlr``; the score maps of MOSMOS's own
    class embeddings), else (CLIP+DenseCLIP) from ``prompt_template``. Returns the report (also logged); raises
    on a missing, corrupt or mismatched checkpoint.
    """
    source = str(pretrained_ckpt)
    pre = pretrain if pretrain is not None else load_pretrain_network(pretrained_ckpt)
    report = TransferReport()
    classes = (*type(getattr(network, "encoder", None)).__mro__, *type(network).__mro__)
    rule = next((TRANSFER_RULES[c] for c in classes if c in TRANSFER_RULES), None)
    if rule is None:
        raise TypeError(
            f"no transfer rule for {type(network).__name__} with a {type(getattr(network, 'encoder', None)).__name__} "
            f"encoder (known: "
            f"{sorted(c.__name__ for c in TRANSFER_RULES)}; register one with @transfer_rule)"
        )
    rule(pre, network, report, source)
    if network.pta is not None and network.pta.decoder is None:
        if network.pta.class_embeddings.shape[1] != pre.embed_dim:
            raise ValueError(
                f"{source}: embedding dimension {pre.embed_dim} != the network's embed_dim "
                f"{network.pta.class_embeddings.shape[1]}"
            )
        names = network.pta.class_names
        with torch.no_grad():  # a MOSMOS pre-training's own class embeddings; CLIP's, from the fixed prompt
            learned = pretrain is None and _has_learned_prompt(pretrained_ckpt)
            emb = class_embeddings(pre, names) if learned else fixed_prompt_embeddings(pre, names, prompt_template)
            network.pta.set_class_embeddings(emb)
        report.computed += ["pta.class_embeddings", "pta.embeddings_ready"]
    elif network.pta is not None:
        side = read_sidecar(pretrained_ckpt) if pretrain is None else {}
        if side.get("mosmos_pretrained") is False:
            warnings.warn(
                f"{source} holds CLIP weights without MOSMOS pre-training: its tag decoder and prompt are "
                "untrained, so pixel-tag attention starts from random queries (for the CLIP+DenseCLIP "
                "baseline set pta_mode to 'denseclip')",
                stacklevel=2,
            )
        elif side.get("pretrain_losses", {}).get("mlr") is False:
            warnings.warn(
                f"{source} was pre-trained without L_mlr (Table 4's ablation): its tag decoder and prompt "
                "are untrained, so pixel-tag attention starts from random queries",
                stacklevel=2,
            )
        if network.pta.decoder.d_model != pre.embed_dim:
            raise ValueError(
                f"{source}: embedding dimension {pre.embed_dim} != the network's embed_dim "
                f"{network.pta.decoder.d_model}"
            )
        pre_heads = pre.decoder.layers[0].cross_attn.num_heads
        seg_heads = network.pta.decoder.layers[0].cross_attn.num_heads
        if pre_heads != seg_heads or len(pre.decoder.layers) != len(network.pta.decoder.layers):
            raise ValueError(
                f"{source}: tag decoder is {len(pre.decoder.layers)} layers x {pre_heads} heads, the "
                f"network's {len(network.pta.decoder.layers)} x {seg_heads}: set decoder_layers/heads"
            )
        with torch.no_grad():
            _copy(network, "pta.decoder.", pre.decoder.state_dict(), report, source)
            network.pta.set_class_embeddings(class_embeddings(pre, network.pta.class_names))
        report.computed += ["pta.class_embeddings", "pta.embeddings_ready"]
    if network.pta is not None:
        _warn_if_indistinguishable(network.pta.class_embeddings, network.pta.class_names, source)
    return report.finish(network, source)


def _has_learned_prompt(path: str | os.PathLike) -> bool:
    """Whether the checkpoint at ``path`` is a MOSMOS pre-training that trained its prompt (with ``L_mlr``)."""
    return weights_kind(path) == "mosmos" and read_sidecar(path).get("pretrain_losses", {}).get("mlr") is not False


def _init_imagenet(network: MosmosUNETR | MosmosUNet2D, path: str | os.PathLike, prompt_template: str) -> None:
    encoder = getattr(network, "encoder", None)
    if isinstance(encoder, TimmCNNEncoder):
        load_imagenet_timm(network, path)
    elif isinstance(encoder, (ClipResNetEncoder, TorchvisionResNetEncoder)):
        load_imagenet_resnet(network, path)
    else:
        load_imagenet_vit(network, path)


def _init_mosmos(network: MosmosUNETR | MosmosUNet2D, path: str | os.PathLike, prompt_template: str) -> None:
    transfer_pretrained(network, path, prompt_template=prompt_template)


# ``pretrained_kind`` -> how a checkpoint of that kind initialises a segmentation network
# (network, checkpoint path, class prompt template); a new kind of weights is one entry here
INIT_KINDS: dict[str, Callable[..., None]] = {
    "mosmos": _init_mosmos,
    "clip": _init_mosmos,
    "ssl": _init_mosmos,
    "imagenet": _init_imagenet,
}

#: what each kind of pre-training checkpoint is, in the words of the errors
WEIGHTS_KINDS = {
    "mosmos": "a MOSMOS pre-training (the mosmos_pretrain bundle)",
    "clip": "CLIP weights without MOSMOS pre-training (mosmos clip-checkpoint)",
    "ssl": "a self-supervised pre-training (mosmos_pretrain with ssl.json)",
}


def weights_kind(path: str | os.PathLike) -> str:
    """The kind of a pre-training checkpoint (a key of :data:`WEIGHTS_KINDS`), from its sidecar's
    ``weights_kind``, or for sidecars written before it was recorded, from what they say of their training."""
    side = read_sidecar(path)
    if side.get("weights_kind") in WEIGHTS_KINDS:
        return side["weights_kind"]
    if side.get("mosmos_pretrained") is False:
        return "ssl" if "self-supervised" in str(side.get("pretraining", "")) else "clip"
    return "mosmos"


def initialisation_record(
    pretrained_ckpt: str | os.PathLike | None, pretrained_kind: str = "mosmos", use_pta: bool = False
) -> dict:
    """What a segmentation network starts from, for its sidecar and its MLflow run: the kind of weights, the
    file and its SHA-256 (``{"kind": "random"}`` without weights), and whether pixel-tag attention is on."""
    if not pretrained_ckpt or not os.path.isfile(str(pretrained_ckpt)):
        return {"kind": "random", "use_pta": bool(use_pta)}
    return {
        "kind": pretrained_kind,
        "weights": str(pretrained_ckpt),
        "weights_sha256": file_sha256(pretrained_ckpt),
        "use_pta": bool(use_pta),
    }


CLASS_QUERIES = ("pretrained", "random")


def random_class_queries(like: torch.Tensor) -> torch.Tensor:
    """K mutually orthogonal random class embeddings (K, d) with the mean norm of ``like``: pixel-tag attention
    with no class identity from the text side (drawn from torch's seeded generator, so a run's seed fixes them)."""
    k, d = like.shape
    if k > d:
        raise ValueError(f"{k} classes cannot have orthogonal embeddings in {d} dimensions")
    q, _ = torch.linalg.qr(torch.randn(d, k, dtype=torch.float64))
    norm = like.detach().double().norm(dim=-1).mean().clamp(min=1e-6)
    return (q.t() * norm).to(like.dtype)


def prepare_network(
    network: MosmosUNETR | MosmosUNet2D,
    pretrained_ckpt: str | os.PathLike | None = None,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    pretrained_kind: str = "mosmos",
    class_queries: str = "pretrained",
) -> MosmosUNETR | MosmosUNet2D:
    """For bundle configs: load ``pretrained_ckpt`` into ``network`` (``None``: random initialisation;
    with ``use_pta=True`` the class embeddings are random vectors, with a warning: Table 4's "no pre-training" row).
    ``pretrained_kind``: a key of :data:`INIT_KINDS`: ``"mosmos"``, ``"clip"`` or ``"ssl"`` (a pre-training
    checkpoint of that kind: :func:`weights_kind` must agree, so a baseline never runs on another baseline's
    weights) or ``"imagenet"`` (timm weights, :func:`load_imagenet_vit`, :func:`load_imagenet_timm`; torchvision
    ResNet weights, :func:`load_imagenet_resnet`). A ``pretrained_ckpt`` that still reads ``REQUIRED: ...`` (a
    variant that needs weights, given none) is an error quoting it.
    ``class_queries``: ``"pretrained"`` (from the checkpoint's prompt and text tower), or ``"random"``: after the
    transfer, mutually orthogonal random vectors of the same norm (:func:`random_class_queries`) — the ablation
    that keeps the pre-trained encoder and tag decoder but takes the class identity out of the maps."""
    if class_queries not in CLASS_QUERIES:
        raise ValueError(f"class_queries must be one of {CLASS_QUERIES}, got {class_queries!r}")
    if isinstance(pretrained_ckpt, str) and pretrained_ckpt.startswith("REQUIRED"):
        raise ValueError(f"pretrained_ckpt: {pretrained_ckpt.split(':', 1)[-1].strip()}")
    if class_queries == "random" and (network.pta is None or not pretrained_ckpt):
        raise ValueError("class_queries='random' replaces pre-trained class embeddings: it needs use_pta and weights")
    if pretrained_ckpt:
        if not os.path.isfile(pretrained_ckpt):
            raise FileNotFoundError(
                f"pre-trained checkpoint not found: {pretrained_ckpt} (run the mosmos_pretrain bundle first, "
                "or set use_pretrained to false for the random-initialisation baseline)"
            )
        if pretrained_kind not in INIT_KINDS:
            raise ValueError(
                f"pretrained_kind must be one of {sorted(INIT_KINDS)} (mosmos, clip, ssl: pre-training "
                "checkpoints of that kind; imagenet: timm or torchvision weights), "
                f"got {pretrained_kind!r}"
            )
        if pretrained_kind in WEIGHTS_KINDS:
            found = weights_kind(pretrained_ckpt)
            if found != pretrained_kind:
                raise ValueError(
                    f"{pretrained_ckpt} holds {WEIGHTS_KINDS[found]}, but this run expects "
                    f"{WEIGHTS_KINDS[pretrained_kind]} (pretrained_kind '{pretrained_kind}', set by the baseline "
                    "or ablation file): give the matching --pretrained_ckpt"
                )
        INIT_KINDS[pretrained_kind](network, pretrained_ckpt, prompt_template)
        if class_queries == "random":
            with torch.no_grad():
                network.pta.set_class_embeddings(random_class_queries(network.pta.class_embeddings))
            logger.info("class embeddings replaced by random orthogonal vectors (class_queries='random')")
    elif network.pta is not None:
        # Table 4's "no pre-training" row: the whole framework on untrained weights. There is no text encoder to
        # give class embeddings, so they are random vectors (std 1, seeded by the run's seed), as an untrained
        # text encoder's outputs would be.
        warnings.warn(
            f"{type(network).__name__}: no pre-trained weights, yet pixel-tag attention is on (the paper's "
            "'no pre-training' ablation): the encoder, the tag decoder and the class embeddings are all "
            "random, so the attention maps start uninformative",
            stacklevel=2,
        )
        with torch.no_grad():
            network.pta.set_class_embeddings(torch.randn_like(network.pta.class_embeddings))
    else:
        warnings.warn(
            f"{type(network).__name__}: no pre-trained weights, training from random initialisation", stacklevel=2
        )
    return network


def save_clip_checkpoint(
    path: str | os.PathLike,
    backbone: str = "ViT-B-16",
    clip_pretrained: str | None = None,
    force_quick_gelu: bool = False,
    text_tower: str | None = None,
) -> MosmosPretrainNet:
    """Write CLIP weights (a local file, or an open_clip tag when online) as a pre-training checkpoint
    (``model.pt`` + ``model.json``) *without* MOSMOS pre-training: the CLIP / PubMedCLIP baselines'
    initialisation. The prompt context and the tag decoder stay at their initial values (only the DenseCLIP
    DenseCLIP modes, which use neither, should be combined with PTA). ``clip_pretrained=None`` refuses: a
    "CLIP" baseline from random weights would be the random baseline under another name."""
    if not clip_pretrained:
        raise ValueError("save_clip_checkpoint needs clip_pretrained: a local CLIP weights file or an open_clip tag")
    net = MosmosPretrainNet(
        backbone, clip_pretrained=clip_pretrained, force_quick_gelu=force_quick_gelu, text_tower=text_tower
    )
    save_network(
        net, path, extra={"mosmos_pretrained": False, "weights_kind": "clip", "clip_pretrained": str(clip_pretrained)}
    )
    logger.info("CLIP weights %s (%s) written to %s without MOSMOS pre-training", clip_pretrained, backbone, path)
    return net
