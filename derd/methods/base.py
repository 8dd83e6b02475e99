"""What every method shares: its phases, its hooks into the run loop, its checkpointable state.

A method (one file in this package) is a recipe of parts: a synthesizer that makes pseudo
images (``derd.synthesis``), a student objective (``derd.objectives``) and the teacher
roles (who plays the natural and the robust expert). ``DistillationRun`` (``derd.run``)
owns the loop: for each phase it sets up the student's optimiser and calls
``start_phase``; each epoch ``start_epoch``, ``iteration`` ``iters_per_epoch`` times, then
``end_epoch``. Methods never read a tensor on the host inside ``iteration``: they return
0-dim tensors, which the run reads once per epoch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from derd.context import Context, Phase, Terms
from derd.synthesis import GeneratorSynthesizer, TermLike

if TYPE_CHECKING:
    from derd.config import RunConfig


class Method:
    """Base of every registered method; subclasses set the class attributes and ``iteration``.

    Class attributes (everything the rest of the project derives from the registry):
    * ``name``: the registry key (``method`` in a run config);
    * ``label``: its row label in reports and the paper's tables;
    * ``order``: its position in lists, searches over every method and the tables;
    * ``table``: which of the paper's tables lists it (1: against real data, 2: data-free robust
      distillation methods, 3: DERD's variants);
    * ``sections``: the config sections it reads, name -> dataclass (``derd.config`` adds them
      to the run config; only they are searched or logged for it). A field made with
      ``derd.settings.setting(..., search=loguniform(lo, hi))`` declares the range every search
      space with ``ranges: declared`` draws it from (``tuning.space``);
    * ``metric_prefixes``: the prefixes of the metrics it logs beside ``loss/*`` and ``time/*``;
    * ``teachers``: the experts it needs (``natural`` and/or ``robust``);
    * ``presets``: dataset -> its published values of its own keys there (a search's first
      point and ``derd.config.preset``); a dataset not listed takes the sections' defaults;
    * ``note``: a footnote every table, report and summary shows with it (its name then carries
      a star: ``derd.methods.display_name``), e.g. that it is a reconstruction.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    order: ClassVar[int] = 100
    table: ClassVar[int] = 2
    sections: ClassVar[dict[str, type]] = {}
    metric_prefixes: ClassVar[tuple[str, ...]] = ()
    teachers: ClassVar[tuple[str, ...]] = ("robust",)
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    note: ClassVar[str] = ""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    # ---- schedule ---------------------------------------------------------------------
    @classmethod
    def phases(cls, cfg: "RunConfig") -> list[Phase]:
        """Default: one main phase over the whole ``budget`` (the same number of student updates and
        pseudo images as every other method), the student at the ``robust`` section's learning rate."""
        b, r = cfg.budget, cfg.robust
        return [Phase(2, b.epochs, b.iters_per_epoch, b.batch_size, r.lr_s, weight_decay=r.weight_decay)]

    @classmethod
    def check(cls, cfg: "RunConfig") -> None:
        """Reject settings that are valid one by one but not together for this method (ConfigError)."""

    def start_phase(self, phase: Phase) -> None:
        """Called when a phase begins (and again when a run resumes inside it): set up optimisers."""

    def start_epoch(self, phase: Phase) -> None:
        """Called before each epoch's iterations."""

    def iteration(self, phase: Phase, step: int) -> Terms:
        """One training iteration (``step`` counts the phase's iterations); returns 0-dim loss tensors."""
        raise NotImplementedError

    def end_epoch(self, phase: Phase, means: dict[str, float]) -> dict[str, float]:
        """After the epoch's host read of ``means`` (metric name -> epoch mean); extra metrics to log."""
        return {}

    def sample(self, n: int) -> torch.Tensor | None:
        """n pseudo images in [0, 1] for figures (None if the method keeps no image source)."""
        return None

    def warmup_key(self) -> dict[str, Any] | None:
        """What the end of the first phase depends on beyond student, teachers, seed and data, if
        that phase may be cached and shared between runs (DERD's stage I); None otherwise."""
        return None

    # ---- checkpoint ---------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Modules and extra state always; optimiser states where the file has them (not a stage-I cache)."""
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            if k in state.get("optimizers", {}):
                o.load_state_dict(state["optimizers"][k])
        self.load_extra_state(state.get("extra", {}))


class GeneratorMethod(Method):
    """A method whose pseudo images come from one generator (``GeneratorSynthesizer``, configured by
    ``generator_settings``), whose Adam is set up at each phase with ``generator_lr(phase)``."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.synth = GeneratorSynthesizer(ctx, terms=self.generator_terms(), **self.generator_settings())
        self.modules["generator"] = self.synth.generator

    def generator_settings(self) -> dict[str, Any]:
        """``GeneratorSynthesizer``'s options for this method (noise size, Adam's betas, clipping, the
        student's mode, a conditional generator); default: the data-free literature's generator at
        ``student.latent_dim``."""
        return {}

    def generator_terms(self) -> dict[str, TermLike]:
        """This method's own generator terms by name, beside the shared ``derd.synthesis.GENERATOR_TERMS``:
        each a function of one batch's ``Signals`` (x = G(z) with its gradient, z, the drawn labels, the
        teachers' and the student's logits) that may also read the method's own tensors; weigh it by name
        in ``self.synth.step(weights=...)``. A ``GeneratorTerm`` says which hooks it reads (``needs``)."""
        return {}

    def generator_lr(self, phase: Phase) -> float:
        raise NotImplementedError

    def start_phase(self, phase: Phase) -> None:
        self.synth.start_phase(self.generator_lr(phase))
        self.optimizers["generator"] = self.synth.optimizer

    def sample(self, n: int) -> torch.Tensor:
        return self.synth.sample(n)
