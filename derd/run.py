"""The one run loop every method shares: epochs, seeded RNG, divergence check, validation,
checkpoint and resume, and the stage-I cache.

``DistillationRun(cfg, experts).epochs()`` yields one dict per epoch: every loss term
(``loss/*``), ``sga/conflict_frac`` where SGA runs, the method's extra metrics, and every
``eval.every`` epochs the configured protocol on the val set (``val/*``: the real val split,
or the synthetic set with ``eval.validation: synthetic``, ``derd.validation``). Between two
epochs a caller may report, ``save()`` or stop; ``DistillationRun.resume()`` continues
exactly.

Host synchronisation: inside an epoch nothing is read on the host. Each iteration's terms
stay on the device; after the epoch one transfer brings back every term of every iteration,
from which the run takes the epoch means and checks divergence, naming the first term that
went non-finite, its stage and its epoch.

All randomness after model initialisation comes from one seeded ``torch.Generator`` on the
run's device, checkpointed with the rest, so a resumed run repeats an uninterrupted one bit
for bit on the same device.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from derd.checkpoints import atomic_save, read_checkpoint_file
from derd.config import RunConfig, from_dict, to_dict
from derd.context import Context, Phase
from derd.data import dataset_info, first_n, make_loader
from derd.device import Compute, resolve_device, synchronize
from derd.errors import UserError
from derd.evaluate import PROTOCOLS, VAL_N, eval_batch_size, evaluate
from derd.experts import Experts
from derd.footprint import check_memory
from derd.methods import get_method
from derd.methods.registry import CORE_METRIC_PREFIXES
from derd.models import create_model
from derd.validation import validation_data

RUN_FORMAT = "derd-run/2"
# the keys of a run checkpoint whose type is checked on reading (``read_state``)
RUN_STATE_SHAPE = {
    "config": dict,
    "epoch": int,
    "phase": int,
    "student": dict,
    "method": dict,
    "rng": torch.Tensor,
    "history": list,
}


class TrainingDiverged(FloatingPointError):
    """A loss became NaN or infinite; the message names the term, stage and epoch."""


def metric_name(term: str) -> str:
    """``loss/<term>``, except names that carry their own prefix (``sga/conflict_frac``)."""
    return term if "/" in term else f"loss/{term}"


class DistillationRun:
    """The state of one run (student, method parts, optimisers, RNG, epoch, history) and its loop."""

    def __init__(
        self,
        cfg: RunConfig,
        experts: Experts,
        *,
        device: torch.device | str | None = None,
        stage1_cache: str | os.PathLike | None = None,
        val_data: torch.utils.data.Dataset | None = None,
    ) -> None:
        self.cfg = cfg
        self.info = dataset_info(cfg.data.dataset, cfg.data.image_size)
        device = resolve_device(cfg.device) if device is None else torch.device(device)
        check_memory(cfg, device)  # before anything is allocated
        t = cfg.train
        self.compute = Compute.from_config(device, t.precision, t.channels_last, t.compile, t.fold_teachers)
        self.device = device
        method_cls = get_method(cfg.method)
        for role in method_cls.teachers:
            if getattr(experts, role) is None:
                raise ValueError(f"method {cfg.method} needs the {role} teacher")
        self.experts = Experts(
            *(
                self.compute.prepare_teacher(m, self.info.image_shape) if m is not None else None
                for m in (experts.natural, experts.robust)
            )
        )
        self.stage1_cache = Path(stage1_cache) if stage1_cache is not None else None
        torch.manual_seed(cfg.seed)
        self.student = self.compute.prepare(self._new_student())
        self.rng = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        self.ctx = Context(
            cfg, self.info, self.compute, self.student, self.experts, self.rng, self._new_student
        )
        self.method = method_cls(self.ctx)
        self.metric_prefixes = CORE_METRIC_PREFIXES + method_cls.metric_prefixes
        self.phases = [p for p in method_cls.phases(cfg) if p.epochs > 0]
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self._phase_index = -1  # the phase whose optimisers are set up
        self._compiled_phases: set[int] = set()  # phases whose first iteration this process has compiled
        if val_data is None:
            val_data = validation_data(cfg, self.info)
        n = PROTOCOLS[cfg.eval.protocol].max_images
        self.val_loader = make_loader(
            first_n(val_data, n), eval_batch_size(cfg.data.val_batch_size, self.info.image_shape, device)
        )

    def _new_student(self) -> torch.nn.Module:
        """An untrained student of the run's architecture (on the CPU, not prepared)."""
        c = self.info.image_shape[0]
        return create_model(
            self.cfg.student.arch,
            self.info.num_classes,
            in_channels=c,
            mean=self.info.mean,
            std=self.info.std,
        )

    # ---- bookkeeping -------------------------------------------------------------------
    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    @functools.cached_property
    def warmup_epochs(self) -> int:
        """Epochs of the cacheable first phase (DERD's stage I), 0 if the method has none."""
        return self.phases[0].epochs if self.phases and self.phases[0].stage == 1 and self._warmup_key else 0

    @functools.cached_property
    def _warmup_key(self) -> dict[str, Any] | None:
        return self.method.warmup_key()

    def phase_at(self, epoch: int) -> tuple[int, Phase]:
        start = 0
        for i, phase in enumerate(self.phases):
            if epoch < start + phase.epochs:
                return i, phase
            start += phase.epochs
        raise IndexError(f"epoch {epoch} is past the run's {self.total_epochs} epochs")

    def enter_phase(self, index: int) -> None:
        """Set up the student's and the method's optimisers for phase ``index`` (once per phase)."""
        if self._phase_index != index:
            self.ctx.trainer.start_phase(self.phases[index])
            self.method.start_phase(self.phases[index])
            self._phase_index = index

    def close(self) -> None:
        """Remove the hooks the method's parts put on the models."""
        self.ctx.close()

    # ---- the loop -----------------------------------------------------------------------
    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch (and validate when it is due); returns its results."""
        index, phase = self.phase_at(self.epoch)
        self.enter_phase(index)
        self.method.start_epoch(phase)
        first_step = (self.epoch - sum(p.epochs for p in self.phases[:index])) * phase.iters_per_epoch
        compiling = (
            self.compute.compile and index not in self._compiled_phases
        )  # this process's first epoch of it
        start = time.time()
        records: dict[str, list[torch.Tensor]] = {}
        for it in range(phase.iters_per_epoch):
            with self.compute.autocast():
                terms = self.method.iteration(phase, first_step + it)
            for k, v in terms.items():
                records.setdefault(k, []).append(v.detach().float().reshape(()))
            if compiling and it == 0:
                synchronize(self.device)
                first = time.time() - start
        means = self._read_terms(records, phase)
        result: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "stage": phase.stage,
            "cached": False,
            "time/epoch_s": time.time() - start,
            **means,
        }
        if compiling:  # the first iteration compiles; the others show what it would have cost compiled
            rest = phase.iters_per_epoch - 1
            result["time/compile_s"] = max(
                0.0, first - ((result["time/epoch_s"] - first) / rest if rest else 0.0)
            )
            self._compiled_phases.add(index)
        result.update(self._declared(self.method.end_epoch(phase, means)))
        self.epoch += 1
        if self.epoch % self.cfg.eval.every == 0 or self.epoch == self.total_epochs:
            start = time.time()
            result.update(self.validate())
            result["time/eval_s"] = time.time() - start
        return result

    def _read_terms(self, records: dict[str, list[torch.Tensor]], phase: Phase) -> dict[str, float]:
        """One host read for the whole epoch: epoch means, and the first non-finite term if any."""
        if not records:
            return {}
        names = list(records)
        values = torch.cat([torch.stack(records[k]) for k in names]).cpu().tolist()
        out, first_bad, offset = {}, None, 0
        for k in names:
            series = values[offset : offset + len(records[k])]
            offset += len(series)
            bad = next((i for i, v in enumerate(series) if not math.isfinite(v)), None)
            if bad is not None and (first_bad is None or bad < first_bad[0]):
                first_bad = (bad, k, series[bad])
            out[metric_name(k)] = sum(series) / len(series)
        self._declared(out)
        if first_bad is not None:
            raise TrainingDiverged(
                f"loss term {first_bad[1]} became {first_bad[2]} in stage {phase.stage}, "
                f"epoch {self.epoch + 1}"
            )
        return out

    def _declared(self, metrics: dict[str, float]) -> dict[str, float]:
        """The method's metrics, each under a prefix it declares (``Method.metric_prefixes``), so that
        no search drops one silently."""
        for name in metrics:
            if not name.startswith(self.metric_prefixes):
                raise ValueError(
                    f"method {self.cfg.method} logs {name!r}, outside its metric prefixes "
                    f"{', '.join(self.metric_prefixes)}: add the prefix to its metric_prefixes"
                )
        return metrics

    def validate(self) -> dict[str, float]:
        """The configured protocol (``search`` by default) on the val set, as ``val/*`` (in fp32),
        with the number of images scored (``val/n_images``: a figure's binomial uncertainty)."""
        metrics = evaluate(
            self.student,
            self.val_loader,
            self.cfg.eval.protocol,
            eps=self.info.eps,
            device=self.device,
            seed=self.cfg.seed,
        )
        return {**{f"val/{k}": v for k, v in metrics.items()}, VAL_N: len(self.val_loader.dataset)}

    def epochs(self) -> Iterator[dict[str, Any]]:
        """Run to the end, yielding each epoch's results (cached stage-I epochs first, marked)."""
        if self.epoch == 0 and self.warmup_epochs > 0 and self._load_stage1_cache():
            yield from self.history
        while self.epoch < self.total_epochs:
            result = self.run_epoch()
            self.history.append(result)
            if self.epoch == self.warmup_epochs and self.warmup_epochs > 0:
                self._save_stage1_cache()
            yield result

    def run(self, callback: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        for result in self.epochs():
            if callback is not None:
                callback(result)
        return self.history

    def sample(self, n: int) -> torch.Tensor | None:
        """n pseudo images of the method's image source, for figures."""
        with torch.no_grad():
            return self.method.sample(n)

    # ---- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        trainer = self.ctx.trainer
        return {
            "format": RUN_FORMAT,
            "config": to_dict(self.cfg),
            "epoch": self.epoch,
            "phase": self._phase_index,
            "student": self.student.state_dict(),
            "student_optimizer": trainer.optimizer.state_dict() if trainer.optimizer is not None else None,
            "student_scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
            "method": self.method.state_dict(),
            "rng": self.rng.get_state(),
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.student.load_state_dict(state["student"])
        self.rng.set_state(state["rng"])
        self.history = list(state["history"])
        self._phase_index = -1
        if state["phase"] >= 0:
            self.enter_phase(state["phase"])
            self.ctx.trainer.optimizer.load_state_dict(state["student_optimizer"])
            self.ctx.trainer.scheduler.load_state_dict(state["student_scheduler"])
        self.method.load_state_dict(state["method"])

    def save(self, path: str | os.PathLike) -> None:
        """Write the whole state atomically (a crash never leaves half a checkpoint)."""
        atomic_save(self.state_dict(), Path(path))

    @staticmethod
    def read_state(path: str | os.PathLike) -> dict[str, Any]:
        """``save()``'s file, refused with the fix if an older version of derd wrote it."""
        fix = "start again with a fresh --out or delete it"
        state = read_checkpoint_file(path, fix=fix)
        if not isinstance(state, dict) or state.get("format") != RUN_FORMAT:
            raise UserError(f"{path} is not a run checkpoint of this version of derd ({RUN_FORMAT}); {fix}")
        for key, kind in RUN_STATE_SHAPE.items():
            if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
                raise UserError(
                    f"{path} is damaged: its {key} is {type(state.get(key)).__name__}, not "
                    f"{kind.__name__}; {fix}"
                )
        return state

    @classmethod
    def resume(
        cls, path: str | os.PathLike | dict[str, Any], experts: Experts, **kwargs: Any
    ) -> "DistillationRun":
        """Rebuild a run from ``save()``'s file (or its ``read_state``) and continue where it stopped."""
        state = path if isinstance(path, dict) else cls.read_state(path)
        run = cls(from_dict(state["config"]), experts, **kwargs)
        run.load_state_dict(state)
        return run

    # ---- the stage-I cache --------------------------------------------------------------
    def stage1_cache_key(self) -> str:
        """Everything the end of the warm-up depends on: the method's warm-up settings and teacher,
        the student, seed, data and compute settings."""
        payload = {
            **self._warmup_key,
            "seed": self.cfg.seed,
            "data": [self.cfg.data.dataset, self.cfg.data.image_size],
            "student": to_dict(self.cfg)["student"],
            "train": {
                k: v for k, v in to_dict(self.cfg)["train"].items() if k != "checkpoint_every_s"
            },  # when, not what
            "device": self.device.type,
            "format": RUN_FORMAT,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]

    def _cache_file(self) -> Path | None:
        if self.stage1_cache is None:
            return None
        return self.stage1_cache / f"stage1-{self.stage1_cache_key()}.pt"

    def _save_stage1_cache(self) -> None:
        path = self._cache_file()
        if path is not None and not path.exists():
            state = self.state_dict()
            state.update(
                phase=-1,
                student_optimizer=None,
                student_scheduler=None,
                config={},
                method={**state["method"], "optimizers": {}},
            )
            atomic_save(state, path)

    def _load_stage1_cache(self) -> bool:
        path = self._cache_file()
        if path is None or not path.is_file():
            return False
        try:
            state = read_checkpoint_file(path)
        except UserError as err:  # a damaged cache entry is trained again, never trusted
            print(f"warning: {err}; training stage I again", file=sys.stderr, flush=True)
            path.unlink(missing_ok=True)
            return False
        self.load_state_dict(state)
        self.history = [{**entry, "cached": True} for entry in self.history]  # another run computed these
        return True
