"""Runs of every registered method: tiny budgets on digits; resume, cache, divergence, configs, host syncs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import train_quick
from torch.profiler import ProfilerActivity, profile

from derd.config import ConfigError, apply_overrides, from_dict, load_yaml, preset, save_yaml, to_flat
from derd.data import available_datasets, dataset_info, dataset_spec, load_split
from derd.experts import Experts
from derd.methods import available_methods, get_method, uses_key
from derd.run import DistillationRun, TrainingDiverged

TINY = {
    "budget.epochs": 4,
    "budget.iters_per_epoch": 2,
    "budget.batch_size": 16,
    "stage1.epochs": 2,
    "stage2.pgd_steps": 2,
    "derd_inv.steps": 2,
    "robust.pgd_steps": 2,
    "cmi.synthesis_steps": 2,
    "cmi.synthesis_every": 2,
    "cmi.negatives": 8,
    "eval.every": 2,
    "student.latent_dim": 16,
    "student.generator_width": 16,
    "data.val_batch_size": 32,
    "dfhl_rs.generator_steps": 2,
    "dfhl_rs.hee_steps": 2,
    "ferd.generator_steps": 2,
    "ferd.ifd_steps": 2,
}
GOLDEN = json.loads((Path(__file__).parent / "golden_step.json").read_text())


@pytest.fixture(scope="module")
def experts():
    return Experts(train_quick(seed=1, epochs=3), train_quick(seed=2, epochs=3))


@pytest.fixture(scope="module")
def val_data():
    return torch.utils.data.Subset(load_split("digits", "val"), range(16))


def tiny(**overrides):
    return apply_overrides(preset("digits"), {**TINY, **overrides})


def _same(a: dict, b: dict) -> bool:
    keys = [k for k in a if k.startswith(("loss/", "val/", "sga/", "kd/", "dfard/"))]
    return keys == [k for k in b if k.startswith(("loss/", "val/", "sga/", "kd/", "dfard/"))] and all(
        a[k] == b[k] for k in keys
    )


@pytest.mark.parametrize("method", available_methods())
def test_every_method_runs_checkpoints_and_resumes_bit_exact(tmp_path, experts, val_data, method):
    full_run = DistillationRun(tiny(method=method), experts, val_data=val_data)
    full = full_run.run()
    assert len(full) == full_run.total_epochs >= 2
    assert {"val/clean_acc", "val/pgd_acc", "val/aa_acc"} <= set(full[-1])
    first = DistillationRun(tiny(method=method), experts, val_data=val_data)
    for result in first.epochs():
        if result["epoch"] == 1:
            first.save(tmp_path / "run.pt")
            break
    resumed = DistillationRun.resume(tmp_path / "run.pt", experts, val_data=val_data)
    rest = list(resumed.epochs())
    assert rest[0]["epoch"] == 2
    assert _same(rest[-1], full[-1])
    for a, b in zip(resumed.student.state_dict().values(), full_run.student.state_dict().values()):
        assert torch.equal(a, b)
    for run in (full_run, first, resumed):
        run.close()


@pytest.mark.parametrize("method", available_methods())
def test_every_method_diverges_with_the_term_named(experts, val_data, method):
    run = DistillationRun(tiny(method=method), experts, val_data=val_data)
    params = [p for m in [run.student, *run.method.modules.values()] for p in m.parameters()]
    with torch.no_grad():  # poison the weights: the first loss of the first epoch is not finite
        params[0].fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"loss term [\w/]+ became nan in stage [12], epoch 1$"):
        run.run()
    run.close()


def test_a_diverging_weight_names_the_weighted_total(experts, val_data):
    cfg = tiny()
    cfg.stage1.lambda_bn = 1e38  # past its range (from_dict refuses it): a run that diverges, to see it named
    run = DistillationRun(cfg, experts, val_data=val_data)
    with pytest.raises(TrainingDiverged, match="loss term G became inf in stage 1, epoch 1"):
        run.run()


@pytest.mark.parametrize("method", ["derd", "derd_no_nat", "derd_inv", "nature"])
def test_reworked_step_reproduces_the_previous_implementation(method):
    """Losses and weights of the pre-harness DERDRun (recorded by running commit cfd6a73's code, one
    thread, on the teachers stored in golden_teachers.pt: ``train_quick(seed=1|2, epochs=3)``, kept as
    files because training them rounds differently on other CPUs) within float tolerance."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _reproduce(method)
    finally:
        torch.set_num_threads(threads)


def _golden_teacher(kind: str) -> torch.nn.Module:
    from derd.models import create_model

    info = dataset_info("digits")
    model = create_model("digits_cnn_small", 10, in_channels=1, mean=info.mean, std=info.std)
    model.load_state_dict(torch.load(Path(__file__).parent / "golden_teachers.pt", weights_only=True)[kind])
    return model.eval()


def _reproduce(method: str) -> None:
    experts = Experts(_golden_teacher("natural"), _golden_teacher("robust"))
    cfg = apply_overrides(
        preset("digits"),
        {
            "budget.epochs": 2,
            "budget.iters_per_epoch": 3,
            "budget.batch_size": 16,
            "stage1.epochs": 1,
            "stage2.pgd_steps": 2,
            "derd_inv.steps": 2,
            "eval.every": 100,
            "student.latent_dim": 16,
            "student.generator_width": 16,
            "method": method,
        },
    )
    ex = Experts(None, experts.robust) if method == "derd_no_nat" else experts
    val = torch.utils.data.Subset(load_split("digits", "val"), range(8))
    run = DistillationRun(cfg, ex, val_data=val)
    history = run.run()
    gold = GOLDEN[method]
    for got, want in zip(history, gold["history"]):
        assert {k for k in got if k.startswith(("loss/", "sga/"))} == set(want)
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    state = run.student.state_dict()
    for k, v in gold["param_sums"].items():
        assert state[k].double().sum().item() == pytest.approx(v, rel=1e-4, abs=1e-5), k


def _host_reads(fn) -> int:
    """aten::_local_scalar_dense events (tensor values read on the host) outside the optimisers'
    step, whose counters are CPU tensors by design (on CUDA the generator's Adam runs fused)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()

    def in_optimizer(event) -> bool:
        while event is not None:
            if event.name.startswith("Optimizer.step"):
                return True
            event = event.cpu_parent
        return False

    return sum(1 for e in prof.events() if e.name == "aten::_local_scalar_dense" and not in_optimizer(e))


@pytest.mark.parametrize("method", ["derd", "derd_no_nat", "dafl", "cmi", "dfard", "gdfq"])
def test_a_stage_two_iteration_reads_nothing_on_the_host(experts, val_data, method):
    run = DistillationRun(tiny(method=method), experts, val_data=val_data)
    index = len(run.phases) - 1
    run.enter_phase(index)
    phase = run.phases[index]
    run.method.start_epoch(phase)
    run.method.iteration(phase, 0)  # warm-up (first CMI round, lazy hooks)
    assert (
        _host_reads(lambda: [run.method.iteration(phase, step) for step in (1, 2)]) == 0
    )  # with and without G steps
    run.close()


def test_an_epoch_reads_the_host_once(experts, val_data):
    run = DistillationRun(
        tiny(**{"eval.every": 100, "stage1.epochs": 0, "budget.epochs": 2}), experts, val_data=val_data
    )
    assert _host_reads(run.run_epoch) <= 1


def test_bf16_autocast_runs_a_tiny_digits_run_on_cpu(experts, val_data):
    run = DistillationRun(tiny(**{"train.precision": "bf16"}), experts, val_data=val_data)
    assert run.compute.bf16 and not run.compute.channels_last
    history = run.run()
    assert all(torch.isfinite(torch.tensor(v)) for k, v in history[-1].items() if k.startswith("loss/"))
    assert history[-1]["val/clean_acc"] >= 0


def test_cached_stage1_is_skipped_and_matches(tmp_path, experts, val_data):
    cache = tmp_path / "cache"
    first = DistillationRun(tiny(), experts, val_data=val_data, stage1_cache=cache)
    fresh = first.run()
    assert len(list(cache.glob("stage1-*.pt"))) == 1
    again = DistillationRun(tiny(), experts, val_data=val_data, stage1_cache=cache)
    results = list(again.epochs())
    assert [r["cached"] for r in results] == [True, True, False, False]
    assert _same(results[-1], fresh[-1])
    for a, b in zip(again.student.state_dict().values(), first.student.state_dict().values()):
        assert torch.equal(a, b)
    for shares in (tiny(**{"stage2.lambda_nat": 2.0}), tiny(method="nature")):  # same stage I
        assert list(DistillationRun(shares, experts, val_data=val_data, stage1_cache=cache).epochs())[0][
            "cached"
        ]
    for differs in (
        tiny(**{"stage1.lambda_ie": 1.0}),
        tiny(method="derd_no_nat"),
        tiny(**{"train.precision": "bf16"}),
    ):
        assert not list(DistillationRun(differs, experts, val_data=val_data, stage1_cache=cache).epochs())[0][
            "cached"
        ]


def _file_experts(teacher_args: list[str]) -> Experts:
    from derd.checkpoints import load_checkpoint

    info = dataset_info("digits")
    return Experts(load_checkpoint(teacher_args[1], info)[0], load_checkpoint(teacher_args[3], info)[0])


def _fill_cache(cfg: dict, teacher_args: list[str], val_data, cache: Path, barrier, results) -> None:
    """A trial in its own process: built, then started at the same moment as the other one."""
    run = DistillationRun(from_dict(cfg), _file_experts(teacher_args), val_data=val_data, stage1_cache=cache)
    barrier.wait()
    history = list(run.epochs())
    results.put({k: v for k, v in history[-1].items() if k.startswith(("loss/", "val/"))})


def test_two_concurrent_trials_missing_the_same_stage1_leave_one_whole_cache_entry(
    tmp_path, teacher_args, val_data
):
    """Both train the missing stage I (neither waits), both write it atomically to temporary files of
    their own; the entry left is whole, and a later trial reads it and ends where they did."""
    import multiprocessing

    from derd.config import to_dict

    cfg, cache = tiny(), tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [
        ctx.Process(target=_fill_cache, args=(to_dict(cfg), teacher_args, val_data, cache, barrier, results))
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    finals = [results.get(timeout=300) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert [p.name for p in cache.iterdir()] == [p.name for p in cache.glob("stage1-*.pt")] and len(
        finals
    ) == 2
    assert len(list(cache.iterdir())) == 1  # one entry, no temporary file left behind
    later = list(
        DistillationRun(cfg, _file_experts(teacher_args), val_data=val_data, stage1_cache=cache).epochs()
    )
    assert later[0]["cached"]
    assert _same(finals[0], finals[1]) and _same(
        finals[0], {k: v for k, v in later[-1].items() if k in finals[0]}
    )


def test_a_trial_on_a_shared_stage1_reports_only_the_compute_it_ran(tmp_path, experts, val_data):
    """trial/compute_s leaves out the stage-I epochs read from the cache (the trial that trained them
    counts them), trial/cached_epochs counts them, and a resumed run keeps that accounting."""
    from tuning.records import TRIAL_CACHED_EPOCHS
    from tuning.trainable import Reports

    objectives = [("val/clean_acc", "max"), ("val/aa_acc", "max")]
    cache = tmp_path / "cache"

    def reported(run: DistillationRun) -> list[dict]:
        reports = Reports(objectives, 0.0, run.total_epochs)
        out = []
        for result in run.epochs():
            out.append(reports.next(result, run.history))
        return out

    first = reported(DistillationRun(tiny(), experts, val_data=val_data, stage1_cache=cache))
    run = DistillationRun(tiny(**{"stage2.lambda_nat": 2.0}), experts, val_data=val_data, stage1_cache=cache)
    shared = reported(run)
    own = [h for h in run.history if not h["cached"]]
    assert [h["cached"] for h in run.history] == [True, True, False, False]
    assert shared[-1][TRIAL_CACHED_EPOCHS] == 2 and first[-1][TRIAL_CACHED_EPOCHS] == 0
    assert shared[-1]["trial/compute_s"] == pytest.approx(
        sum(h["time/epoch_s"] + h.get("time/eval_s", 0.0) for h in own)
    )
    assert first[-1]["trial/compute_s"] > sum(
        h["time/epoch_s"] for h in first[:2]
    )  # the trainer counts stage I
    run.save(tmp_path / "run.pt")
    resumed = DistillationRun.resume(tmp_path / "run.pt", experts, val_data=val_data)
    assert [h["cached"] for h in resumed.history] == [True, True, False, False]


def test_a_damaged_stage1_cache_entry_is_trained_again_not_trusted(tmp_path, experts, val_data, capsys):
    cache = tmp_path / "cache"
    reference = DistillationRun(tiny(), experts, val_data=val_data, stage1_cache=cache).run()
    entry = next(cache.glob("stage1-*.pt"))
    entry.write_bytes(entry.read_bytes()[:100])  # truncated, as a full disk or a killed copy leaves it
    again = list(DistillationRun(tiny(), experts, val_data=val_data, stage1_cache=cache).epochs())
    assert not again[0]["cached"] and _same(again[-1], reference[-1])
    assert "warning:" in capsys.readouterr().err and torch.load(entry, weights_only=True)["epoch"] == 2


def test_baselines_get_derds_budget_in_student_updates(experts, val_data):
    derd = DistillationRun(tiny(), experts, val_data=val_data)
    for method in [
        m for m in available_methods() if get_method(m).table == 2 and m != "derd"
    ]:  # the baselines
        run = DistillationRun(tiny(method=method), experts, val_data=val_data)
        assert sum(p.epochs * p.iters_per_epoch for p in run.phases) == sum(
            p.epochs * p.iters_per_epoch for p in derd.phases
        )
        assert run.phases[0].stage == 2 and run.warmup_epochs == 0
        run.close()


def test_stage_one_cosine_reaches_zero_at_its_end_with_several_student_steps(experts, val_data):
    """The cosine runs over every student update: with stage1.student_steps = 3 the learning rate
    falls to zero at the last update of stage I, not a third of the way through (nor restarts)."""
    run = DistillationRun(tiny(**{"stage1.epochs": 1, "stage1.student_steps": 3}), experts, val_data=val_data)
    lrs = []
    original = run.ctx.trainer.step

    def step():
        original()
        lrs.append(run.ctx.trainer.optimizer.param_groups[0]["lr"])

    run.ctx.trainer.step = step
    next(run.epochs())
    run.close()
    updates = 3 * run.phases[0].iters_per_epoch
    assert len(lrs) == updates
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone: no restart inside the stage
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and lrs[updates // 2] > 0.2 * run.phases[0].lr_s


def test_every_method_file_registers_its_methods_and_the_run_config_has_their_sections():
    """Checked against the registry, not a list: each file of derd/methods (but base and registry) registers
    a method, in the tables' order, with a label, teachers, a docstring that names its source, and sections."""
    import importlib
    import pkgutil

    import derd.methods.base
    from derd.methods.registry import FRAMEWORK_MODULES

    names = available_methods()
    assert len(names) == len(set(names)) >= 10 and names[0] == "derd"
    assert [get_method(n).order for n in names] == sorted(get_method(n).order for n in names)
    folder = Path(derd.methods.base.__file__).parent
    for module in pkgutil.iter_modules([str(folder)]):
        if module.name not in FRAMEWORK_MODULES:
            mod = importlib.import_module(f"derd.methods.{module.name}")
            assert any(get_method(n).__module__ == mod.__name__ for n in names), module.name
            assert len(mod.__doc__ or "") > 200, f"{module.name}: its docstring names its paper and code"
    sections = preset("digits").sections
    for method in names:
        cls = get_method(method)
        assert cls.label and set(cls.teachers) <= {"natural", "robust"} and cls.table in (1, 2, 3)
        assert set(cls.sections) <= set(sections)


def _methods_table() -> list[list[str]]:
    text = (Path(__file__).resolve().parent.parent / "docs" / "methods.md").read_text()
    section = text.split("## The registered methods", 1)[1].split("\n## ", 1)[0]
    rows = [
        line for line in section.splitlines() if line.startswith("| `") and not line.startswith("| `method`")
    ]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip().strip("|"))] for row in rows]


def test_the_docs_methods_table_lists_the_registry():
    """One row per registered method, in its order, its teachers and config sections as the class says."""
    rows = _methods_table()
    assert [r[0].strip("`") for r in rows] == available_methods()
    for row in rows:
        cls = get_method(row[0].strip("`"))
        teachers = {"T_nat": "natural", "T_rob": "robust"}
        assert tuple(
            t for t in ("natural", "robust") if t in {teachers[c.strip()] for c in row[4].split(",")}
        ) == tuple(t for t in ("natural", "robust") if t in cls.teachers), row[0]
        assert [c.strip().strip("`") for c in row[5].split(",")] == list(cls.sections), row[0]


def test_methods_declare_what_they_read():
    assert list(get_method("dafl").sections) == ["dafl", "robust"] and list(get_method("derd").sections) == [
        "stage1",
        "stage2",
    ]
    assert uses_key("dafl", "dafl.lambda_act") and not uses_key("dafl", "stage2.lambda_nat")
    assert (
        uses_key("dafl", "budget.epochs")
        and uses_key("dafl", "student.arch")
        and uses_key("derd", "stage1.lambda_ie")
    )
    assert not uses_key("derd", "cmi.lambda_cr")
    needs_natural = {m for m in available_methods() if "natural" in get_method(m).teachers}
    assert needs_natural == {"derd", "derd_inv", "nature"}


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^stage1\.lambda_foo: unknown key"):
        from_dict({"stage1": {"lambda_foo": 1}})
    with pytest.raises(ConfigError, match=r"^stage2\.epochs: expected int"):
        from_dict({"stage2": {"epochs": "many"}})
    with pytest.raises(ConfigError, match=r"^stage2\.lambda_sga: -1.0 is below its minimum"):
        from_dict({"stage2": {"lambda_sga": -1}})
    with pytest.raises(ConfigError, match=r"^method: 'gan' is not one of derd, "):
        from_dict({"method": "gan"})
    with pytest.raises(ConfigError, match=r"^variant: the old name of method"):
        from_dict({"method": "derd", "variant": "nature"})
    (tmp_path / "bad.yaml").write_text("stage1: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")


def test_presets_carry_the_paper_weights_and_yaml_round_trips(tmp_path):
    for dataset in available_datasets():
        flat = to_flat(preset(dataset))
        assert all(flat[k] == pytest.approx(v) for k, v in dataset_spec(dataset).budget.items())
        for method in available_methods():  # every method's published weights, DERD's from the paper
            assert all(
                flat[k] == pytest.approx(v) for k, v in get_method(method).presets.get(dataset, {}).items()
            )
    assert (
        to_flat(preset("cifar100"))["stage1.lambda_ie"] == 20
        and get_method("derd").presets["cifar10"]["stage2.lambda_nat"] == 0.5
    )
    cfg = tiny(seed=3, method="zskt")
    save_yaml(cfg, tmp_path / "c.yaml")
    assert load_yaml(tmp_path / "c.yaml") == cfg
    (tmp_path / "partial.yaml").write_text(
        yaml.safe_dump({"data": {"dataset": "cifar100"}, "stage1": {"lambda_adv": 1e-3}})
    )
    partial = to_flat(load_yaml(tmp_path / "partial.yaml"))
    assert partial["stage1.lambda_adv"] == 1e-3 and partial["stage1.lambda_ie"] == 20
    (tmp_path / "old.yaml").write_text(
        yaml.safe_dump({"variant": "derd_no_nat"})
    )  # exported before the rename
    assert load_yaml(tmp_path / "old.yaml").method == "derd_no_nat"


def test_train_cli_writes_the_table_and_figures(tmp_path, experts):
    from derd.checkpoints import save_checkpoint
    from derd.train import main

    for kind, model in (("natural", experts.natural), ("robust", experts.robust)):
        save_checkpoint(
            tmp_path / f"{kind}.pt", model, {"arch": "digits_cnn_small", "num_classes": 10, "kind": kind}
        )
    cfg = tiny(**{"eval.every": 2, "data.val_batch_size": 128})
    save_yaml(cfg, tmp_path / "c.yaml")
    main(
        [
            "--config",
            str(tmp_path / "c.yaml"),
            "--out",
            str(tmp_path / "out"),
            "--protocol",
            "search",
            "--teacher-natural",
            str(tmp_path / "natural.pt"),
            "--teacher-robust",
            str(tmp_path / "robust.pt"),
        ]
    )
    out = tmp_path / "out"
    for name in (
        "student.pt",
        "generator.pt",
        "run.pt",
        "table.json",
        "table.md",
        "samples.png",
        "accuracy.png",
        "config.yaml",
    ):
        assert (out / name).is_file(), name
    assert "| Clean | PGD_S | AA |" in (out / "table.md").read_text()


def test_ctrl_c_in_train_says_how_to_resume_in_one_line_and_keeps_the_state(tmp_path, experts):
    import signal
    import subprocess
    import sys
    import time

    from derd.checkpoints import save_checkpoint

    for kind, model in (("natural", experts.natural), ("robust", experts.robust)):
        save_checkpoint(
            tmp_path / f"{kind}.pt", model, {"arch": "digits_cnn_small", "num_classes": 10, "kind": kind}
        )
    cfg = tiny(
        **{
            "budget.epochs": 32,
            "budget.iters_per_epoch": 4,
            "eval.every": 100,
            "teachers.natural": str(tmp_path / "natural.pt"),
            "teachers.robust": str(tmp_path / "robust.pt"),
        }
    )
    save_yaml(cfg, tmp_path / "c.yaml")
    cmd = [
        sys.executable,
        "-m",
        "derd.train",
        "--config",
        str(tmp_path / "c.yaml"),
        "--out",
        str(tmp_path / "out"),
        "--protocol",
        "search",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "out" / "run.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted; run the same command again") and "Traceback" not in err
    epoch = torch.load(tmp_path / "out" / "run.pt", weights_only=True)["epoch"]
    assert 1 <= epoch < 32


def test_folded_teachers_train_like_the_unfolded_ones(experts, val_data):
    """train.fold_teachers: the same run (L_bn through folded layers followed by in-place ReLUs,
    PGD and the generator's adversary through the teachers) to float rounding."""
    plain = DistillationRun(tiny(**{"train.fold_teachers": "off"}), experts, val_data=val_data)
    folded = DistillationRun(tiny(**{"train.fold_teachers": "on"}), experts, val_data=val_data)
    assert not plain.compute.fold_teachers and folded.compute.fold_teachers
    assert any(type(m).__name__ == "FoldedBatchNorm" for m in folded.experts.natural.modules())
    assert not any(
        type(m).__name__ == "FoldedBatchNorm" for m in experts.natural.modules()
    )  # the caller's teacher stays
    a, b = plain.run()[-1], folded.run()[-1]
    for run in (plain, folded):
        run.close()
    for key in a:
        if key.startswith(("loss/", "sga/")):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-4), key


def test_compile_is_off_on_the_cpu_by_default_and_a_compiled_run_matches_the_eager_one(experts, val_data):
    """train.compile: auto compiles on CUDA only. Compiled on the CPU (Inductor), DERD w/o T_nat (its frozen
    student refreshed every epoch) gives the eager run's losses and scores, and logs the compile time of
    each phase's first epoch; evaluation runs eagerly."""
    assert DistillationRun(tiny(), experts, val_data=val_data).compute.compile is False
    eager = DistillationRun(tiny(method="derd_no_nat"), experts, val_data=val_data)
    compiled = DistillationRun(
        tiny(method="derd_no_nat", **{"train.compile": "on"}), experts, val_data=val_data
    )
    want, got = eager.run(), compiled.run()
    for run in (eager, compiled):
        run.close()
    assert [h.get("time/compile_s") is not None for h in got] == [True, False, True, False]
    assert all(h.get("time/compile_s", 1.0) > 0 for h in got) and "time/compile_s" not in want[0]
    for key in want[-1]:
        if key.startswith(("loss/", "val/")):
            assert got[-1][key] == pytest.approx(want[-1][key], rel=1e-3, abs=1e-4), key


def test_configs_written_before_compile_had_auto_still_load():
    assert from_dict({"train": {"compile": False}}).train.compile == "off"
    assert from_dict({"train": {"compile": True}}).train.compile == "on"
    # a bare on/off in YAML is a bool: it keeps its meaning in every switch
    train = from_dict(yaml.safe_load("train: {compile: off, fold_teachers: off, channels_last: on}")).train
    assert (train.compile, train.fold_teachers, train.channels_last) == ("off", "off", "on")
