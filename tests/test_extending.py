"""A new method is one file: written by the test outside the package and named in $DERD_PLUGINS, it
registers, runs (with a generator term of its own over its drawn labels), is searched over the range it
declares, logged, exported and tabled without a line changed anywhere else; old configs still load."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import TINY_BASE, train_quick
from mlflow.tracking import MlflowClient

from derd.config import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_yaml,
    preset,
    save_yaml,
    to_dict,
    to_flat,
)
from derd.data import load_split
from derd.experts import Experts
from derd.methods import available_methods, get_method, logged_prefixes, register_method, unregister_method
from derd.registry import PLUGINS_ENV
from derd.run import DistillationRun
from tuning.records import SearchFolder, Tag, encode_objectives

LEGACY = Path(__file__).parent / "legacy"

# The whole method: one file, as a user would write it outside the package.
TOY_METHOD = textwrap.dedent('''
    """``toy``: a conditional generator on T_rob's logit of the drawn class, with robust distillation."""
    from dataclasses import dataclass

    import torch

    from derd.methods import register_method
    from derd.methods.base import GeneratorMethod
    from derd.objectives import RobustConfig, rslad
    from derd.settings import LR_MAX, WEIGHT_MAX, loguniform, setting
    from derd.synthesis import Signals


    @dataclass
    class ToyConfig:
        weight: float = setting(1.0, lo=0, hi=WEIGHT_MAX, doc="weight of the drawn-class term",
                                search=loguniform(0.1, 2.0))
        lr_g: float = setting(1e-3, lo=1e-12, hi=LR_MAX)


    @register_method
    class Toy(GeneratorMethod):
        name = "toy"
        label = "Toy + RSLAD"
        order = 50
        sections = {"toy": ToyConfig, "robust": RobustConfig}
        metric_prefixes = ("kd/", "toy/")
        presets = {"digits": {"toy.weight": 0.5}}

        def generator_settings(self):
            return {"conditional": True}

        def generator_terms(self):
            return {"toy_class": self.drawn_class_term}

        def drawn_class_term(self, s: Signals) -> torch.Tensor:
            """Its own term: minus T's mean logit of each image's drawn class, on x with its gradient."""
            self.term_had_gradient = s.x.requires_grad
            return -s.prior_logits.gather(1, s.drawn_labels[:, None]).mean()

        def generator_lr(self, phase):
            return self.cfg.toy.lr_g

        def iteration(self, phase, step):
            terms, x = self.synth.step(phase.batch_size, {"toy_class": self.cfg.toy.weight},
                                       prior=self.ctx.experts.robust, natural=None, tau=1.0)
            terms.update(rslad(self.ctx, x))
            return terms

        def end_epoch(self, phase, means):
            return {"toy/class_mean": means["loss/toy_class"]}
''')


@pytest.fixture()
def toy(tmp_path, monkeypatch):
    """The toy method's file, outside the package, found through $DERD_PLUGINS."""
    path = tmp_path / "toy_method.py"
    path.write_text(TOY_METHOD)
    monkeypatch.setenv(PLUGINS_ENV, str(path))
    assert "toy" in available_methods()  # the first look into the registry imports it
    yield get_method("toy")
    unregister_method("toy")


def test_a_method_registered_from_outside_runs_is_searched_logged_exported_and_tabled(toy, tmp_path):
    from analysis.export import main as export_main
    from analysis.paper_tables import label, rows_of_table
    from analysis.pareto import tag_fronts
    from tuning.mlflow_logger import MLflowSearchLogger
    from tuning.searcher import TRIAL_NUMBER
    from tuning.space import SearchSpace

    # the config: its section, its published digits weight, YAML both ways
    assert (
        available_methods()[-1] == "toy"
        and "toy/" in logged_prefixes()
        and toy.__module__.startswith("derd_plugin")
    )
    cfg = apply_overrides(preset("digits", "toy"), {**TINY_BASE, "robust.pgd_steps": 2})
    assert cfg.toy.weight == 0.5 and to_flat(cfg)["toy.weight"] == 0.5
    save_yaml(cfg, tmp_path / "toy.yaml")
    assert load_yaml(tmp_path / "toy.yaml") == cfg
    with pytest.raises(ConfigError, match="toy.weight: -1.0 is below its minimum"):
        apply_overrides(cfg, {"toy.weight": -1})

    # it runs, with its own metric
    val = torch.utils.data.Subset(load_split("digits", "val"), range(16))
    run = DistillationRun(cfg, Experts(None, train_quick(seed=2, epochs=2)), val_data=val)
    before = [p.detach().clone() for p in run.method.synth.generator.label_embedding.parameters()]
    history = run.run()
    run.close()
    assert (
        len(history) == cfg.budget.epochs
        and "toy/class_mean" in history[-1]
        and "kd/adv_agreement" in history[-1]
    )
    assert run.method.term_had_gradient and history[-1]["loss/G"] == pytest.approx(
        0.5 * history[-1]["loss/toy_class"]
    )
    after = list(
        run.method.synth.generator.label_embedding.parameters()
    )  # its term trained G's label embedding
    assert not all(torch.equal(a, b) for a, b in zip(before, after))

    # it is searched: its preset first, its key sampled only for it
    space_file = tmp_path / "space.yaml"
    space_file.write_text(
        yaml.safe_dump(
            {
                "dataset": "digits",
                "base": dict(TINY_BASE),
                "presets": ["paper"],
                "ranges": "declared",
                "space": {  # the range comes from ToyConfig
                    "method": {"distribution": "categorical", "choices": ["derd", "toy"]},
                    "stage2.pgd_steps": None,
                },
            }
        )
    )  # the tiny base's 2 steps lie below DERD's declared range: not searched here
    space = SearchSpace.from_yaml(space_file)
    weight = next(p for p in space.params if p.key == "toy.weight")
    assert (weight.distribution, weight.low, weight.high) == ("loguniform", 0.1, 2.0)
    assert space.presets[1]["method"] == "toy" and space.presets[1]["toy.weight"] == 0.5
    assert "stage1.lambda_adv" not in space.presets[1] and "robust.lr_s" in space.presets[1]
    assert {p.key for p in SearchSpace.from_yaml(space_file, methods=["toy"]).params} == {
        "toy.weight",
        "robust.pgd_steps",
        "robust.natural_weight",
        "robust.lr_s",
    }  # --method toy: its declared keys
    study = optuna.create_study(
        directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    for _ in range(8):
        point = space.sample(study.ask())
        assert ("toy.weight" in point) == (point["method"] == "toy") and ("stage1.lambda_ie" in point) != (
            "toy.weight" in point
        )

    # it is logged (its params and its metrics) and exported from the search's records
    folder = SearchFolder(tmp_path / "search")
    folder.root.mkdir()
    client = MlflowClient(folder.mlflow_uri)
    exp = client.create_experiment("toy-search", artifact_location=folder.artifacts.as_uri())
    parent = client.create_run(
        exp, tags={Tag.KIND: "search", Tag.OBJECTIVES: encode_objectives(space.objectives)}
    )
    logger = MLflowSearchLogger(
        folder.mlflow_uri, exp, parent.info.run_id, to_dict(cfg), space.presets, 1, 0, folder
    )
    sampled = {TRIAL_NUMBER: 0, "method": "toy", "toy.weight": 0.7}
    for entry in history:
        logger.log_epoch(0, entry, sampled)
    logger.finish(0, {**history[-1], "total_epochs": len(history), "search/feasible": True})
    run_id = logger.run_id(0)
    logged = client.get_run(run_id)
    assert logged.data.params["toy.weight"] == "0.7" and "stage1.lambda_adv" not in logged.data.params
    assert [m.step for m in client.get_metric_history(run_id, "toy/class_mean")] == list(
        range(1, len(history) + 1)
    )
    tag_fronts(client, exp)
    paths = export_main(
        [
            "--experiment",
            "toy-search",
            "--select",
            run_id,
            "--out",
            str(tmp_path / "exported"),
            "--budget",
            "trial",
            "--tracking-uri",
            folder.mlflow_uri,
        ]
    )
    exported = load_yaml(paths[0])
    assert exported.method == "toy" and exported.toy.weight == 0.7 and exported.origin["run_id"] == run_id

    # and tabled
    assert "toy" in rows_of_table(2) and label("toy") == "Toy + RSLAD"


def test_unregistering_removes_the_section(toy):
    assert "toy" in preset("digits").sections
    unregister_method("toy")
    assert "toy" not in preset("digits").sections
    with pytest.raises(ConfigError, match="toy.weight: unknown key"):
        apply_overrides(preset("digits"), {"toy.weight": 1.0})
    register_method(toy)


def test_a_methods_own_term_may_not_take_a_shared_terms_name_and_a_bad_plugin_is_one_line(monkeypatch):
    from derd.errors import UserError
    from derd.registry import load_plugins
    from derd.synthesis import GENERATOR_TERMS, resolve_terms

    with pytest.raises(ValueError, match="'oh' is a shared term"):
        resolve_terms(["oh"], {"oh": lambda s: s.x.mean()})
    assert (
        set(resolve_terms(["cls", "mine"], {"mine": lambda s: s.x.mean()})) == {"cls", "mine"}
        and "cls" in GENERATOR_TERMS
    )
    monkeypatch.setenv(PLUGINS_ENV, "no_such_module_for_derd")
    with pytest.raises(UserError, match=r"^\$DERD_PLUGINS: cannot import 'no_such_module_for_derd'"):
        load_plugins()


def test_a_config_exported_before_the_shared_budget_loads_with_the_same_meaning():
    """tests/legacy holds a config exported by the code before this layout (analysis/export.py from a
    real digits search), a derd_inv config and a trial's MLflow params: the two DERD stages' lengths
    become the budget, their iterations and batch the budget's, derd_inv's keys its own section."""
    from analysis.export import config_of_run

    old = yaml.safe_load((LEGACY / "exported_trial.yaml").read_text())
    cfg = load_yaml(LEGACY / "exported_trial.yaml")
    assert cfg.method == old["method"] == "derd_no_nat"
    assert cfg.budget.epochs == old["stage1"]["epochs"] + old["stage2"]["epochs"] == 30
    assert cfg.stage1.epochs == 10 and cfg.budget.iters_per_epoch == 30 and cfg.budget.batch_size == 128
    assert (
        cfg.stage1.lambda_adv == old["stage1"]["lambda_adv"]
        and cfg.stage2.pgd_steps == old["stage2"]["pgd_steps"]
    )
    assert cfg.origin == old["origin"]
    assert [(p.stage, p.epochs) for p in get_method("derd_no_nat").phases(cfg)] == [(1, 10), (2, 20)]

    inv = load_yaml(LEGACY / "derd_inv_config.yaml")
    assert inv.derd_inv.steps == 3 and inv.derd_inv.lr == 0.2 and inv.budget.epochs == 10
    assert [(p.epochs, p.iters_per_epoch, p.batch_size) for p in get_method("derd_inv").phases(inv)] == [
        (7, 5, 32)
    ]

    params = json.loads((LEGACY / "trial_params.json").read_text())
    from_params = config_of_run(params)
    assert (
        from_params.budget.epochs == 12
        and from_params.stage1.epochs == 4
        and from_params.budget.iters_per_epoch == 20
    )
    assert from_params.stage2.lambda_nat == pytest.approx(float(params["stage2.lambda_nat"]))


def test_legacy_keys_that_disagree_are_refused_with_the_new_key_named():
    with pytest.raises(ConfigError, match="give one budget.iters_per_epoch"):
        from_dict({"stage1": {"iters_per_epoch": 10}, "stage2": {"iters_per_epoch": 20}})
    with pytest.raises(ConfigError, match=r"stage1.epochs: 40 is more than budget.epochs \(30\)"):
        apply_overrides(preset("digits"), {"stage1.epochs": 40})
