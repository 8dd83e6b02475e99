"""DERD runs: tiny budgets on digits; resume, the stage-I cache, variants, divergence, configs."""
from __future__ import annotations

import pytest
import torch
import yaml

from derd.config import ConfigError, PAPER_WEIGHTS, apply_overrides, from_dict, load_yaml, preset, save_yaml, to_flat
from derd.data import load_split
from derd.method import DERDRun, Experts, TrainingDiverged
from derd.teachers import save_checkpoint

from conftest import train_quick

TINY = {
    "stage1.epochs": 2, "stage1.iters_per_epoch": 2, "stage1.batch_size": 16,
    "stage2.epochs": 2, "stage2.iters_per_epoch": 2, "stage2.batch_size": 16, "stage2.pgd_steps": 2,
    "stage2.inversion_steps": 2, "eval.every": 1, "student.latent_dim": 16, "student.generator_width": 16,
    "data.val_batch_size": 32,
}


@pytest.fixture(scope="module")
def experts():
    return Experts(train_quick(seed=1, epochs=3), train_quick(seed=2, epochs=3))


@pytest.fixture(scope="module")
def val_data():
    return torch.utils.data.Subset(load_split("digits", "val"), range(32))


def tiny(**overrides):
    return apply_overrides(preset("digits"), {**TINY, **overrides})


def _same(a: dict, b: dict) -> bool:
    keys = [k for k in a if k.startswith(("loss/", "val/", "sga/"))]
    return keys == [k for k in b if k.startswith(("loss/", "val/", "sga/"))] and all(a[k] == b[k] for k in keys)


@pytest.mark.parametrize("stop_after", [1, 3])
def test_resumed_run_repeats_the_uninterrupted_one(tmp_path, experts, val_data, stop_after):
    full = DERDRun(tiny(), experts, val_data=val_data).run()
    first = DERDRun(tiny(), experts, val_data=val_data)
    for result in first.epochs():
        if result["epoch"] == stop_after:
            first.save(tmp_path / "run.pt")
            break
    resumed = DERDRun.resume(tmp_path / "run.pt", experts, val_data=val_data)
    assert resumed.epoch == stop_after
    rest = list(resumed.epochs())
    assert rest[0]["epoch"] == stop_after + 1
    assert _same(rest[0], full[stop_after]) and _same(rest[-1], full[-1])


def test_cached_stage1_is_skipped_and_matches(tmp_path, experts, val_data):
    cache = tmp_path / "cache"
    first = DERDRun(tiny(), experts, val_data=val_data, stage1_cache=cache)
    fresh = first.run()
    assert len(list(cache.glob("stage1-*.pt"))) == 1
    other = tiny(**{"stage2.lambda_nat": 2.0})  # stage-II weights do not change the key
    again = DERDRun(tiny(), experts, val_data=val_data, stage1_cache=cache)
    results = list(again.epochs())
    assert [r["cached"] for r in results] == [True, True, False, False]
    assert _same(results[-1], fresh[-1])
    for a, b in zip(again.student.state_dict().values(), first.student.state_dict().values()):
        assert torch.equal(a, b)
    assert list(DERDRun(other, experts, val_data=val_data, stage1_cache=cache).epochs())[0]["cached"]
    changed = tiny(**{"stage1.lambda_ie": 1.0})
    assert not list(DERDRun(changed, experts, val_data=val_data, stage1_cache=cache).epochs())[0]["cached"]


@pytest.mark.parametrize("variant", ["derd", "derd_inv", "derd_no_nat", "nature"])
def test_every_variant_runs_a_tiny_budget(experts, val_data, variant):
    ex = Experts(None, experts.robust) if variant == "derd_no_nat" else experts
    run = DERDRun(tiny(variant=variant), ex, val_data=val_data)
    history = run.run()
    assert len(history) == (2 if variant == "derd_inv" else 4)
    last = history[-1]
    assert {"val/clean_acc", "val/pgd_acc", "val/aa_acc"} <= set(last)
    robust_terms = {"loss/rob", "loss/cons", "sga/conflict_frac"}
    assert robust_terms.isdisjoint(last) if variant == "nature" else robust_terms <= set(last)
    run.close()


def test_a_diverging_loss_stops_the_run_with_the_term_named(experts, val_data):
    run = DERDRun(tiny(**{"stage1.lambda_bn": 1e38}), experts, val_data=val_data)
    with pytest.raises(TrainingDiverged, match="loss term .* became (inf|nan) in stage 1, epoch 1"):
        run.run()


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^stage1\.lambda_foo: unknown key"):
        from_dict({"stage1": {"lambda_foo": 1}})
    with pytest.raises(ConfigError, match=r"^stage2\.epochs: expected int"):
        from_dict({"stage2": {"epochs": "many"}})
    with pytest.raises(ConfigError, match=r"^stage2\.lambda_sga: -1.0 is below its minimum"):
        from_dict({"stage2": {"lambda_sga": -1}})
    with pytest.raises(ConfigError, match=r"^variant: 'gan' is not one of"):
        from_dict({"variant": "gan"})
    (tmp_path / "bad.yaml").write_text("stage1: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")


def test_presets_carry_the_paper_weights_and_yaml_round_trips(tmp_path):
    for dataset, weights in PAPER_WEIGHTS.items():
        flat = to_flat(preset(dataset))
        assert all(flat[k] == pytest.approx(v) for k, v in weights.items())
    cfg = tiny(seed=3)
    save_yaml(cfg, tmp_path / "c.yaml")
    assert load_yaml(tmp_path / "c.yaml") == cfg
    (tmp_path / "partial.yaml").write_text(yaml.safe_dump({"data": {"dataset": "cifar100"}, "stage1": {"lambda_adv": 1e-3}}))
    partial = to_flat(load_yaml(tmp_path / "partial.yaml"))
    assert partial["stage1.lambda_adv"] == 1e-3 and partial["stage1.lambda_ie"] == 20


def test_train_cli_writes_the_table_and_figures(tmp_path, experts, digits_info):
    from derd.train import main

    for kind, model in (("natural", experts.natural), ("robust", experts.robust)):
        save_checkpoint(tmp_path / f"{kind}.pt", model, {"arch": "digits_cnn_small", "num_classes": 10, "kind": kind})
    cfg = tiny(**{"teachers.natural": str(tmp_path / "natural.pt"), "teachers.robust": str(tmp_path / "robust.pt"), "eval.every": 2})
    save_yaml(cfg, tmp_path / "c.yaml")
    main(["--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out"), "--protocol", "search"])
    out = tmp_path / "out"
    for name in ("student.pt", "generator.pt", "run.pt", "table.json", "table.md", "samples.png", "accuracy.png", "config.yaml"):
        assert (out / name).is_file(), name
    assert "| Clean | PGD_S | AA |" in (out / "table.md").read_text()
