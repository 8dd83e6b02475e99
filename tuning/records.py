"""The names a search's records use, in one place: MLflow tags and metrics, the objectives'
encoding, the floors a user writes, links into MLflow's UI and the layout of a search folder.

``tuning/`` writes these records and ``analysis/`` reads them. This module and ``tuning.store`` are the
search's record layer: they import nothing but ``derd``, so ``analysis`` may import them without an
import cycle (``tuning.summary``, which writes the final report, is the one module of ``tuning`` that
imports ``analysis``). Nothing here talks to MLflow or Ray: they are strings and paths. A run's own
metric names (``val/clean_acc``, ...) are the library's: ``derd.evaluate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from derd.errors import UserError
from derd.evaluate import VAL_AA, VAL_CLEAN, VAL_PGD, VAL_WORST_AA
from derd.pareto import Objectives

# per trial, logged once at its end
TRIAL_WALL = "trial/wall_time_s"
TRIAL_DEVICE_HOURS = "trial/device_hours"
TRIAL_EPOCHS = "trial/epochs"
TRIAL_CACHED_EPOCHS = (
    "trial/cached_epochs"  # stage-I epochs read from the shared cache, not run (and not in wall time)
)
SAVED_EPOCH = "checkpoint/epoch"  # the epoch a trial's run.pt held when it reported: where a retry starts
EPOCH_TIME = "time/epoch_s"  # logged every epoch: the record of which epochs MLflow holds


class Tag:
    """MLflow tag names."""

    KIND = "derd.kind"  # search | trial | final
    METHOD = "derd.method"
    DATASET = "derd.dataset"
    METHODS = "derd.methods"
    OBJECTIVES = "derd.objectives"
    SEARCH_DIR = "derd.search_dir"
    TRIAL_ID = "derd.trial_id"
    SEARCHED_KEYS = "derd.searched_keys"
    PRESET = "derd.preset"
    FEASIBLE = "derd.feasible"
    BUDGET = "derd.budget"  # full | partial
    STOPPED_EARLY = "derd.stopped_early"
    ERROR = "derd.error"
    MIN_CLEAN = "derd.min_clean"  # on a search run: tuning/search.py --min-clean, as the user wrote it
    RESTORES = (
        "derd.restores"  # times the trial was restored from its checkpoint after its worker failed (if any)
    )
    TRAIN_DIR = "derd.train_dir"
    PROTOCOL = "derd.protocol"  # on a final run: the protocol of its test/* scores; on a search or trial run: of val/*
    EPS = "derd.eps"  # that protocol's L-inf radius
    ATTACKS = (
        "derd.attacks"  # that protocol's attack per column, "; "-separated (derd.evaluate.column_attack)
    )
    MAX_IMAGES = "derd.max_images"  # the images that protocol is limited to ("all" when none)
    VALIDATION = "derd.validation"  # on a search or trial run: what val/* was scored on (real or synthetic)
    ORIGIN_RUN_ID = "derd.origin_run_id"
    STUDENT = "derd.student"
    PARETO_FRONT = "pareto_front"
    PARETO_RANK = "pareto_rank"
    PARETO_EXCLUDED = "pareto_excluded"
    TRIAL_NUMBER = "optuna.trial_number"
    RAY_TRIAL_ID = "derd.ray_trial_id"
    DEVICE = "derd.device"  # where a trial ran: the device, Ray's node and GPU ids, what a device-hour counts
    NODE_ID = "derd.node_id"
    GPU_IDS = "derd.gpu_ids"
    DEVICE_UNIT = "derd.device_unit"
    PARENT = "mlflow.parentRunId"
    NOTE = "mlflow.note.content"


def protocol_tags(record: dict) -> dict[str, str]:
    """A recorded protocol (``derd.evaluate.protocol_record``) as the MLflow tags of the run whose scores
    it measured."""
    tags = {
        Tag.PROTOCOL: record["name"],
        Tag.EPS: repr(float(record["eps"])),
        Tag.ATTACKS: "; ".join(record["attacks"]),
        Tag.MAX_IMAGES: str(record["max_images"] if record.get("max_images") is not None else "all"),
    }
    return {**tags, Tag.VALIDATION: record["validation"]} if record.get("validation") else tags


def protocol_of_tags(tags: dict[str, str]) -> dict | None:
    """The protocol a run's tags record (``protocol_tags`` read back), or None for a run recorded before
    runs carried their protocol."""
    if Tag.PROTOCOL not in tags or Tag.EPS not in tags:
        return None
    limit = tags.get(Tag.MAX_IMAGES, "all")
    try:
        eps, max_images = float(tags[Tag.EPS]), None if limit == "all" else int(limit)
    except ValueError:  # a tag edited by hand: as good as none
        return None
    record = {
        "name": tags[Tag.PROTOCOL],
        "eps": eps,
        "attacks": [a for a in tags.get(Tag.ATTACKS, "").split("; ") if a],
        "max_images": max_images,
    }
    return {**record, "validation": tags[Tag.VALIDATION]} if Tag.VALIDATION in tags else record


FRONT_FILTER = f"tags.{Tag.PARETO_FRONT} = 'true'"

DEFAULT_OBJECTIVES: Objectives = [(VAL_CLEAN, "max"), (VAL_AA, "max")]


def encode_objectives(objectives: Objectives) -> str:
    """``val/clean_acc:max,val/aa_acc:max`` (the search run's ``derd.objectives`` tag)."""
    return ",".join(f"{metric}:{mode}" for metric, mode in objectives)


def decode_objectives(text: str | None) -> Objectives:
    if not text:
        return list(DEFAULT_OBJECTIVES)
    return [tuple(item.rsplit(":", 1)) for item in text.split(",")]  # type: ignore[misc]


# ---- links into MLflow's UI ------------------------------------------------------------------
# MLflow 3's UI has a GenAI and a model-training mode; the workflowType parameter opens the latter.
# The trials view is a shared view state stored on the experiment (its tag ``VIEW_TAG``): the trials
# unnested and sorted by the robust objective, with the objectives' columns shown.
TRIALS_VIEW = "derd-trials"
FRONT_PAGE = "pareto/front.html"  # the search run's interactive front
VIEW_TAG = f"mlflow.sharedViewState.{TRIALS_VIEW}"
MODEL_TRAINING = "workflowType=machine_learning"


def experiment_link(experiment_id: str) -> str:
    """The experiment's runs table in model-training mode, every trial listed (the trials view)."""
    return f"#/experiments/{experiment_id}/runs?{MODEL_TRAINING}&viewStateShareKey={TRIALS_VIEW}"


def run_link(experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """A run's page (or one of its artifacts) in model-training mode."""
    path = f"/artifactPath/{artifact}" if artifact else ""
    return f"#/experiments/{experiment_id}/runs/{run_id}{path}?{MODEL_TRAINING}"


def ui_url(base: str, link: str) -> str:
    """A full URL: the UI's address (``http://127.0.0.1:5000``) and a link above."""
    return f"{base.rstrip('/')}/{link}"


def trials_view(objectives: Objectives) -> dict:
    """The trials view's state: sorted by the last objective (the robust one), best first; the
    columns a user compares trials by."""
    metric, mode = objectives[-1]
    shown = (VAL_CLEAN, VAL_PGD, VAL_AA, VAL_WORST_AA)
    columns = [
        "params.`method`",
        *(f"metrics.`{m}`" for m in shown),
        *(f"metrics.`{m}`" for m, _ in objectives if m not in shown),
        f"tags.`{Tag.PARETO_FRONT}`",
        f"tags.`{Tag.FEASIBLE}`",
        f"tags.`{Tag.BUDGET}`",
        f"tags.`{Tag.PRESET}`",
    ]
    return {
        "searchFilter": "",
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": mode == "min",
        "selectedColumns": columns,
    }


class SearchFolder:
    """The files of a search in its ``--out`` folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def record(self) -> Path:
        """search.json: name, dataset, tracking URI, sessions, the driver's Ray processes."""
        return self.root / "search.json"

    @property
    def space(self) -> Path:
        """space.yaml: the space with the command line's overrides (what --resume reads)."""
        return self.root / "space.yaml"

    @property
    def optuna_db(self) -> Path:
        return self.root / "optuna.db"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def stage1_cache(self) -> Path:
        return self.root / "stage1_cache"

    @property
    def synthetic_val(self) -> Path:
        """synthetic_val.pt: the validation set made from the teachers (``--validation synthetic``)."""
        return self.root / "synthetic_val.pt"

    @property
    def best_trials(self) -> Path:
        return self.root / "best_trials.md"

    @property
    def trials(self) -> Path:
        """trials/: one folder per trial that started."""
        return self.root / "trials"

    def trial_checkpoint(self, number: int) -> Path:
        """trials/NNNN/run.pt: a trial's resumable state (its Optuna number names it)."""
        return self.trials / f"{number:04d}" / "run.pt"

    @property
    def mlflow_uri(self) -> str:
        """The default MLflow store: SQLite in the folder."""
        return f"sqlite:///{self.mlflow_db}"

    @property
    def optuna_uri(self) -> str:
        return f"sqlite:///{self.optuna_db}"


def teacher_metric(kind: str, column: str) -> str:
    """The search run's metric of a teacher's preflight score: ``teacher/natural_clean_acc``."""
    return f"teacher/{kind}_{column}"


@dataclass(frozen=True)
class Floor:
    """A floor as the user wrote it: ``80`` (points) or ``0.9x`` (a factor of a teacher's score); recorded as
    written (the search run's ``derd.min_clean`` tag, ``search.json``'s ``min_clean``)."""

    text: str
    value: float
    relative: bool


def parse_floor(text: str, flag: str) -> Floor:
    """Read ``80`` or ``0.9x``: the one reader of ``--min-clean`` and ``--min-robust``, for the search and
    the export alike. A bare number below 1 is refused: it is almost surely a factor missing its ``x``."""
    s = text.strip().lower()
    relative = s.endswith("x")
    try:
        value = float(s[:-1] if relative else s)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (not relative and value > 100):
        raise UserError(
            f"{flag} {text!r}: expected points of accuracy in [0, 100] (e.g. 80) or a factor of the "
            f"teacher's score (e.g. 0.9x)"
        )
    if not relative and 0 < value < 1:
        raise UserError(
            f"{flag} {text}: {value:g} points is no floor; for a factor of the teacher's score write "
            f"{s}x, for points a number from 1 to 100"
        )
    return Floor(text.strip(), value, relative)
