"""Checkpoint files: plain tensor state_dicts written atomically, with a JSON sidecar for everything else.

``model.pt`` holds only tensors (``torch.load(..., weights_only=True)`` opens it); ``model.json`` beside it holds
the network's configuration (backbone, dimensions, tag list, context length) so another bundle can rebuild it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "atomic_torch_save",
    "atomic_json_save",
    "atomic_text_save",
    "write_sidecar",
    "save_network",
    "check_finite",
    "load_state_dict",
    "read_sidecar",
    "load_pretrain_network",
    "load_segmentation_network",
    "is_2d_network",
    "load_weights",
]


def _atomic_write(path: str | os.PathLike, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half of one
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    _atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_json_save(obj: Any, path: str | os.PathLike) -> None:
    atomic_text_save(json.dumps(obj, indent=4), path)


def atomic_text_save(text: str, path: str | os.PathLike) -> None:
    _atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> bool:
    """Copy a small file to ``dst`` atomically, unless ``dst`` already holds the same bytes; True if written."""
    return atomic_bytes(Path(src).read_bytes(), dst)


def atomic_bytes(data: bytes, dst: str | os.PathLike) -> bool:
    """Write ``data`` to ``dst`` atomically, unless ``dst`` already holds the same bytes; True if written."""
    if Path(dst).is_file() and Path(dst).read_bytes() == data:
        return False
    _atomic_write(dst, lambda fh: fh.write(data))
    return True


def check_finite(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse to write weights that hold NaN/Inf (a model trained on a poisoned batch), naming the tensors."""
    bad = [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise FloatingPointError(
            f"refusing to write {path}: {len(bad)} tensor(s) hold NaN/Inf (e.g. {bad[:3]}); the "
            "files already there are kept"
        )


def save_network(network: torch.nn.Module, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Write ``network``'s state_dict to ``path`` and ``network.config()`` (+ ``extra``) to its ``.json``.

    Non-finite weights are refused (:func:`check_finite`). The pair is replaced as one unit: the weights first,
    then the sidecar, which records the weights' SHA-256 (``weights_sha256``); a reader that finds the two out of
    step (a writer killed between the two renames) gets an error naming both, never a silent mix."""
    import hashlib
    import io

    net = getattr(network, "module", network)  # unwrap DistributedDataParallel
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    check_finite(state, path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    sidecar = dict(net.config()) if hasattr(net, "config") else {}
    sidecar.update(extra or {})
    sidecar["weights_sha256"] = hashlib.sha256(data).hexdigest()
    assets = net.assets() if hasattr(net, "assets") else {}
    if assets:
        sidecar["assets"] = {name: _save_assets(folder, path, name) for name, folder in assets.items()}
    _atomic_write(path, lambda fh: fh.write(data))
    write_sidecar(sidecar, Path(path).with_suffix(".json"))


def _content_hashes(sidecar: dict[str, Any]) -> dict[str, str]:
    import hashlib

    return {
        k: hashlib.sha256(json.dumps(v, sort_keys=True).encode("utf-8")).hexdigest()[:16]
        for k, v in sidecar.items()
        if k != "content_sha256"
    }


def write_sidecar(sidecar: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a checkpoint's sidecar with a hash of each of its entries (``content_sha256``), so that an edit to
    the file (class names reordered, the spacing changed) is refused by :func:`read_sidecar`, naming the entry."""
    atomic_json_save({**sidecar, "content_sha256": _content_hashes(sidecar)}, path)


def _save_assets(folder: str | os.PathLike, path: str | os.PathLike, name: str) -> str:
    """Copy the small files a network needs besides its weights (a Hugging Face text tower's config and
    tokenizer: :data:`~mosmos_components.networks.mosmos_clip.TEXT_ASSET_FILES`) from ``folder`` into
    ``<checkpoint stem>_<name>/`` next to the checkpoint; returns that folder's name (relative to the checkpoint).
    The copy is written under a temporary name and renamed into place."""
    import shutil

    from mosmos_components.networks.mosmos_clip import TEXT_ASSET_FILES

    src, target = Path(folder), Path(path).with_name(f"{Path(path).stem}_{name}")
    if src.resolve() == target.resolve():
        return target.name
    files = [src / f for f in TEXT_ASSET_FILES if (src / f).is_file()]
    if not any(f.name == "config.json" for f in files):
        raise FileNotFoundError(f"{src}: no config.json to store with the checkpoint {path}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    for f in files:
        shutil.copy2(f, tmp / f.name)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target.name


def checkpoint_assets(path: str | os.PathLike, sidecar: dict[str, Any]) -> dict[str, str]:
    """The asset folders a checkpoint's sidecar names, resolved next to the checkpoint (each must exist)."""
    out = {}
    for name, rel in (sidecar.get("assets") or {}).items():
        folder = Path(path).parent / rel
        if not folder.is_dir():
            raise FileNotFoundError(f"{path}: its {name} files {folder} are missing (they travel with the checkpoint)")
        out[name] = str(folder)
    return out


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, read in 1 MB chunks (memory bounded whatever its size)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_pair(path: str | os.PathLike, sidecar: dict[str, Any]) -> None:
    """The weights at ``path`` are the ones its sidecar was written with (when the sidecar records a hash)."""

    want = sidecar.get("weights_sha256")
    if want is None or not Path(path).is_file():
        return
    if file_sha256(path) != want:
        load_state_dict(path)  # a file that is no checkpoint at all says so first
        raise RuntimeError(
            f"{path} and {Path(path).with_suffix('.json')} are not from the same save (weights "
            "SHA-256 differs from the sidecar's): a writer was interrupted, or one file was replaced; "
            "re-export the model"
        )


def load_state_dict(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """Open a plain tensor checkpoint with ``weights_only=True``; a clear error names the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt file or pickled objects
        raise RuntimeError(f"{what} {path} is not a readable plain-tensor checkpoint: {e}") from e
    if not isinstance(obj, dict):
        raise RuntimeError(f"{what} {path} holds a {type(obj).__name__}, not a state_dict")
    return obj


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON sidecar of a checkpoint (``model.pt`` -> ``model.json``)."""
    side = Path(path).with_suffix(".json")
    if not side.is_file():
        raise FileNotFoundError(f"checkpoint sidecar {side} not found (it must sit next to {path})")
    try:
        with open(side, encoding="utf-8") as fh:
            sidecar = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint sidecar {side} is not valid JSON: {e}") from e
    if not isinstance(sidecar, dict):
        raise ValueError(f"checkpoint sidecar {side} holds a {type(sidecar).__name__}, not an object")
    want = sidecar.pop("content_sha256", None)
    if want is not None:
        got = _content_hashes(sidecar)
        changed = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        if changed:
            how = ", ".join(
                f"{k} ({'added' if k not in want else 'removed' if k not in got else 'changed'})" for k in changed
            )
            raise ValueError(
                f"checkpoint sidecar {side} was edited after it was written: {how}. It describes how the weights "
                "were trained (class order, spacing, intensities); an edited one reads scans wrongly. Restore it, "
                "or train/export again"
            )
    return sidecar


def load_pretrain_network(path: str | os.PathLike):
    """Rebuild the :class:`MosmosPretrainNet` saved at ``path`` (state_dict + sidecar) with every weight loaded."""
    from mosmos_components.networks.mosmos_clip import MosmosPretrainNet

    cfg = read_sidecar(path)
    _check_pair(path, cfg)
    try:
        net = MosmosPretrainNet.from_config(cfg, checkpoint_assets(path, cfg))
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: sidecar does not describe a MOSMOS pre-training network: {e}") from e
    load_weights(net, path, "pre-trained MOSMOS checkpoint")
    return net


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(a)))
    return a == b


def check_expectations(path: str | os.PathLike, cfg: dict[str, Any], expect: dict[str, Any]) -> None:
    """The checkpoint's sidecar must agree with what the bundle expects (class names, channels; under ``"data"``
    the data settings it was trained with: spacing, intensity range, modality). A key the sidecar lacks (older
    checkpoints) is not checked; a difference is an error naming both values."""
    diffs = []
    for key, want in expect.items():
        if key == "data" and isinstance(want, dict):
            have = cfg.get("data", {})
            diffs += [
                f"data.{k}: checkpoint {have[k]!r}, bundle {v!r}"
                for k, v in want.items()
                if k in have and not _same(have[k], v)
            ]
        elif key in cfg and cfg[key] is not None and not _same(cfg[key], want):
            diffs.append(f"{key}: checkpoint {cfg[key]!r}, bundle {want!r}")
    if diffs:
        raise ValueError(
            f"{path} was trained for other data than this bundle's: "
            + "; ".join(diffs)
            + " (use the bundle the model was trained with, or a model trained for this one)"
        )


def load_segmentation_network(path: str | os.PathLike, expect: dict[str, Any] | None = None) -> torch.nn.Module:
    """Rebuild the fine-tuned segmentation network saved at ``path`` (the registered network its sidecar names:
    :data:`~mosmos_components.networks.base.SEGMENTATION_NETWORKS`) with every weight loaded, class embeddings
    included: no config and no text encoder needed.
    ``expect``: what the caller's bundle needs (:func:`check_expectations`), checked before anything is built."""
    import inspect

    from mosmos_components import networks  # noqa: F401 - importing the networks registers them
    from mosmos_components.networks.base import SEGMENTATION_NETWORKS

    cfg = read_sidecar(path)
    _check_pair(path, cfg)
    if expect:
        check_expectations(path, cfg, expect)
    name = cfg.get("network")
    if cfg.get("format") != "mosmos-seg/1" or name not in SEGMENTATION_NETWORKS:
        raise ValueError(
            f"{path}: sidecar does not describe a MOSMOS segmentation network (network={name!r}; "
            f"known: {sorted(SEGMENTATION_NETWORKS)})"
        )
    cls = SEGMENTATION_NETWORKS[name]
    params = inspect.signature(cls).parameters
    net = cls(**{k: v for k, v in cfg.items() if k in params})
    return load_weights(net, path, "segmentation checkpoint").eval()


def is_2d_network(cfg: dict[str, Any]) -> bool:
    """Whether a segmentation sidecar describes a 2D network (slice-by-slice inference); sidecars written before
    0.5 say it only by the network's name."""
    return int(cfg.get("spatial_dims", 2 if cfg.get("network") == "MosmosUNet2D" else 3)) == 2


def load_weights(network: torch.nn.Module, path: str | os.PathLike, what: str = "model checkpoint") -> torch.nn.Module:
    """Load the plain state_dict at ``path`` into ``network`` (every key must match); returns ``network``."""
    state = load_state_dict(path, what)
    try:
        missing, unexpected = network.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise RuntimeError(
            f"{what} {path} does not fit {type(network).__name__}{_config_hint(network, path)}: {e}"
        ) from e
    if missing or unexpected:
        raise RuntimeError(
            f"{what} {path} does not fit {type(network).__name__}{_config_hint(network, path)}: missing {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    return network


def _config_hint(network: torch.nn.Module, path: str | os.PathLike) -> str:
    """Where the checkpoint's sidecar and the network's own config differ (the overrides to set), if both exist."""
    if not hasattr(network, "config") or not Path(path).with_suffix(".json").is_file():
        return ""
    try:
        side, mine = read_sidecar(path), network.config()
    except (ValueError, OSError):
        return ""
    diffs = [
        f"{k}={side[k]!r} (checkpoint) vs {mine[k]!r}"
        for k in mine
        if k in side and k != "class_names" and side[k] != mine[k]
    ]
    return f" (its {Path(path).with_suffix('.json').name} differs: {'; '.join(diffs)})" if diffs else ""
