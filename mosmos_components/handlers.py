"""Ignite handlers MONAI does not have: resumable training checkpoints and best-model export with a sidecar.

Both write atomically (temporary file + rename), so an interrupted run never leaves a half-written file, and
both read back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from mosmos_components.checkpoint import atomic_json_save, atomic_torch_save, load_state_dict, save_network
from mosmos_components.distributed import is_rank0

__all__ = ["BestModelSaver", "TrainingCheckpointer", "ProgressBarHandler", "MetricsHistory"]

logger = logging.getLogger(__name__)


class BestModelSaver:
    """Attached to an evaluator: when ``metric_name`` improves, write the network's plain state_dict to
    ``path`` and its config (``network.config()``) plus the metric and epoch to ``path`` with ``.json``.

    Args:
        network: the trained network (DDP-wrapped is fine).
        path: e.g. ``models/model.pt``.
        metric_name: a key of ``evaluator.state.metrics``.
        mode: ``"min"`` (losses) or ``"max"`` (Dice).
        rank0_only: write only on rank 0 under torch.distributed.
        extra: more entries for the sidecar (e.g. how the weights were pre-trained).
    """

    def __init__(self, network: torch.nn.Module, path: str, metric_name: str = "val_loss", mode: str = "min",
                 rank0_only: bool = True, extra: dict | None = None) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.network, self.path, self.metric_name, self.mode = network, Path(path), metric_name, mode
        self.extra = dict(extra or {})
        self.rank0_only = rank0_only
        self.best = math.inf if mode == "min" else -math.inf

    def state_dict(self) -> dict:
        return {"best": torch.tensor(self.best, dtype=torch.float64)}

    def load_state_dict(self, state: dict) -> None:
        self.best = float(state["best"])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        value = float(engine.state.metrics[self.metric_name])
        better = value < self.best if self.mode == "min" else value > self.best
        if not better or math.isnan(value):
            return
        self.best = value
        if self.rank0_only and not is_rank0():
            return
        save_network(self.network, self.path,
                     extra={**self.extra, "metric": {self.metric_name: value}, "epoch": engine.state.epoch})
        logger.info("new best %s=%.5f at epoch %d: wrote %s", self.metric_name, value, engine.state.epoch, self.path)


class TrainingCheckpointer:
    """Resumable training: after every ``save_interval`` epochs, write ``{name: obj.state_dict()}`` for every
    object of ``save_dict`` plus the trainer's epoch/iteration to ``path``; at start, if ``resume`` and the file
    exists, restore them and continue from the saved epoch.

    Args:
        path: e.g. ``models/checkpoint.pt``.
        save_dict: objects with ``state_dict``/``load_state_dict`` (network, optimizer, scheduler, a
            :class:`BestModelSaver`).
        resume: continue from ``path`` when it exists.
        save_interval: epochs between saves.
    """

    def __init__(self, path: str, save_dict: dict, resume: bool = True, save_interval: int = 1) -> None:
        self.path, self.save_dict, self.resume, self.save_interval = Path(path), save_dict, resume, save_interval

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)

    @staticmethod
    def _unwrap(obj):
        return getattr(obj, "module", obj) if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj

    def save(self, engine: Engine) -> None:
        if not is_rank0():
            return
        state = {k: self._unwrap(v).state_dict() for k, v in self.save_dict.items()}
        state["trainer"] = {"epoch": torch.tensor(engine.state.epoch), "iteration": torch.tensor(engine.state.iteration)}
        atomic_torch_save(state, self.path)
        atomic_json_save({"epoch": engine.state.epoch, "iteration": engine.state.iteration,
                          "max_epochs": engine.state.max_epochs}, self.path.with_suffix(".json"))

    def load(self, engine: Engine) -> None:
        if not (self.resume and self.path.is_file()):
            return
        state = load_state_dict(self.path, "training checkpoint")
        missing = [k for k in list(self.save_dict) + ["trainer"] if k not in state]
        if missing:
            raise RuntimeError(f"training checkpoint {self.path} lacks {missing}; delete it to start afresh")
        for k, obj in self.save_dict.items():
            try:
                self._unwrap(obj).load_state_dict(state[k])
            except (RuntimeError, ValueError, KeyError) as e:
                raise RuntimeError(f"training checkpoint {self.path}: '{k}' does not fit this run: {e}") from e
        engine.state.epoch = int(state["trainer"]["epoch"])
        engine.state.iteration = int(state["trainer"]["iteration"])
        logger.info("resumed from %s at epoch %d / %d", self.path, engine.state.epoch, engine.state.max_epochs)
        if engine.state.epoch >= engine.state.max_epochs:
            logger.info("%s: training already reached max_epochs=%d", os.fspath(self.path), engine.state.max_epochs)


class ProgressBarHandler:
    """ignite's tqdm ``ProgressBar`` with the running loss, attachable from a bundle config.

    Args:
        enabled: ``False`` attaches nothing (e.g. for CI logs).
        persist: keep each epoch's bar on screen.
        show_loss: show the running loss (training engines).
    """

    def __init__(self, enabled: bool = True, persist: bool = False, show_loss: bool = True) -> None:
        self.enabled, self.persist, self.show_loss = enabled, persist, show_loss

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        from ignite.contrib.handlers import ProgressBar
        from monai.handlers import from_engine

        bar = ProgressBar(persist=self.persist)
        if not self.show_loss:
            bar.attach(engine)
            return
        loss = from_engine(["loss"], first=True)  # works on decollated and batched outputs alike
        bar.attach(engine, output_transform=lambda o: {"loss": float(loss(o))})


class MetricsHistory:
    """Append ``engine.state.metrics`` at the end of every epoch (of a trainer, or of each evaluator run) to a CSV
    file, so curves can be drawn without a tracking server. Rows are appended: a resumed run continues the file."""

    def __init__(self, path: str, rank0_only: bool = True) -> None:
        self.path, self.rank0_only = Path(path), rank0_only

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.rank0_only and not is_rank0():
            return
        metrics = {k: float(v) for k, v in sorted(engine.state.metrics.items()) if isinstance(v, (int, float))}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file()
        with open(self.path, "a", encoding="utf-8") as fh:
            if new:
                fh.write(",".join(["epoch", *metrics]) + "\n")
            fh.write(",".join([str(engine.state.epoch), *(f"{v:.6g}" for v in metrics.values())]) + "\n")
