"""The tabulated digits benchmark: its rows, and the answer it gives for any configuration.

The table (``benchmarks/tabular/digits.jsonl``, built by ``benchmarks/tabular/build.py``) holds
configurations of the default digits space, each trained through the real run loop at the
space's trial budget: per row the keys, the val curve (clean, PGD_S, AA under the ``search``
protocol at each evaluation epoch) and the compute seconds of every epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TABLE = REPO / "benchmarks" / "tabular" / "digits.jsonl"
ROW_FORMAT = "derd-tabular/1"


def read_rows(path: str | Path = TABLE) -> list[dict[str, Any]]:
    """The table's rows (the first of any repeated id), in file order."""
    rows, seen = [], set()
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("format") == ROW_FORMAT and row["id"] not in seen:
            seen.add(row["id"])
            rows.append(row)
    return rows


def unit_to_value(param, u: float) -> Any:
    """A point of [0, 1) as a value of a searched key (log scale for log-uniform keys): how the
    table's configurations are drawn from the space's ranges."""
    import math

    if param.distribution == "loguniform":
        return float(math.exp(math.log(param.low) + u * (math.log(param.high) - math.log(param.low))))
    if param.distribution == "int":
        return int(min(param.high, math.floor(param.low + u * (param.high - param.low + 1))))
    return float(param.low + u * (param.high - param.low))


# ---- the answer for a configuration --------------------------------------------------------

CURVE = ("clean_acc", "pgd_acc", "aa_acc")


def features(space, keys: dict[str, Any]) -> list[float]:
    """A configuration as a point of the unit cube: each searched key scaled by its range (log scale
    for log-uniform keys; -1 where the method does not read the key), then the method one-hot."""
    import math

    out = []
    for p in space.params:
        if p.key == "method":
            continue
        value = keys.get(p.key)
        if value is None:
            out.append(-1.0)
        elif p.distribution == "loguniform":
            out.append((math.log(value) - math.log(p.low)) / (math.log(p.high) - math.log(p.low)))
        else:
            out.append((value - p.low) / (p.high - p.low))
    return out + [float(keys.get("method") == m) for m in space.methods]


class TableAnswers:
    """What a trial of any configuration reports, answered from the table's rows (seed 0).

    ``mode="surrogate"``: extremely randomised trees (``fit_models``) on the normalised keys (``features``), one model per
    evaluation epoch predicting clean, PGD_S and AA there, and one for the compute seconds of
    every epoch; a configuration that is in the table (the paper's presets are) gets its row.
    ``mode="nearest"``: the nearest row in the unit cube that this simulation has not handed
    out yet (every answer a measured one; the sampler's proposal is moved to it).
    ``reset()`` starts a new simulation (``nearest`` forgets the rows it used).
    """

    def __init__(
        self,
        rows: list[dict[str, Any]],
        space,
        mode: str = "surrogate",
        seed: int = 0,
        kind: str = "extra-trees",
    ) -> None:
        if mode not in ("surrogate", "nearest") or kind not in SURROGATES:
            raise ValueError(
                f"mode {mode!r}: surrogate or nearest; kind {kind!r}: one of {', '.join(SURROGATES)}"
            )
        self.space, self.mode = space, mode
        self.rows = [r for r in rows if r["seed"] == seed]
        if not self.rows:
            raise ValueError(f"the table has no rows at seed {seed}")
        self.template = self.rows[0]
        self.eval_epochs = [e["epoch"] for e in self.template["epochs"] if "aa_acc" in e]
        self.x = [features(space, r["keys"]) for r in self.rows]
        self.exact = {self._key(r["keys"]): i for i, r in enumerate(self.rows)}
        self.used: set[int] = set()
        self._sobol: dict[int, list[dict[str, Any]]] = {}  # Sobol sample size -> the finals predicted there
        if mode == "surrogate":
            self.models = fit_models(self.x, self.rows, self.eval_epochs, kind=kind)

    @staticmethod
    def _key(keys: dict[str, Any]) -> str:
        return json.dumps(
            {k: (round(v, 12) if isinstance(v, float) else v) for k, v in keys.items()}, sort_keys=True
        )

    def reset(self) -> None:
        self.used = set()

    def row_for(self, keys: dict[str, Any]) -> dict[str, Any]:
        """The table's row for ``keys``: its own if the table has it, else (``nearest``) the nearest
        unused one, else (``surrogate``) a row made of the models' predictions."""
        i = self.exact.get(self._key(keys))
        if i is not None:
            return self.rows[i]
        point = features(self.space, keys)
        if self.mode == "nearest":
            free = [
                j
                for j in range(len(self.rows))
                if j not in self.used and self.rows[j]["method"] == keys["method"]
            ]
            free = free or [j for j in range(len(self.rows)) if self.rows[j]["method"] == keys["method"]]
            j = min(free, key=lambda j: sum((a - b) ** 2 for a, b in zip(self.x[j], point)))
            self.used.add(j)
            return self.rows[j]
        return self.predicted_row(keys, point)

    def predicted_row(self, keys: dict[str, Any], point: list[float]) -> dict[str, Any]:
        per_epoch, times = self.models
        curve = {e: forest_predict(model, point) for e, model in per_epoch.items()}
        seconds = forest_predict(times, point)
        n = len(self.template["epochs"])
        epochs = []
        for k, entry in enumerate(self.template["epochs"]):
            e = entry["epoch"]
            made = {
                "epoch": e,
                "stage": entry["stage"],
                "cached": False,
                "epoch_s": float(max(seconds[k], 0.0)),
                "eval_s": float(max(seconds[n + k], 0.0)) if e in curve else 0.0,
            }
            if e in curve:
                made.update({c: float(min(100.0, max(0.0, v))) for c, v in zip(CURVE, curve[e])})
            epochs.append(made)
        return {
            **self.template,
            "id": "surrogate",
            "keys": dict(keys),
            "method": keys["method"],
            "epochs": epochs,
            "stage1_keys": {k: v for k, v in keys.items() if k.startswith("stage1.")},
            "preset": False,
        }

    def best_feasible_aa(self, clean_threshold: float, samples: int = 2048) -> float:
        """The best final val AA a feasible configuration gets from these answers: over the table's
        rows (``nearest``: every answer is one), or (``surrogate``) over the predictions at
        ``samples`` Sobol points of the space per method (a power of two: Sobol's balance), the best a
        search can be answered. The finals of those points are made once per ``samples``."""
        finals = (
            [r["epochs"][-1] for r in self.rows] if self.mode == "nearest" else self._sobol_finals(samples)
        )
        return max((e["aa_acc"] for e in finals if e["clean_acc"] >= clean_threshold), default=0.0)

    def _sobol_finals(self, samples: int) -> list[dict[str, Any]]:
        if samples not in self._sobol:
            from scipy.stats import qmc

            searched = [p for p in self.space.params if p.key != "method"]
            cube = qmc.Sobol(len(searched), scramble=True, seed=0).random(samples)
            made = []
            for method in self.space.methods:
                for u in cube:
                    keys = {"method": method, **{p.key: unit_to_value(p, x) for p, x in zip(searched, u)}}
                    made.append(self.predicted_row(keys, features(self.space, keys))["epochs"][-1])
            self._sobol[samples] = made
        return self._sobol[samples]


# ---- noise: what a re-run at another seed would report ------------------------------------


def replicate_sets(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The configurations the table holds at every one of its seeds (presets included): their rows,
    one per seed."""
    by_config: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        by_config.setdefault(r["id"].rsplit("-s", 1)[0], {})[r["seed"]] = r
    seeds = {r["seed"] for r in rows}
    return [list(v.values()) for v in by_config.values() if len(v) == len(seeds) and len(seeds) > 1]


def curve_points(row: dict[str, Any]) -> list[tuple[int, str, float]]:
    """A row's val curve as (epoch, metric, value): (clean, PGD_S, AA) at each evaluation epoch, in order."""
    return [(e["epoch"], c, e[c]) for e in row["epochs"] if "aa_acc" in e for c in CURVE]


def curve_vector(row: dict[str, Any]) -> list[float]:
    """``curve_points``' values: the vector ``NoiseModel`` draws for."""
    return [value for _, _, value in curve_points(row)]


class NoiseModel:
    """Seed-to-seed noise of a val curve: a normal distribution with the pooled within-configuration
    covariance of ``curve_vector`` over the configurations trained at every seed (so a draw moves
    clean, PGD and AA at every evaluation together, as a second seed does). ``perturb`` returns a
    row as a re-run with draw ``key`` would report it (clipped to [0, 100]); the same key, the same
    draw."""

    def __init__(self, rows: list[dict[str, Any]], scale: float = 1.0) -> None:
        import numpy as np

        sets = replicate_sets(rows)
        if not sets:
            raise ValueError("the table holds no configuration at more than one seed: no noise to model")
        deviations = []
        for replicates in sets:
            x = np.array([curve_vector(r) for r in replicates])
            deviations.extend(x - x.mean(axis=0))
        d = np.array(deviations)
        dof = len(d) - len(sets)
        self.covariance = (d.T @ d) / dof * scale**2
        self.sd = np.sqrt(np.diag(self.covariance))
        self.factor = np.linalg.cholesky(self.covariance + 1e-9 * np.eye(len(self.covariance)))
        self.n_configs, self.n_seeds = len(sets), len(sets[0])

    def perturb(self, row: dict[str, Any], key: tuple[int, ...]) -> dict[str, Any]:
        import numpy as np

        z = self.factor @ np.random.default_rng(list(key)).standard_normal(len(self.factor))
        values = iter(z)
        epochs = []
        for e in row["epochs"]:
            e = dict(e)
            if "aa_acc" in e:
                for c in CURVE:
                    e[c] = float(min(100.0, max(0.0, e[c] + next(values))))
            epochs.append(e)
        return {**row, "epochs": epochs}


SURROGATES = ("extra-trees", "forest")  # chosen by grouped cross-validation (benchmarks/tabular/simulate.py)


def fit_models(
    x: list[list[float]],
    rows: list[dict[str, Any]],
    eval_epochs: list[int],
    seed: int = 0,
    kind: str = "extra-trees",
):
    """({evaluation epoch: forest predicting (clean, PGD_S, AA) there}, forest predicting every
    epoch's training seconds and then every epoch's evaluation seconds). ``kind``: extremely
    randomised trees (the default: the best held-out Kendall tau with folds grouped by stage-I
    group) or a random forest."""
    from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

    def forest(y):
        if kind == "forest":
            return RandomForestRegressor(n_estimators=200, min_samples_leaf=2, random_state=seed).fit(x, y)
        return ExtraTreesRegressor(n_estimators=200, min_samples_leaf=2, random_state=seed).fit(x, y)

    per_epoch = {}
    for e in eval_epochs:
        per_epoch[e] = forest(
            [[next(d for d in r["epochs"] if d["epoch"] == e)[c] for c in CURVE] for r in rows]
        )
    times = forest([[d["epoch_s"] for d in r["epochs"]] + [d["eval_s"] for d in r["epochs"]] for r in rows])
    return per_epoch, times


def forest_predict(forest, point: list[float]):
    """A fitted forest's prediction at one point: the mean of its trees' (``RandomForestRegressor.predict``'s
    rule), read from each tree's arrays directly, 20x faster than ``predict`` for a single point."""
    import numpy as np

    x = np.asarray([point], dtype=np.float32)
    return np.mean([tree.tree_.predict(x)[0, :, 0] for tree in forest.estimators_], axis=0)


def epoch_results(row: dict[str, Any], cached_warmup: bool = False) -> list[dict[str, Any]]:
    """A row as the epoch results ``DistillationRun.epochs()`` yields (the trial's reports are made
    from these by ``tuning.trainable.Reports``). ``cached_warmup``: its stage I is restored from
    the stage-I cache (marked cached, as the run loop marks it)."""
    out = []
    for entry in row["epochs"]:
        result = {
            "epoch": entry["epoch"],
            "stage": entry["stage"],
            "time/epoch_s": entry["epoch_s"],
            "cached": bool(cached_warmup and entry["epoch"] <= row["warmup_epochs"]),
        }
        if "aa_acc" in entry:
            result.update({f"val/{c}": entry[c] for c in CURVE})
            result["val/n_images"] = row["n_val"]
            result["time/eval_s"] = entry["eval_s"]
        out.append(result)
    return out


def table_trainable(
    config: dict[str, Any],
    *,
    base_config: dict[str, Any],
    experts: Any,
    out: str,
    objectives: list[tuple[str, str]],
    clean_threshold: float,
    cpus_per_trial: float,
    answers: "TableAnswers",
) -> None:
    """A stand-in for ``tuning.trainable.derd_trainable`` that trains nothing: it reports, epoch by
    epoch, what the table answers for the sampled configuration, through the same ``Reports``.
    (``answers`` must be in ``surrogate`` mode: the ``nearest`` mode's memory of used rows lives
    in one process, and Ray runs trials in many.)"""
    from ray import tune

    from derd.config import apply_overrides, from_dict
    from derd.methods import total_epochs
    from tuning.searcher import TRIAL_NUMBER
    from tuning.trainable import Reports

    keys = {k: v for k, v in config.items() if k != TRIAL_NUMBER}
    reports = Reports(
        objectives, clean_threshold, total_epochs(apply_overrides(from_dict(base_config), keys))
    )
    history: list[dict[str, Any]] = []
    for result in epoch_results(answers.row_for(keys)):
        history.append(result)
        tune.report(reports.next(result, history))
