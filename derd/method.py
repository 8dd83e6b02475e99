"""DERD's two stages, SGA and the variants, as a resumable run that yields per-epoch results.

``DERDRun(cfg, experts).epochs()`` yields one dict per epoch: every loss term (``loss/*``),
the fraction of conflicting gradient tensors (``sga/conflict_frac``), and every
``eval.every`` epochs the ``search`` protocol on the val split (``val/*``). Between two
epochs a caller may report, ``save()`` or stop; ``DERDRun.resume()`` continues exactly.

All randomness after model initialisation (noise, PGD starts, SGA's choices) comes from
one seeded ``torch.Generator`` whose state is checkpointed, so a resumed run repeats an
uninterrupted one bit for bit on the same device.

Variants (``variant``):
* ``derd``: generator-based, stage I then stage II (default);
* ``derd_inv``: no generator; each batch is optimised from noise (model inversion), then
  the stage-II student step; single stage (``stage1.epochs`` is ignored);
* ``derd_no_nat``: no natural teacher; stage I uses T_rob, stage II a frozen copy of the
  student (refreshed each epoch) stands in for T_nat. The generator's data-prior terms
  (L_oh, L_ie, L_bn) keep using T_rob, because the student holds no real-data BN statistics;
* ``nature``: plain data-free distillation from T_nat (robust parts off): the undefended baseline.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from derd import losses
from derd.attacks import eval_mode, pgd
from derd.config import RunConfig, Stage1Config, from_dict, to_dict
from derd.data import dataset_info, first_n, load_split, make_loader
from derd.evaluate import PROTOCOLS, evaluate
from derd.models import Generator, create_model
from derd.teachers import atomic_save

RUN_FORMAT = "derd-run/1"


class TrainingDiverged(FloatingPointError):
    """A loss became NaN or infinite; the message names the term, epoch and stage."""


@dataclass
class Experts:
    """The two pretrained teachers (frozen, eval mode). ``natural`` may be None for derd_no_nat."""

    natural: nn.Module | None
    robust: nn.Module

    def to(self, device: torch.device) -> "Experts":
        return Experts(self.natural.to(device) if self.natural is not None else None, self.robust.to(device))


def load_experts(cfg: RunConfig, progress: bool = True) -> Experts:
    """Load the teachers the config names; on digits, unnamed teachers are trained and cached."""
    from derd.errors import UserError
    from derd.teachers import digits_teachers, load_checkpoint

    info = dataset_info(cfg.data.dataset, cfg.data.image_size)
    t = cfg.teachers
    need_natural = cfg.variant != "derd_no_nat"
    if info.name == "digits" and (t.robust is None or (need_natural and t.natural is None)):
        pair = digits_teachers(progress=progress)
        natural = pair["natural"][0] if t.natural is None else load_checkpoint(t.natural, info, arch=t.natural_arch)[0]
        robust = pair["robust"][0] if t.robust is None else load_checkpoint(t.robust, info, arch=t.robust_arch)[0]
    else:
        if t.robust is None or (need_natural and t.natural is None):
            raise UserError(
                f"{info.name} needs teacher checkpoints: pass --teacher-natural and --teacher-robust to the search "
                f"(teachers.natural / teachers.robust in a run config); train them with "
                f"python -m derd.teachers --dataset {info.name} --kind natural|robust"
            )
        natural = load_checkpoint(t.natural, info, arch=t.natural_arch)[0] if need_natural else None
        robust = load_checkpoint(t.robust, info, arch=t.robust_arch)[0]
    for m in (natural, robust):
        if m is not None:
            m.eval().requires_grad_(False)
    return Experts(natural, robust)


def sga(
    g_nat: Sequence[torch.Tensor], g_rob: Sequence[torch.Tensor], generator: torch.Generator
) -> tuple[list[torch.Tensor], float]:
    """Stochastic gradient aggregation of the two experts' gradients, per parameter tensor.

    Where <g_nat, g_rob> < 0, one of the two (chosen at random) loses its component along
    the other; then the two are summed. Returns (aggregated gradients, conflicting fraction).
    """
    out, conflicts = [], 0
    picks = torch.rand(len(g_nat), generator=generator)
    for a, b, pick in zip(g_nat, g_rob, picks):
        dot = (a * b).sum()
        if dot < 0:
            conflicts += 1
            if pick < 0.5:
                a = a - dot / (b.pow(2).sum() + 1e-20) * b
            else:
                b = b - dot / (a.pow(2).sum() + 1e-20) * a
        out.append(a + b)
    return out, conflicts / max(1, len(out))


def module_fingerprint(model: nn.Module) -> str:
    """A hash of a model's weights and buffers (part of the stage-I cache key)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def stage1_cache_key(cfg: RunConfig, experts: Experts) -> str:
    """Everything the end-of-stage-I state depends on: stage-I settings, student, teachers, seed, data."""
    stage1_teacher = experts.robust if cfg.variant == "derd_no_nat" else experts.natural
    payload = {
        "teacher_role": "robust" if cfg.variant == "derd_no_nat" else "natural",
        "teacher": module_fingerprint(stage1_teacher),
        "seed": cfg.seed,
        "data": [cfg.data.dataset, cfg.data.image_size],
        "student": to_dict(cfg)["student"],
        "stage1": to_dict(cfg)["stage1"],
        "format": RUN_FORMAT,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class DERDRun:
    """The state of one DERD run (models, optimisers, schedules, RNG, epoch) and its loop."""

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
        self.device = resolve_device(cfg.device) if device is None else torch.device(device)
        if cfg.variant != "derd_no_nat" and experts.natural is None:
            raise ValueError(f"variant {cfg.variant} needs a natural teacher")
        self.experts = experts.to(self.device)
        self.stage1_cache = Path(stage1_cache) if stage1_cache is not None else None
        torch.manual_seed(cfg.seed)
        c, h, w = self.info.image_shape
        self.student = create_model(cfg.student.arch, self.info.num_classes, in_channels=c,
                                    mean=self.info.mean, std=self.info.std).to(self.device)
        self.generator: Generator | None = None
        if cfg.variant != "derd_inv":
            self.generator = Generator(self.info.image_shape, cfg.student.latent_dim, cfg.student.generator_width).to(self.device)
        self.frozen_student: nn.Module | None = None
        self.rng = torch.Generator().manual_seed(cfg.seed + 1)
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self._opt_stage = 0
        self._bn: dict[int, losses.BatchNormStatistics] = {}
        if val_data is None:
            val_data = load_split(self.info.name, "val", cfg.data.root, image_size=cfg.data.image_size)
        n = PROTOCOLS[cfg.eval.protocol].max_images
        self.val_loader = make_loader(first_n(val_data, n), cfg.data.val_batch_size)

    # ---- bookkeeping -------------------------------------------------------------------
    @property
    def stage1_epochs(self) -> int:
        return 0 if self.cfg.variant == "derd_inv" else self.cfg.stage1.epochs

    @property
    def total_epochs(self) -> int:
        return self.stage1_epochs + self.cfg.stage2.epochs

    def stage_of(self, epoch: int) -> int:
        return 1 if epoch < self.stage1_epochs else 2

    def _prior_teacher(self) -> nn.Module:
        """Teacher behind L_oh, L_ie, L_bn."""
        return self.experts.robust if self.cfg.variant == "derd_no_nat" else self.experts.natural

    def _natural_expert(self, stage: int) -> nn.Module:
        """Who the student follows on clean pseudo images (and G's data-level adversary)."""
        if self.cfg.variant == "derd_no_nat":
            return self.experts.robust if stage == 1 else self.frozen_student
        return self.experts.natural

    def _bn_stats(self, teacher: nn.Module) -> losses.BatchNormStatistics:
        if id(teacher) not in self._bn:
            self._bn[id(teacher)] = losses.BatchNormStatistics(teacher)
        return self._bn[id(teacher)]

    def close(self) -> None:
        """Remove the BN hooks from the teachers."""
        for hooks in self._bn.values():
            hooks.remove()
        self._bn = {}

    def _setup_optimizers(self, stage: int) -> None:
        if self._opt_stage == stage:
            return
        sc = self.cfg.stage1 if stage == 1 else self.cfg.stage2
        self.optimizers = {"student": torch.optim.SGD(self.student.parameters(), lr=sc.lr_s, momentum=0.9, weight_decay=5e-4)}
        n_epochs = sc.epochs
        self.schedulers = {"student": torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizers["student"], max(1, n_epochs * sc.iters_per_epoch))}
        if self.generator is not None:
            self.optimizers["generator"] = torch.optim.Adam(self.generator.parameters(), lr=sc.lr_g, betas=(0.5, 0.999))
        self._opt_stage = stage

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.student.latent_dim, generator=self.rng).to(self.device)

    # ---- the two stages ----------------------------------------------------------------
    def _generator_step(self, stage: int, adv_weight: float) -> dict[str, float]:
        """One step of G on L_oh + adv_weight*L_adv + lambda_ie*L_ie + lambda_bn*L_bn + lambda_d*L_d."""
        w = self.cfg.stage1
        sc = self.cfg.stage1 if stage == 1 else self.cfg.stage2
        prior, nat = self._prior_teacher(), self._natural_expert(stage)
        bn = self._bn_stats(prior)
        z = self._noise(sc.batch_size)
        self.generator.train()
        x = self.generator(z)
        bn.clear()
        t_prior = prior(x)
        l_bn = bn.loss()
        with eval_mode(self.student):
            s = self.student(x)
        t_nat = t_prior if nat is prior else nat(x)
        terms = {
            "oh": losses.one_hot_loss(t_prior),
            "adv": losses.adversarial_loss(t_nat, s, sc.tau),
            "ie": losses.information_entropy_loss(t_prior),
            "bn": l_bn,
            "d": losses.diversity_loss(z, x),
        }
        total = terms["oh"] + adv_weight * terms["adv"] + w.lambda_ie * terms["ie"] + w.lambda_bn * terms["bn"] + w.lambda_d * terms["d"]
        opt = self.optimizers["generator"]
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        self.student.zero_grad(set_to_none=True)
        return {**{k: v.item() for k, v in terms.items()}, "G": total.item()}

    def _pseudo_batch(self, n: int) -> torch.Tensor:
        with torch.no_grad():
            return self.generator(self._noise(n))

    def _natural_student_step(self, x: torch.Tensor, teacher: nn.Module, tau: float) -> dict[str, float]:
        with torch.no_grad():
            target = teacher(x)
        self.student.train()
        loss = losses.kl_divergence(target, self.student(x), tau)
        opt = self.optimizers["student"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.schedulers["student"].step()
        return {"kd": loss.item()}

    def _robust_student_step(self, x: torch.Tensor) -> dict[str, float]:
        """Stage II's student step: PGD against S, then SGA(g_nat, g_rob) + lambda_sga * grad L_cons."""
        sc = self.cfg.stage2
        nat = self._natural_expert(2)
        with torch.no_grad():
            t_nat, t_rob = nat(x), self.experts.robust(x)
        eps = self.info.eps
        x_adv = pgd(self.student, x, t_rob, eps=eps, steps=sc.pgd_steps, step_size=eps / 4,
                    start="uniform", loss_fn=losses.kl_attack_loss(sc.tau), generator=self.rng)
        self.student.train()
        s_clean, s_adv = self.student(x), self.student(x_adv)
        l_nat = losses.kl_divergence(t_nat, s_clean, sc.tau)
        l_rob = losses.kl_divergence(t_rob, s_adv, sc.tau)
        l_cons = losses.consistency_loss(s_clean, s_adv, sc.tau)
        params = [p for p in self.student.parameters() if p.requires_grad]
        g_nat = torch.autograd.grad(sc.lambda_nat * l_nat, params, retain_graph=True)
        g_rob = torch.autograd.grad(l_rob, params, retain_graph=True)
        g_cons = torch.autograd.grad(l_cons, params)
        g_sum, conflict = sga(g_nat, g_rob, self.rng)
        for p, g, gc in zip(params, g_sum, g_cons):
            p.grad = g + sc.lambda_sga * gc
        self.optimizers["student"].step()
        self.schedulers["student"].step()
        return {"nat": l_nat.item(), "rob": l_rob.item(), "cons": l_cons.item(), "conflict_frac": conflict}

    def _inverted_batch(self) -> tuple[torch.Tensor, dict[str, float]]:
        """derd_inv: optimise a pseudo batch from noise with L_oh + adv + bn + ie (stage-I weights)."""
        w, sc = self.cfg.stage1, self.cfg.stage2
        teacher = self.experts.natural
        bn = self._bn_stats(teacher)
        logits = torch.randn(sc.batch_size, *self.info.image_shape, generator=self.rng).to(self.device).requires_grad_(True)
        opt = torch.optim.Adam([logits], lr=sc.inversion_lr)
        with eval_mode(self.student):
            for _ in range(sc.inversion_steps):
                x = torch.sigmoid(logits)
                bn.clear()
                t = teacher(x)
                terms = {"oh": losses.one_hot_loss(t), "adv": losses.adversarial_loss(t, self.student(x), w.tau),
                         "ie": losses.information_entropy_loss(t), "bn": bn.loss()}
                total = terms["oh"] + w.lambda_adv * terms["adv"] + w.lambda_bn * terms["bn"] + w.lambda_ie * terms["ie"]
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
        self.student.zero_grad(set_to_none=True)
        return torch.sigmoid(logits).detach(), {**{k: v.item() for k, v in terms.items()}, "G": total.item()}

    def _iteration(self, stage: int) -> dict[str, float]:
        v = self.cfg.variant
        if v == "derd_inv":
            x, gterms = self._inverted_batch()
            return {**gterms, **self._robust_student_step(x)}
        if stage == 1:
            sc: Stage1Config = self.cfg.stage1
            out = self._generator_step(1, sc.lambda_adv)
            for _ in range(sc.student_steps):
                out.update(self._natural_student_step(self._pseudo_batch(sc.batch_size), self._natural_expert(1), sc.tau))
            return out
        out = self._generator_step(2, self.cfg.stage2.lambda_gen)
        x = self._pseudo_batch(self.cfg.stage2.batch_size)
        if v == "nature":
            out.update(self._natural_student_step(x, self.experts.natural, self.cfg.stage2.tau))
        else:
            out.update(self._robust_student_step(x))
        return out

    def _run_epoch(self) -> dict[str, Any]:
        stage = self.stage_of(self.epoch)
        self._setup_optimizers(stage)
        if self.cfg.variant == "derd_no_nat" and stage == 2:
            self.frozen_student = copy.deepcopy(self.student).eval().requires_grad_(False)
        sc = self.cfg.stage1 if stage == 1 else self.cfg.stage2
        start = time.time()
        sums: dict[str, float] = {}
        for _ in range(sc.iters_per_epoch):
            for k, val in self._iteration(stage).items():
                if not math.isfinite(val):
                    raise TrainingDiverged(f"loss term {k} became {val} in stage {stage}, epoch {self.epoch + 1}")
                sums[k] = sums.get(k, 0.0) + val
        result: dict[str, Any] = {"epoch": self.epoch + 1, "stage": stage, "cached": False,
                                  "time/epoch_s": time.time() - start}
        for k, total in sums.items():
            name = "sga/conflict_frac" if k == "conflict_frac" else f"loss/{k}"
            result[name] = total / sc.iters_per_epoch
        self.epoch += 1
        if self.epoch % self.cfg.eval.every == 0 or self.epoch == self.total_epochs:
            start = time.time()
            result.update(self.validate())
            result["time/eval_s"] = time.time() - start
        return result

    def validate(self) -> dict[str, float]:
        """The configured protocol (``search`` by default) on the val split, as ``val/*``."""
        metrics = evaluate(self.student, self.val_loader, self.cfg.eval.protocol, eps=self.info.eps,
                           device=self.device, seed=self.cfg.seed)
        return {f"val/{k}": v for k, v in metrics.items()}

    def epochs(self) -> Iterator[dict[str, Any]]:
        """Run to the end, yielding each epoch's results (cached stage-I epochs first, marked)."""
        if self.epoch == 0 and self.stage1_epochs > 0 and self._load_stage1_cache():
            for entry in self.history:
                yield {**entry, "cached": True}
        while self.epoch < self.total_epochs:
            result = self._run_epoch()
            self.history.append(result)
            if self.epoch == self.stage1_epochs and self.stage1_epochs > 0:
                self._save_stage1_cache()
            yield result

    def run(self, callback: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        for result in self.epochs():
            if callback is not None:
                callback(result)
        return self.history

    # ---- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": RUN_FORMAT,
            "config": to_dict(self.cfg),
            "epoch": self.epoch,
            "opt_stage": self._opt_stage,
            "student": self.student.state_dict(),
            "generator": self.generator.state_dict() if self.generator is not None else None,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "rng": self.rng.get_state(),
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != RUN_FORMAT:
            raise ValueError("not a DERD run checkpoint")
        self.epoch = state["epoch"]
        self.student.load_state_dict(state["student"])
        if self.generator is not None:
            self.generator.load_state_dict(state["generator"])
        self.rng.set_state(state["rng"])
        self.history = list(state["history"])
        self._opt_stage = 0
        if state["opt_stage"]:
            self._setup_optimizers(state["opt_stage"])
            for k, o in self.optimizers.items():
                o.load_state_dict(state["optimizers"][k])
            for k, s in self.schedulers.items():
                s.load_state_dict(state["schedulers"][k])

    def save(self, path: str | os.PathLike) -> None:
        """Write the whole state atomically (a crash never leaves half a checkpoint)."""
        atomic_save(self.state_dict(), Path(path))

    @classmethod
    def resume(cls, path: str | os.PathLike, experts: Experts, **kwargs: Any) -> "DERDRun":
        """Rebuild a run from ``save()``'s file and continue where it stopped."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        run = cls(from_dict(state["config"]), experts, **kwargs)
        run.load_state_dict(state)
        return run

    def _cache_file(self) -> Path | None:
        if self.stage1_cache is None:
            return None
        return self.stage1_cache / f"stage1-{stage1_cache_key(self.cfg, self.experts)}.pt"

    def _save_stage1_cache(self) -> None:
        path = self._cache_file()
        if path is not None and not path.exists():
            state = self.state_dict()
            state.update(optimizers={}, schedulers={}, opt_stage=0, config={})
            atomic_save(state, path)

    def _load_stage1_cache(self) -> bool:
        path = self._cache_file()
        if path is None or not path.is_file():
            return False
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return True
