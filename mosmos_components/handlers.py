"""Ignite handlers MONAI does not have: resumable training checkpoints (random streams included), best-model export
with a sidecar, a run guard (folder lock, no earlier model lost, no training on a non-finite loss) and a final
validation.

Both write atomically (temporary file + rename), so an interrupted run never leaves a half-written file, and
both read back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from mosmos_components.checkpoint import (
    atomic_json_save,
    atomic_text_save,
    atomic_torch_save,
    check_finite,
    load_state_dict,
    save_network,
)
from mosmos_components.distributed import is_rank0

__all__ = [
    "BestModelSaver",
    "TrainingCheckpointer",
    "ProgressBarHandler",
    "MetricsHistory",
    "RunGuard",
    "MLflowTags",
    "FinalValidation",
    "batch_files",
    "rng_state",
    "set_rng_state",
]

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

    def __init__(
        self,
        network: torch.nn.Module,
        path: str,
        metric_name: str = "val_loss",
        mode: str = "min",
        rank0_only: bool = True,
        extra: dict | None = None,
    ) -> None:
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
        save_network(
            self.network,
            self.path,
            extra={
                **self.extra,
                "metric": {self.metric_name: value},
                "metrics": {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))},
                "epoch": engine.state.epoch,
            },
        )
        logger.info("new best %s=%.5f at epoch %d: wrote %s", self.metric_name, value, engine.state.epoch, self.path)


def _random_states(obj, seen: set[int] | None = None) -> list[np.random.RandomState]:
    """Every ``numpy`` random state reachable from ``obj`` (a data set, a transform), in a fixed order: the ``R`` of
    each MONAI ``Randomizable`` found the way ``monai.data.utils.set_rnd`` seeds them (attributes, lists, tuples),
    nested transforms included."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (torch.Tensor, np.ndarray, str, bytes, dict)):
        return []
    seen.add(id(obj))
    if isinstance(obj, (list, tuple)):
        return [r for item in obj for r in _random_states(item, seen)]
    if not hasattr(obj, "__dict__"):
        return []
    out = []
    r = getattr(obj, "R", None)
    if isinstance(r, np.random.RandomState) and id(r) not in seen:
        seen.add(id(r))
        out.append(r)
    for key, value in vars(obj).items():
        if not key.startswith("__") and key != "R":
            out += _random_states(value, seen)
    return out


_TRANSFORM_STATES = ("transform_keys", "transform_pos", "transform_gauss")  # of rng_state: one row per transform


def _mt_to_tensors(state: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``numpy``'s MT19937 state as tensors: the 624 keys, (position, has_gauss), the cached gaussian."""
    _, keys, pos, has_gauss, cached = state
    return (
        torch.as_tensor(np.asarray(keys, dtype=np.int64)),
        torch.tensor([int(pos), int(has_gauss)]),
        torch.tensor(float(cached), dtype=torch.float64),
    )


def _mt_from_tensors(keys: torch.Tensor, pos: torch.Tensor, cached: torch.Tensor) -> tuple:
    return ("MT19937", keys.numpy().astype(np.uint32), int(pos[0]), int(pos[1]), float(cached))


def rng_state(dataset=None) -> dict[str, torch.Tensor]:
    """The random streams a training draws from, as plain tensors: ``torch`` (CPU and, once initialised, CUDA),
    ``numpy``'s and ``random``'s global states, and the random states of ``dataset``'s transforms (they draw in
    the main process when ``num_workers`` is 0; worker processes are seeded from ``torch``'s stream)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    state["numpy_keys"], state["numpy_pos"], state["numpy_gauss"] = _mt_to_tensors(np.random.get_state())
    version, internal, gauss = random.getstate()
    state["python"] = torch.tensor([version, *internal], dtype=torch.int64)
    state["python_gauss"] = torch.tensor(math.nan if gauss is None else gauss, dtype=torch.float64)
    streams = [_mt_to_tensors(r.get_state()) for r in _random_states(dataset)] if dataset is not None else []
    if streams:
        for i, name in enumerate(_TRANSFORM_STATES):
            state[name] = torch.stack([s[i] for s in streams])
    return state


def set_rng_state(state: dict[str, torch.Tensor], dataset=None, source: str = "the checkpoint") -> None:
    """Restore what :func:`rng_state` captured, so that a resumed training draws what the uninterrupted one would
    have drawn. The transforms' states are restored only when ``dataset`` has as many random transforms as when
    they were captured (a warning names ``source`` otherwise: their streams then start afresh)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
    np.random.set_state(_mt_from_tensors(state["numpy_keys"], state["numpy_pos"], state["numpy_gauss"]))
    version, *internal = (int(v) for v in state["python"])
    gauss = float(state["python_gauss"])
    random.setstate((version, tuple(internal), None if math.isnan(gauss) else gauss))
    if dataset is None:
        return
    streams = _random_states(dataset)
    saved = len(state[_TRANSFORM_STATES[0]]) if _TRANSFORM_STATES[0] in state else 0
    if saved != len(streams):
        logger.warning(
            "%s holds %d transform random state(s), the data pipeline has %d: its transforms' random streams "
            "start afresh",
            source,
            saved,
            len(streams),
        )
        return
    for i, r in enumerate(streams):
        r.set_state(_mt_from_tensors(*(state[name][i] for name in _TRANSFORM_STATES)))


class TrainingCheckpointer:
    """Resumable training: after every ``save_interval`` epochs, write ``{name: obj.state_dict()}`` for every
    object of ``save_dict`` plus the trainer's epoch/iteration and the random streams (:func:`rng_state`) to
    ``path``; at start, if ``resume`` and the file exists, restore them and continue from the saved epoch.

    With the random streams restored, a resumed training draws the batches, augmentations and dropout of the
    uninterrupted one, to the bit on the same machine when the data loader starts its workers afresh each epoch
    (or has none). Persistent workers (``persistent_workers``) keep their streams in their own processes: a
    resumed run seeds new ones from the restored stream — other draws than the uninterrupted run's, but never a
    replay of its first epochs, which is what a restart from the configuration's seed would give. A checkpoint
    written without random states resumes with the streams the configuration seeded (a log line says so).

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
    def _dataset(engine: Engine):
        return getattr(getattr(engine.state, "dataloader", None), "dataset", None)

    @staticmethod
    def _unwrap(obj):
        return getattr(obj, "module", obj) if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj

    def save(self, engine: Engine) -> None:
        if not is_rank0():
            return
        state = {k: self._unwrap(v).state_dict() for k, v in self.save_dict.items()}
        if "network" in state:
            check_finite(state["network"], self.path)
        state["trainer"] = {
            "epoch": torch.tensor(engine.state.epoch),
            "iteration": torch.tensor(engine.state.iteration),
            "max_epochs": torch.tensor(engine.state.max_epochs),
        }
        state["rng"] = rng_state(self._dataset(engine))
        atomic_torch_save(state, self.path)
        atomic_json_save(
            {"epoch": engine.state.epoch, "iteration": engine.state.iteration, "max_epochs": engine.state.max_epochs},
            self.path.with_suffix(".json"),
        )

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
        planned = int(state["trainer"].get("max_epochs", engine.state.max_epochs))
        schedules = [k for k, v in self.save_dict.items() if isinstance(v, torch.optim.lr_scheduler.LRScheduler)]
        if planned != engine.state.max_epochs and schedules:
            logger.warning(
                "%s was written by a run of max_epochs=%d, this one has %d: the learning-rate schedule restored "
                "from it ('%s') keeps the length it was planned for (train afresh for a schedule of %d epochs)",
                self.path,
                planned,
                engine.state.max_epochs,
                schedules[0],
                engine.state.max_epochs,
            )
        if "rng" in state:
            set_rng_state(state["rng"], self._dataset(engine), source=os.fspath(self.path))
        else:
            logger.info("%s holds no random states: the resumed run draws from the configuration's seed", self.path)
        for obj in self.save_dict.values():  # a best model recorded but gone: never rc 0 without it
            if isinstance(obj, BestModelSaver) and math.isfinite(obj.best) and not obj.path.is_file():
                raise FileNotFoundError(
                    f"{obj.path} is missing, yet {self.path} (epoch {engine.state.epoch} of "
                    f"{engine.state.max_epochs}) records a best model with {obj.metric_name}={obj.best:.5f}: the "
                    "training checkpoint holds the last epoch's weights, not the best ones. Put the file back, or "
                    f"train afresh (delete {self.path.name} or set resume false)"
                )
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
    file, so curves can be drawn without a tracking server, with ``epoch_s``: the epoch's wall time in seconds (for a
    trainer, with the validation and checkpoint handlers attached before this one). Rows are appended: a resumed run
    continues the file, so its epoch times add up to the whole training's. Each row is written under the file's own
    header; a metric the file has no column for yet adds one (the file rewritten atomically, earlier rows blank
    there), so a run that reports other metrics than the one before it never shifts values into wrong columns.

    Rows of epochs after the one a run starts from (0 afresh, the checkpoint's epoch when resumed; for an evaluator
    the trainer's epoch before the one it validates) are an earlier run's, whose training went on past that point
    and was lost — a folder whose weights are gone trained again, a run stopped between its validation and its
    checkpoint: at start they leave the file, which is first copied whole into ``previous-<time>/`` beside it, so
    each epoch has one row, of the run that made the weights. Attach it after the handler that resumes the trainer.
    """

    def __init__(self, path: str, rank0_only: bool = True) -> None:
        self.path, self.rank0_only = Path(path), rank0_only
        self._started: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._drop_later_epochs)
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _drop_later_epochs(self, engine: Engine) -> None:
        import shutil

        if (self.rank0_only and not is_rank0()) or not self.path.is_file():
            return
        header, rows = self._read()
        start = int(engine.state.epoch)
        keep = [r for r in rows if not (r and r[0].strip().isdigit() and int(r[0]) > start)]
        if len(keep) == len(rows):
            return
        dest = _aside(self.path.parent)
        shutil.copy2(self.path, dest / self.path.name)
        atomic_text_save(_csv_text([header, *keep]), self.path)
        logger.warning(
            "%s: %d row(s) of epochs after %d, where this run starts, were an earlier run's: removed (the file as "
            "it was is in %s)",
            self.path,
            len(rows) - len(keep),
            start,
            dest,
        )

    def _start(self, engine: Engine) -> None:
        self._started = time.perf_counter()

    def _read(self) -> tuple[list[str], list[list[str]]]:
        """The file's header and rows."""
        with open(self.path, encoding="utf-8", newline="") as fh:
            header, *rows = list(csv.reader(fh)) or [[]]
        return header, rows

    def __call__(self, engine: Engine) -> None:
        if self.rank0_only and not is_rank0():
            return
        row = {"epoch": str(engine.state.epoch)}
        metrics = sorted(engine.state.metrics.items())
        row.update((k, f"{float(v):.6g}") for k, v in metrics if isinstance(v, (int, float)))
        if self._started is not None:
            row["epoch_s"] = f"{time.perf_counter() - self._started:.3f}"
        header, rows = self._read() if self.path.is_file() else ([], [])
        columns = header + [k for k in row if k not in header]
        line = [row.get(k, "") for k in columns]
        if columns == header:
            with open(self.path, "a", encoding="utf-8", newline="") as fh:
                fh.write(_csv_text([line]))
        else:  # a new file, or new metrics: the whole file under the wider header
            padded = [r + [""] * (len(columns) - len(r)) for r in rows]
            atomic_text_save(_csv_text([columns, *padded, line]), self.path)


_STAMP = "%Y%m%d-%H%M%S"  # the time in the name of a folder of an earlier run's files


def _aside(folder: Path, stamp: str | None = None) -> Path:
    """The folder ``previous-<stamp>/`` in ``folder`` (made if need be; the stamp the time by default), where an
    earlier run's files are kept."""
    dest = folder / f"previous-{stamp or time.strftime(_STAMP)}"
    dest.mkdir(exist_ok=True)
    return dest


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


class MLflowTags:
    """Tags for the run's MLflow record (e.g. what the network was initialised from and the weights' SHA-256),
    written once the bundle's ``MLFlowHandler`` has opened its run (after the first epoch); nothing without one.

    Args:
        tags: a flat or nested dict; nested keys are joined with ``.`` (``initialisation.weights_sha256``).
    """

    def __init__(self, tags: dict) -> None:
        self.tags = dict(_flat(tags))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(once=1), self)

    def __call__(self, engine: Engine) -> None:
        from monai.handlers import MLFlowHandler

        for handlers in engine._event_handlers.values():
            for fn, *_ in handlers:
                owner = getattr(fn, "__self__", None)
                if isinstance(owner, MLFlowHandler) and getattr(owner, "cur_run", None) is not None:
                    for k, v in self.tags.items():
                        owner.client.set_tag(owner.cur_run.info.run_id, k, str(v))
                    return


def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


class RunGuard:
    """Attached first to a trainer: one run per folder, no earlier model lost, no leftovers, no NaN training.

    * **Lock.** At start it takes an exclusive lock on ``.mosmos.lock`` in each of ``folders`` (the checkpoint and
      output folders): a second run into the same folders stops, naming the PID that holds them. The lock is the
      operating system's (``flock``): it goes with the process, so a killed run leaves no stale lock.
    * **Leftovers.** Temporary files a killed writer left (``.NAME.*.tmp``, see
      :mod:`mosmos_components.checkpoint`) are removed, saying so.
    * **Earlier models.** A fresh run (nothing to resume: ``resume`` off or no ``checkpoint``) into a folder that
      holds ``model`` stops unless ``overwrite``; with ``overwrite`` the earlier run's files are moved aside into
      ``previous-<time>/`` in that folder, and the log says where. Resuming a run is not a fresh run.
    * **Non-finite loss.** After each iteration a NaN/Inf loss stops training with the batch's files named, before
      a checkpoint or a best model can be written from the poisoned weights.

    Args:
        folders: the run's folders (``ckpt_dir``, ``output_dir``).
        model: the best-model file of this run (``models/model.pt``).
        checkpoint: the training checkpoint this run would resume from.
        resume: whether the run resumes from ``checkpoint`` when it exists.
        overwrite: replace an earlier run's model (moved aside, not deleted).
    """

    LOCK = ".mosmos.lock"

    def __init__(self, folders, model: str, checkpoint: str, resume: bool = True, overwrite: bool = False) -> None:
        self.folders = [Path(f) for f in dict.fromkeys(str(f) for f in folders)]
        self.model, self.checkpoint = Path(model), Path(checkpoint)
        self.resume, self.overwrite = resume, overwrite
        self._locks: list = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.check_loss)
        engine.add_event_handler(Events.COMPLETED, self.release)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._release_and_raise)

    def start(self, engine: Engine) -> None:
        if not is_rank0():
            return
        for folder in self.folders:
            self._lock(folder)
        for folder in self.folders:
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
                logger.warning("removed %s, left by an interrupted write", tmp)
        fresh = not (self.resume and self.checkpoint.is_file())
        if fresh and self.model.is_file():
            if not self.overwrite:
                raise FileExistsError(
                    f"{self.model} holds the model of an earlier run and this run starts afresh (no checkpoint to "
                    "resume from, or resume off): set overwrite to true to move the earlier files aside, or give "
                    "another ckpt_dir"
                )
            self._move_aside()

    def _lock(self, folder: Path) -> None:
        import fcntl

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.LOCK
        fh = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise RuntimeError(
                f"{folder} is in use by another run (PID {holder}); wait for it, or give this run "
                "other folders (ckpt_dir, output_dir)"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._locks.append(fh)

    def _move_aside(self) -> None:
        stamp = time.strftime(_STAMP)  # one for all the run's folders
        for folder in self.folders:
            old = [p for p in folder.iterdir() if p.name != self.LOCK and not p.name.startswith("previous-")]
            if not old:
                continue
            dest = _aside(folder, stamp)
            for p in old:
                p.replace(dest / p.name)
            logger.warning(
                "overwrite: the earlier run's %d file(s)/folder(s) in %s moved to %s", len(old), folder, dest
            )

    def check_loss(self, engine: Engine) -> None:
        from monai.handlers import from_engine

        loss = from_engine(["loss"], first=True)(engine.state.output)
        loss = float(loss[0] if isinstance(loss, (list, tuple)) else loss)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss}) at epoch {engine.state.epoch}, iteration "
                f"{engine.state.iteration}; batch files: "
                f"{', '.join(batch_files(engine.state.batch))}"
                "; no checkpoint or model was written from this step"
            )

    def release(self, engine: Engine | None = None) -> None:
        import fcntl

        for fh in self._locks:
            try:
                fcntl.flock(fh, fcntl.LOCK_UN)
            finally:
                fh.close()
        self._locks = []

    def _release_and_raise(self, engine: Engine, e: BaseException) -> None:
        self.release()
        raise e


def batch_files(batch) -> list[str]:
    """The source file names of a (collated or decollated) batch, for error messages."""
    items = batch if isinstance(batch, (list, tuple)) else [batch]
    names = []
    for item in items:
        if not isinstance(item, dict):
            continue
        img = item.get("image")
        meta = getattr(img, "meta", None) or item.get("image_meta_dict") or {}
        src = meta.get("filename_or_obj", item.get("id", "?"))
        names += [str(s) for s in src] if isinstance(src, (list, tuple)) else [str(src)]
    return names or ["<unknown>"]


class FinalValidation:
    """Attached to a trainer: validate after the last epoch when ``interval`` did not (``max_epochs`` below
    ``val_interval``, or not a multiple of it), so a run always ends with a validated, saved best model."""

    def __init__(self, validator, interval: int = 1) -> None:
        self.validator, self.interval = validator, int(interval)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval:
            logger.info(
                "max_epochs=%d is not a multiple of val_interval=%d: validating the last epoch",
                engine.state.max_epochs,
                self.interval,
            )
            self.validator.run(engine.state.epoch)
