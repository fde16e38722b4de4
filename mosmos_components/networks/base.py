"""What every MOSMOS segmentation network shares, and the registry that rebuilds one from its sidecar.

A segmentation network subclasses :class:`SegmentationNetMixin` (before ``nn.Module``): that registers it by class
name in :data:`SEGMENTATION_NETWORKS`, which :func:`mosmos_components.checkpoint.load_segmentation_network` reads,
and records its constructor arguments for the checkpoint sidecar (:meth:`SegmentationNetMixin.config`). It sets
``self.pta`` (a :class:`~mosmos_components.networks.pta.PixelTagAttention` or ``None``) and ``self.flip_dims``.
"""

from __future__ import annotations

import functools
import inspect

import torch

__all__ = ["SEGMENTATION_NETWORKS", "SegmentationNetMixin"]

SEGMENTATION_NETWORKS: dict[str, type] = {}


def _json_value(v):
    return list(v) if isinstance(v, (tuple, list)) else v


class SegmentationNetMixin:
    """The sidecar config, the registry entry and the in-plane radiological flip of a segmentation network."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        SEGMENTATION_NETWORKS[cls.__name__] = cls
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            init(self, *args, **kw)
            bound = signature.bind(self, *args, **kw)
            bound.apply_defaults()
            # the most derived class's arguments win (its __init__ returns last)
            self._config = {k: _json_value(v) for k, v in list(bound.arguments.items())[1:]}

        cls.__init__ = recording_init

    def config(self) -> dict:
        """The constructor arguments (as JSON values), the format tag, the class name and the class names."""
        cfg = dict(self._config, format="mosmos-seg/1", network=type(self).__name__)
        if self.pta is not None:
            cfg["class_names"] = self.pta.class_names
        return cfg

    def _flip(self, t: torch.Tensor) -> torch.Tensor:
        return t.flip(self.flip_dims) if self.flip_dims else t
