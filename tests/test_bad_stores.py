"""Bad stores and bad search folders: every CLI that opens an MLflow store, a study or a search folder
answers a broken one with one line that names the store and the fix, exit code 2, and writes nothing
(no file, no folder, no table created in an existing file); a resume refuses what it cannot continue;
and values holding quotes (a folder named o'brien) reach MLflow's filters intact."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from conftest import TINY_BASE, write_space
from test_bad_input import ENTRY, Marker

NAME = "derd-digits"


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> list[str]:
    """Teacher flags naming untrained digits checkpoints: every check here runs before a teacher is used,
    so none is worth conftest's seconds of training."""
    from derd.checkpoints import save_checkpoint
    from derd.models import create_model

    folder = tmp_path_factory.mktemp("teachers")
    for kind in ("natural", "robust"):
        save_checkpoint(
            folder / f"{kind}.pt",
            create_model("digits_cnn_small", 10, in_channels=1),
            {"arch": "digits_cnn_small", "num_classes": 10, "kind": kind},
        )
    return ["--teacher-natural", str(folder / "natural.pt"), "--teacher-robust", str(folder / "robust.pt")]


@pytest.fixture(scope="module")
def template(tmp_path_factory, teachers) -> Path:
    """A search folder as a killed driver leaves it: search.json (one session), space.yaml, a study
    with two finished trials and one still running, the MLflow store with the search's parent run."""
    from mlflow.tracking import MlflowClient

    from tuning.records import SearchFolder, Tag
    from tuning.searcher import open_study
    from tuning.space import SearchSpace

    folder = SearchFolder(tmp_path_factory.mktemp("template") / "s")
    folder.root.mkdir()
    space_file = write_space(
        folder.space,
        base={**TINY_BASE, "teachers.natural": teachers[1], "teachers.robust": teachers[3]},
        search={"num_trials": 3, "max_concurrent": 1, "scheduler": "none"},
    )
    space = SearchSpace.from_yaml(space_file)
    space_file.write_text(space.to_yaml())  # as the search writes it
    study = open_study(space, folder.optuna_uri, NAME)
    for value in (50.0, 60.0):
        trial = study.ask()
        trial.suggest_float("stage1.lambda_adv", 1e-3, 1.0, log=True)
        study.tell(trial, [value, value / 5])
    study.ask()  # trial 2: running when the driver died
    client = MlflowClient(folder.mlflow_uri)
    exp_id = client.create_experiment(NAME, artifact_location=folder.artifacts.as_uri())
    client.create_run(
        exp_id, run_name=f"search-{NAME}", tags={Tag.SEARCH_DIR: str(folder.root), Tag.KIND: "search"}
    )
    (folder.trials / "0002").mkdir(parents=True)
    folder.record.write_text(
        json.dumps(
            {
                "name": NAME,
                "dataset": "digits",
                "out": str(folder.root),
                "tracking_uri": folder.mlflow_uri,
                "created": 0.0,
                "sessions": [{"start": 0.0, "wall_s": 1.0}],
            }
        )
    )
    return folder.root


def copy_search(template: Path, to: Path, *, relocated: bool = True, record: dict | None = None) -> Path:
    """A copy of the template search; ``relocated``: its record names where it is now (as relocate.py
    leaves it), else where it was copied from; ``record``: keys to change in search.json."""
    shutil.copytree(template, to)
    data = json.loads((to / "search.json").read_text())
    if relocated:
        data.update(out=str(to), tracking_uri=f"sqlite:///{to / 'mlflow.db'}")
    (to / "search.json").write_text(json.dumps({**data, **(record or {})}))
    return to


@pytest.fixture()
def as_user(monkeypatch):
    """Root may write anywhere, so os.access ignores a folder's mode bits for it: as root, answer as a
    user would (the owner's write bit), so that read-only copies are read-only."""
    if os.geteuid() == 0:
        real = os.access

        def access(path, mode, *args, **kwargs):
            if mode & os.W_OK and Path(path).exists() and not os.stat(path).st_mode & stat.S_IWUSR:
                return False
            return real(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)


def _read_only(*paths: Path) -> None:
    for path in paths:
        for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
            p.chmod(p.stat().st_mode & ~0o222)


@pytest.fixture()
def bad(tmp_path, template, as_user):
    """The broken stores and search folders of the catalogue, in a folder the test watches."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "empty.db").write_bytes(b"")
    (d / "text.db").write_text("not a database\n")
    shutil.copy(template / "mlflow.db", d / "cut.db")
    _truncate(d / "cut.db")
    shutil.copy(template / "optuna.db", d / "optuna_copy.db")  # an SQLite file of another program
    (d / "storage.txt").write_text("not a folder\n")
    for name, keep in (("mlflow_cut", 0.5), ("mlflow_empty", 0.0)):
        _truncate(copy_search(template, d / name, relocated=False) / "mlflow.db", keep)
    (copy_search(template, d / "mlflow_text", relocated=False) / "mlflow.db").write_text("SQLite? no\n")
    _read_only(copy_search(template, d / "read_only", relocated=False))
    # resumes
    for name in (
        "optuna_cut",
        "optuna_empty",
        "optuna_text",
        "no_optuna",
        "no_mlflow",
        "resume_mlflow_cut",
        "resume_mlflow_empty",
        "trials_read_only",
        "num_trials",
    ):
        copy_search(template, d / name)
    _truncate(d / "optuna_cut" / "optuna.db")
    _truncate(d / "optuna_empty" / "optuna.db", 0.0)
    (d / "optuna_text" / "optuna.db").write_text("hello\n")
    (d / "no_optuna" / "optuna.db").unlink()
    (d / "no_mlflow" / "mlflow.db").unlink()
    _truncate(d / "resume_mlflow_cut" / "mlflow.db")
    _truncate(d / "resume_mlflow_empty" / "mlflow.db", 0.0)
    _read_only(d / "trials_read_only" / "trials")
    copy_search(template, d / "dataset", record={"dataset": "cifar10"})
    copy_search(template, d / "record_list")
    (d / "record_list" / "search.json").write_text("[]")
    copy_search(template, d / "record_out", record={"out": 5})
    copy_search(template, d / "record_sessions", record={"sessions": [{"start": 0}]})
    copy_search(template, d / "record_relative", record={"out": "runs/s"})
    return d


def _cases(d: Path, teachers: list[str]) -> list[tuple[str, list[str], str, dict[str, str]]]:
    """(cli, argv, what the one error line says, environment)."""
    out = str(d.parent / "out")
    fab = ["--experiment", NAME]
    export = ["--select", "knee", "--out", out]
    return [
        # 6. broken SQLite stores, before MLflow or Optuna opens them (and creates tables in them)
        ("export", [*fab, *export, "--tracking-uri", f"sqlite:///{d / 'empty.db'}"], "is an empty file", {}),
        ("pareto", [*fab, "--tracking-uri", f"sqlite:///{d / 'empty.db'}"], "is an empty file", {}),
        ("pareto", [*fab, "--tracking-uri", f"sqlite:///{d / 'cut.db'}"], "is cut short", {}),
        ("report", [*fab, "--tracking-uri", f"sqlite:///{d / 'text.db'}"], "is not an SQLite database", {}),
        (
            "export",
            [*fab, *export, "--tracking-uri", f"sqlite:///{d / 'optuna_copy.db'}"],
            "an SQLite database of something else (no experiments table)",
            {},
        ),
        (
            "export",
            [*fab, *export, "--tracking-uri", f"sqlite:///{d / 'mlflow_cut' / 'mlflow.db'}"],
            "is cut short",
            {},
        ),
        ("relocate", ["--out", str(d / "mlflow_cut")], "is cut short", {}),
        ("relocate", ["--out", str(d / "mlflow_empty")], "is an empty file", {}),
        ("relocate", ["--out", str(d / "mlflow_text")], "is not an SQLite database", {}),
        ("relocate", ["--out", str(d / "read_only")], "is read-only, and relocating rewrites it", {}),
        ("search", ["--out", str(d / "optuna_cut"), "--resume"], "the study", {}),
        ("search", ["--out", str(d / "optuna_cut"), "--resume", "--max-concurrent", "2"], "is cut short", {}),
        ("search", ["--out", str(d / "optuna_empty"), "--resume"], "is an empty file", {}),
        ("search", ["--out", str(d / "optuna_text"), "--resume"], "is not an SQLite database", {}),
        ("search", ["--out", str(d / "resume_mlflow_cut"), "--resume"], "the MLflow store", {}),
        ("search", ["--out", str(d / "resume_mlflow_empty"), "--resume"], "is an empty file", {}),
        # 6. tracking URIs no MLflow store answers at, and Ray storage that is no folder
        ("search", ["--mlflow-uri", "ftp://example.com/x", *teachers, "--out", out], "the scheme ftp://", {}),
        ("search", ["--mlflow-uri", "not a uri", *teachers, "--out", out], "a bare word or path", {}),
        ("search", ["--mlflow-uri", "http://[::1", *teachers, "--out", out], "is not a valid URI", {}),
        (
            "search",
            ["--mlflow-uri", "http://127.0.0.1:notaport", *teachers, "--out", out],
            "is not a valid URI",
            {},
        ),
        (
            "search",
            [*teachers, "--out", out],
            "$MLFLOW_TRACKING_URI garbage",
            {"MLFLOW_TRACKING_URI": "garbage"},
        ),
        ("export", [*fab, *export], "$MLFLOW_TRACKING_URI ftp://x", {"MLFLOW_TRACKING_URI": "ftp://x"}),
        ("pareto", [*fab, "--tracking-uri", "bogus://x"], "the scheme bogus://", {}),
        ("report", [*fab, "--tracking-uri", "http://[::1"], "is not a valid URI", {}),
        ("search", ["--storage-path", str(d / "storage.txt"), *teachers, "--out", out], "--storage-path", {}),
        ("search", ["--storage-path", "bogus://x", *teachers, "--out", out], "unknown scheme bogus://", {}),
        # 11. a new store in a folder that does not exist
        (
            "search",
            ["--mlflow-uri", f"sqlite:///{d / 'missing' / 'x.db'}", *teachers, "--out", out],
            f"the folder {d / 'missing'} does not exist",
            {},
        ),
        # 7. what a resume must refuse
        (
            "search",
            ["--out", str(d / "no_optuna"), "--resume"],
            "optuna.db is missing, though this search ran",
            {},
        ),
        (
            "search",
            ["--out", str(d / "no_mlflow"), "--resume"],
            "mlflow.db is missing, though this search ran",
            {},
        ),
        ("search", ["--out", str(d / "dataset"), "--resume"], "is a search of cifar10 but", {}),
        (
            "search",
            ["--out", str(d / "num_trials"), "--resume", "--num-trials", "1"],
            "--num-trials 1 is below the 3 trials",
            {},
        ),
        (
            "search",
            ["--out", str(d / "num_trials"), "--resume", "--num-trials", "2"],
            "pass --num-trials 3 or more",
            {},
        ),
        ("search", ["--out", str(d / "trials_read_only"), "--resume"], "is read-only", {}),
        (
            "search",
            ["--out", str(d / "record_list"), "--resume"],
            "holds a JSON list, not a search record",
            {},
        ),
        ("search", ["--out", str(d / "record_out"), "--resume"], "its 'out' is 5, not a string", {}),
        (
            "search",
            ["--out", str(d / "record_sessions"), "--resume"],
            "its 'sessions'[0] is not a session",
            {},
        ),
        ("search", ["--out", str(d / "record_relative"), "--resume"], "not the absolute path", {}),
        ("relocate", ["--out", str(d / "record_out")], "its 'out' is 5, not a string", {}),
        ("relocate", ["--out", str(d / "record_list")], "holds a JSON list", {}),
    ]


def _state(folder: Path) -> dict[Path, tuple[int, int]]:
    """Every path under ``folder`` with its size and modification time: a table created inside an
    existing file shows as a change."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_every_bad_store_gives_one_line_exit_2_and_writes_nothing(bad, teachers, capsys, monkeypatch):
    cases = _cases(bad, teachers)
    assert len({(cli, tuple(a), tuple(e.items())) for cli, a, _, e in cases}) == len(cases)  # distinct
    watched = bad.parent
    failures = []
    for cli, argv, message, env in cases:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        before = _state(watched)
        with pytest.raises(SystemExit) as exc:
            importlib.import_module(ENTRY[cli]).main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        after = _state(watched)
        written = sorted(str(p) for p in after if before.get(p) != after[p])
        ok = (
            exc.value.code == 2
            and len(err) == 1
            and err[0].startswith("error:")
            and message in err[0]
            and not written
        )
        if not ok:
            failures.append((cli, argv, env, exc.value.code, err, written))
    assert not failures, "\n".join(map(str, failures))


@pytest.mark.parametrize("damage", ["cut short", "pickled code"])
def test_a_running_trials_unreadable_checkpoint_is_set_aside_with_a_warning(
    tmp_path, template, damage, capsys
):
    """The plan finds it and writes nothing; the search's first write moves it aside with one warning
    line, so the trial restarts from its start; the pickled code never runs."""
    from tuning.checks import set_aside
    from tuning.plan import build_parser, plan_search

    folder = copy_search(template, tmp_path / "s")
    checkpoint, marker = folder / "trials" / "0002" / "run.pt", tmp_path / "pwned"
    if damage == "cut short":
        torch.save({"format": "derd-run/2", "weights": torch.zeros(1000)}, checkpoint)
        _truncate(checkpoint)
    else:
        torch.save({"format": "derd-run/2", "x": Marker(marker)}, checkpoint)
    before = _state(folder)
    plan = plan_search(build_parser().parse_args(["--out", str(folder), "--resume"]))
    assert [path for path, _ in plan.unreadable] == [checkpoint] and _state(folder) == before
    capsys.readouterr()
    set_aside(plan.unreadable)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: trial 0002 restarts from its start: ")
    assert ("pickled code" in err[0]) == (damage == "pickled code")
    assert not checkpoint.exists() and (checkpoint.parent / "run.pt.unreadable").is_file()
    assert not marker.exists()


def test_a_whole_search_folder_resumes_its_plan(tmp_path, template):
    """The template itself passes every resume check (the catalogue's refusals are the damage alone)."""
    from tuning.plan import build_parser, plan_search

    folder = copy_search(template, tmp_path / "s")
    plan = plan_search(build_parser().parse_args(["--out", str(folder), "--resume", "--num-trials", "4"]))
    assert plan.resume and plan.space.num_trials == 4 and plan.unreadable == [] and plan.name == NAME


# ---- 10. values with quotes in MLflow's filters -----------------------------------------------------
AWKWARD = ["o'brien", 'say "hi"', "both ' and \"", "ends in \\", "a%b_c", "/tmp/plain/folder"]


def test_every_value_has_a_filter_that_mlflows_parser_reads_back_exactly():
    from mlflow.utils.search_utils import SearchUtils

    from tuning.store import tag_clause

    for value in AWKWARD:
        clause, exact = tag_clause("derd.search_dir", value)
        parsed = SearchUtils.parse_search_filter(f"{clause} and tags.`derd.kind` = 'search'")
        assert [p["key"] for p in parsed] == ["derd.search_dir", "derd.kind"]
        if exact:
            assert parsed[0]["comparator"] == "=" and parsed[0]["value"] == value
        else:
            assert parsed[0]["comparator"] == "LIKE" and value in ("both ' and \"", "ends in \\")


def test_runs_tagged_finds_exactly_the_run_with_each_awkward_value(tmp_path, template):
    from mlflow.tracking import MlflowClient

    from tuning.store import runs_tagged

    shutil.copy(
        template / "mlflow.db", tmp_path / "mlflow.db"
    )  # a real SQLite store, without its migrations' time
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("x")
    ids = {
        value: client.create_run(exp, tags={"derd.search_dir": value, "derd.kind": "search"}).info.run_id
        for value in [*AWKWARD, "o_brien", "aXb_c", "both x and x", "O'BRIEN"]
    }  # LIKE's and case's near misses
    for value in AWKWARD:
        found = runs_tagged(client, [exp], {"derd.search_dir": value, "derd.kind": "search"})
        assert [r.info.run_id for r in found] == [ids[value]], value
        assert [
            r.info.run_id for r in runs_tagged(client, [exp], {"derd.search_dir": value}, max_results=1)
        ] == [ids[value]]
    assert runs_tagged(client, [exp], {"derd.search_dir": "o'brien"}, status="FINISHED") == []


def test_a_search_folder_with_an_apostrophe_finds_its_runs_again(tmp_path, template):
    """Every filter the search and the report write, over a folder named o'brien: the search's parent
    run and a trial's run are found again (a resume never makes a second one), trials are listed, and a
    final training is recorded once."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from analysis.report import add_training
    from analysis.trials import search_parents, trial_records
    from derd.config import to_dict
    from tuning.mlflow_logger import MLflowSearchLogger
    from tuning.parent import mlflow_parent
    from tuning.records import SearchFolder
    from tuning.space import SearchSpace

    folder = SearchFolder(tmp_path / "o'brien's \"runs\"")
    folder.root.mkdir()
    shutil.copy(template / "space.yaml", folder.space)
    shutil.copy(template / "mlflow.db", folder.mlflow_db)  # an existing store: the search adds its experiment
    space = SearchSpace.from_yaml(folder.space)
    plan = SimpleNamespace(
        tracking_uri=folder.mlflow_uri,
        name="o'brien's search",
        folder=folder,
        out=folder.root,
        space=space,
        base_config={"teachers": {"natural": None, "robust": None}},
    )
    exp_id, parent = mlflow_parent(plan, {}, 0.0)
    assert mlflow_parent(plan, {}, 0.0) == (exp_id, parent)
    assert [p.name for p in folder.artifacts.rglob("*.yaml")] == [
        "space.yaml"
    ]  # in the folder, %-encoded URI read back
    logger = MLflowSearchLogger(
        folder.mlflow_uri, exp_id, parent, to_dict(space.base_config()), space.presets, 1, 0, folder
    )
    run = logger.run_id(0, {"trial_number": 0})
    fresh = MLflowSearchLogger(
        folder.mlflow_uri, exp_id, parent, to_dict(space.base_config()), space.presets, 1, 0, folder
    )  # a resumed driver: it finds the trial's run by its tags, not from memory
    assert fresh.run_id(0) == run
    client = MlflowClient(folder.mlflow_uri)
    client.set_terminated(run, "FINISHED")
    parents = search_parents(client, exp_id)
    assert [p.info.run_id for p in parents] == [parent]
    assert trial_records(client, exp_id, parents[0]) == []  # finished, but without its objectives
    training = tmp_path / "train o'brien"
    training.mkdir()
    data = {"config": {"method": "derd"}, "test": {"test/clean_acc": 90.0}}
    first = add_training(client, exp_id, training, data)
    assert add_training(client, exp_id, training, data) == first


def test_a_store_killed_with_commits_in_its_write_ahead_log_is_whole_and_read_with_them(tmp_path):
    """A driver killed in write-ahead mode (``tuning.sqlite_wal``) leaves commits in ``-wal`` that the
    file alone does not hold: the store check passes and reads them (an ``immutable`` read would not)."""
    import subprocess
    import sys

    from tuning.store import check_sqlite_store, read_only

    db = tmp_path / "optuna.db"
    code = (
        "import os, signal, sqlite3, sys; sys.path.insert(0, sys.argv[2]);"
        "from tuning.sqlite_wal import write_ahead;"
        "c = sqlite3.connect(sys.argv[1]); write_ahead(c);"
        "c.execute('create table trials (x)'); c.execute('insert into trials values (1)'); c.commit();"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    subprocess.run([sys.executable, "-c", code, str(db), str(Path(__file__).resolve().parent.parent)])
    assert (tmp_path / "optuna.db-wal").stat().st_size > 0  # the commits are in the log only
    assert read_only(db) == "mode=ro"
    check_sqlite_store(db, "the study", ("trials",), "fix it")  # no "database of something else"
