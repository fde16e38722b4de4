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

__all__ = ["atomic_torch_save", "atomic_json_save", "save_network", "load_state_dict", "read_sidecar",
           "load_pretrain_network", "load_segmentation_network", "load_weights"]


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
    _atomic_write(path, lambda fh: fh.write(json.dumps(obj, indent=4).encode("utf-8")))


def save_network(network: torch.nn.Module, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Write ``network``'s state_dict to ``path`` and ``network.config()`` (+ ``extra``) to its ``.json``."""
    net = getattr(network, "module", network)  # unwrap DistributedDataParallel
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    sidecar = dict(net.config()) if hasattr(net, "config") else {}
    sidecar.update(extra or {})
    atomic_torch_save(state, path)
    atomic_json_save(sidecar, Path(path).with_suffix(".json"))


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
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint sidecar {side} is not valid JSON: {e}") from e


def load_pretrain_network(path: str | os.PathLike):
    """Rebuild the :class:`MosmosPretrainNet` saved at ``path`` (state_dict + sidecar) with every weight loaded."""
    from mosmos_components.networks.mosmos_clip import MosmosPretrainNet

    cfg = read_sidecar(path)
    try:
        net = MosmosPretrainNet.from_config(cfg)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: sidecar does not describe a MOSMOS pre-training network: {e}") from e
    load_weights(net, path, "pre-trained MOSMOS checkpoint")
    return net


def load_segmentation_network(path: str | os.PathLike) -> torch.nn.Module:
    """Rebuild the fine-tuned segmentation network saved at ``path`` (``MosmosUNETR`` or ``MosmosUNet2D``, as its
    sidecar says) with every weight loaded, class embeddings included: no config and no text encoder needed."""
    import inspect

    from mosmos_components import networks

    cfg = read_sidecar(path)
    name = cfg.get("network")
    if cfg.get("format") != "mosmos-seg/1" or name not in ("MosmosUNETR", "MosmosUNet2D"):
        raise ValueError(f"{path}: sidecar does not describe a MOSMOS segmentation network (network={name!r})")
    cls = getattr(networks, name)
    params = inspect.signature(cls).parameters
    net = cls(**{k: v for k, v in cfg.items() if k in params})
    return load_weights(net, path, "segmentation checkpoint").eval()


def load_weights(network: torch.nn.Module, path: str | os.PathLike, what: str = "model checkpoint") -> torch.nn.Module:
    """Load the plain state_dict at ``path`` into ``network`` (every key must match); returns ``network``."""
    state = load_state_dict(path, what)
    try:
        missing, unexpected = network.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise RuntimeError(f"{what} {path} does not fit {type(network).__name__}{_config_hint(network, path)}: "
                           f"{e}") from e
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
    diffs = [f"{k}={side[k]!r} (checkpoint) vs {mine[k]!r}" for k in mine
             if k in side and k != "class_names" and side[k] != mine[k]]
    return f" (its {Path(path).with_suffix('.json').name} differs: {'; '.join(diffs)})" if diffs else ""
