"""The search's parent run in MLflow: its experiment, its tags, params and preflight figures.

The parent is made once, by a fresh search, and found again by its folder (tag ``derd.search_dir``) on
every ``--resume``, so a search has one parent however often it restarts. Every trial's run is its child
(``tuning.mlflow_logger``); ``tuning.summary`` closes it with the search's figures.
"""

from __future__ import annotations

from typing import Any

from mlflow.tracking import MlflowClient

from derd.checkpoints import file_sha256
from derd.validation import val_protocol
from tuning.plan import Plan
from tuning.records import Tag, encode_objectives, protocol_tags, teacher_metric
from tuning.store import runs_tagged

VALIDATION_FIGURES = ("n_images", "n_drawn", "teacher_agreement", "seconds")  # a synthetic set's, as metrics


def mlflow_parent(
    plan: Plan,
    teachers: dict[str, dict[str, float]],
    threshold: float,
    validation: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """(experiment id, parent run id): created on a fresh search, found again on --resume. The parent
    records the synthetic validation set's figures (``validation``: its stats) when the search uses one."""
    client = MlflowClient(plan.tracking_uri)
    exp_id = _experiment(client, plan)
    found = runs_tagged(client, [exp_id], {Tag.SEARCH_DIR: str(plan.out)}, max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return exp_id, found[0].info.run_id
    space = plan.space
    run = client.create_run(
        exp_id,
        run_name=f"search-{plan.name}",
        tags={
            Tag.SEARCH_DIR: str(plan.out),
            Tag.KIND: "search",
            Tag.DATASET: space.dataset,
            Tag.OBJECTIVES: encode_objectives(space.objectives),
            Tag.METHODS: ",".join(space.methods),
            **protocol_tags(val_protocol(space.base_config())),
        },
    )  # the protocol of every trial's val/* scores
    run_id = run.info.run_id
    for key, value in search_params(plan).items():
        client.log_param(run_id, key, value)
    client.log_metric(run_id, "search/clean_threshold", threshold)
    for kind, table in teachers.items():
        for column, value in table.items():
            client.log_metric(run_id, teacher_metric(kind, column), value)
    client.log_artifact(run_id, str(plan.folder.space))
    if validation:
        _log_validation(client, run_id, validation)
    return exp_id, run_id


def _experiment(client: MlflowClient, plan: Plan) -> str:
    """The search's experiment (named after it), made on first use with its artifacts in the search's folder
    when the store is SQLite there."""
    exp = client.get_experiment_by_name(plan.name)
    if exp is not None:
        return exp.experiment_id
    artifacts = plan.folder.artifacts.as_uri() if plan.tracking_uri.startswith("sqlite") else None
    # the experiment kind makes MLflow 3's UI open on its runs table, not its GenAI overview
    return client.create_experiment(
        plan.name, artifact_location=artifacts, tags={"mlflow.experimentKind": "custom_model_development"}
    )


def search_params(plan: Plan) -> dict[str, Any]:
    """The search's settings as the parent's params, with each teacher file's SHA-256."""
    space = plan.space
    params = {
        "dataset": space.dataset,
        "num_trials": space.num_trials,
        "max_concurrent": space.max_concurrent,
        "sampler": space.sampler,
        "scheduler": space.scheduler,
        "cpus_per_trial": space.cpus_per_trial,
        "gpus_per_trial": space.gpus_per_trial,
        "space": ",".join(p.key for p in space.params),
        "min_clean_fraction": space.min_clean_fraction,
    }
    for kind in ("natural", "robust"):
        path = plan.base_config["teachers"][kind]
        if path:
            params[f"teachers.{kind}_sha256"] = file_sha256(path)
    return params


def _log_validation(client: MlflowClient, run_id: str, stats: dict[str, Any]) -> None:
    """A synthetic validation set's figures (``derd.validation``'s stats) on the parent."""
    for key in VALIDATION_FIGURES:
        client.log_metric(run_id, f"validation/{key}", float(stats[key]))
    client.log_param(run_id, "validation.procedure", stats["procedure"])
    client.log_param(run_id, "validation.class_counts", ",".join(map(str, stats["class_counts"])))
