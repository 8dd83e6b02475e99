"""Fronts in MLflow, export then train, the reports, relocation, and the MLflow UI in a real browser."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_BASE, write_space
from mlflow.tracking import MlflowClient

from analysis.pareto import tag_fronts
from derd.pareto import hypervolume
from tuning.records import Tag

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts"

# (name, method, clean, aa, tags) of a fabricated search: a front of three, a dominated trial,
# the paper's preset, a collapsed student (one class: 10.03 everywhere, the best "AA"), and an
# early-stopped trial whose partial scores would dominate everything.
FABRICATED = [
    ("trial-0000", "derd", 53.76, 4.74, {"derd.preset": "true"}),
    ("trial-0001", "derd_no_nat", 80.22, 12.81, {}),
    ("trial-0002", "derd", 64.90, 2.79, {}),
    ("trial-0003", "derd_no_nat", 70.10, 14.20, {}),
    ("trial-0004", "derd", 61.00, 3.90, {}),
    ("trial-0005", "derd", 10.03, 10.03, {"derd.feasible": "false"}),
    ("trial-0006", "derd_no_nat", 90.00, 30.00, {"derd.budget": "partial", "derd.stopped_early": "true"}),
]
FRONT = ["trial-0001", "trial-0003"]
# the teachers' preflight scores a search logs on its run: what a relative floor (0.9x) is a factor of
TEACHERS = {
    "teacher/natural_clean_acc": 89.0,
    "teacher/natural_pgd_acc": 0.0,
    "teacher/robust_clean_acc": 70.0,
    "teacher/robust_pgd_acc": 30.0,
    "teacher/robust_worst_pgd_acc": 20.0,
}
WORST_GAP = 8.0  # each trial's worst-class AA: its AA less this (trial-0001 4.81, trial-0003 6.20)


def fabricate_search(folder: Path, name: str = "fab") -> tuple[MlflowClient, str, str]:
    """An MLflow store shaped exactly as a search writes it, with the trials above."""
    from mlflow.entities import Metric, Param, RunTag

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "search.json").write_text(json.dumps({"name": name, "out": str(folder)}))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(
        name,
        artifact_location=(folder / "mlartifacts").as_uri(),
        tags={"mlflow.experimentKind": "custom_model_development"},
    )
    parent = client.create_run(
        exp_id,
        run_name=f"search-{name}",
        tags={
            "derd.kind": "search",
            "derd.objectives": "val/clean_acc:max,val/aa_acc:max",
            "derd.search_dir": str(folder),
        },
    )
    for trial, method, clean, aa, extra in FABRICATED:
        run = client.create_run(
            exp_id,
            run_name=trial,
            tags={
                "mlflow.parentRunId": parent.info.run_id,
                "derd.kind": "trial",
                "derd.trial_id": trial,
                "derd.method": method,
                "derd.searched_keys": "method,stage2.lambda_nat",
                "derd.preset": "false",
                "derd.feasible": "true",
                "derd.budget": "full",
                **extra,
            },
        )
        client.log_batch(
            run.info.run_id,
            params=[
                Param("method", method),
                Param("data.dataset", "digits"),
                Param("stage2.lambda_nat", "0.5"),
                Param("seed", "0"),
            ],
            metrics=[
                Metric("val/clean_acc", clean, 0, 12),
                Metric("val/aa_acc", aa, 0, 12),
                Metric("val/pgd_acc", aa + 3, 0, 12),
                Metric("val/n_images", 359, 0, 12),
                Metric("val/worst_aa_acc", max(0.0, aa - WORST_GAP), 0, 12),
                Metric("trial/epochs", 8 if "derd.budget" in extra else 12, 0, 12),
            ],
            tags=[RunTag(k, v) for k, v in extra.items()],
        )
        client.set_terminated(run.info.run_id, "FINISHED")
    client.log_batch(parent.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in TEACHERS.items()])
    client.set_terminated(parent.info.run_id, "FINISHED")
    tag_fronts(client, exp_id)
    return client, exp_id, uri


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fab") / "s"
    client, exp_id, uri = fabricate_search(folder)
    return {"client": client, "exp_id": exp_id, "uri": uri, "out": folder}


def _by_name(client, exp_id) -> dict:
    return {
        r.data.tags["derd.trial_id"]: r for r in client.search_runs([exp_id], "tags.`derd.kind` = 'trial'")
    }


def test_only_feasible_full_budget_trials_reach_the_front(fabricated):
    client, exp_id = fabricated["client"], fabricated["exp_id"]
    runs = _by_name(client, exp_id)
    assert sorted(n for n, r in runs.items() if r.data.tags["pareto_front"] == "true") == FRONT
    assert runs["trial-0005"].data.tags["pareto_excluded"] == "infeasible"  # the collapsed student
    assert runs["trial-0006"].data.tags["pareto_excluded"] == "partial"
    parent = client.search_runs([exp_id], "tags.`derd.kind` = 'search'")[0]
    assert parent.data.metrics["search/hypervolume"] == pytest.approx(
        hypervolume([(80.22, 12.81), (70.10, 14.20)])
    )
    files = {f.path for f in client.list_artifacts(parent.info.run_id, "pareto")}
    assert files == {"pareto/front.csv", "pareto/front.png", "pareto/front.html"}
    before = {n: r.data.tags for n, r in runs.items()}
    tag_fronts(client, exp_id)  # idempotent
    assert {n: r.data.tags for n, r in _by_name(client, exp_id).items()} == before


def test_front_page_draws_every_trial_a_staircase_and_hover_text(fabricated):
    from analysis.figures import staircase

    client, exp_id = fabricated["client"], fabricated["exp_id"]
    parent = client.search_runs([exp_id], "tags.`derd.kind` = 'search'")[0]
    page = Path(client.download_artifacts(parent.info.run_id, "pareto/front.html")).read_text()
    assert page.count('<g class="trial') == len(FABRICATED)
    assert (
        page.count('class="trial front"') == 2
        and 'class="trial infeasible"' in page
        and 'class="trial partial"' in page
    )
    assert (
        "trial-0000 (derd) - paper preset" in page and "± 2.63" in page
    )  # hover: trial, preset, score ± s.e.
    assert staircase([(80.22, 12.81), (70.10, 14.20)]) == [(80.22, 12.81), (70.10, 12.81), (70.10, 14.20)]


def test_descriptions_hold_the_sorted_best_trials_table(fabricated):
    client, exp_id = fabricated["client"], fabricated["exp_id"]
    note = client.get_experiment(exp_id).tags["mlflow.note.content"]
    assert "tags.pareto_front = 'true'" in note and "artifactPath/pareto/front.html" in note
    rows = [ln.split(" | ")[0].strip("| ") for ln in note.splitlines() if ln.startswith("| trial-")]
    assert rows[:2] == FRONT  # the front first, by clean accuracy
    assert rows[-1] == "trial-0005" and "Showing 7 of 7 finished trials" in note
    parent = client.search_runs([exp_id], "tags.`derd.kind` = 'search'")[0]
    assert parent.data.tags["mlflow.note.content"] == note


@pytest.mark.parametrize(
    "selection, expected",
    [("best-robust", ["trial-0003"]), ("best-clean", ["trial-0001"]), ("front", FRONT), ("knee", None)],
)
def test_export_never_picks_a_collapsed_or_partial_trial(fabricated, tmp_path, selection, expected):
    from analysis.export import main as export_main

    paths = export_main(
        [
            "--experiment",
            "fab",
            "--select",
            selection,
            "--out",
            str(tmp_path),
            "--tracking-uri",
            fabricated["uri"],
        ]
    )
    names = [yaml.safe_load(p.read_text())["origin"]["trial"] for p in paths]
    assert names == expected if expected else names[0] in FRONT
    assert not {"trial-0005", "trial-0006"} & set(names)


def test_summary_line_compares_the_best_feasible_trial_with_the_paper_preset(fabricated):
    from analysis.choice import best_versus_preset
    from analysis.trials import search_trials

    _, _, records = next(search_trials(fabricated["client"], fabricated["exp_id"]))
    line = best_versus_preset(records)
    assert line.startswith("Best feasible AA (APGD-CE+T, val): trial-0003 (derd_no_nat) 14.20 ± 1.84")
    assert line.endswith(
        "it dominates the paper's preset (trial-0000, derd: AA 4.74 ± 1.12, Clean 53.76 ± 2.63): "
        "AA +9.46 ± 2.16, Clean +16.34 ± 3.57."
    )


def _export(fabricated, out: Path, *flags: str) -> list[dict]:
    """The origins of what analysis/export.py wrote for ``flags`` from the fabricated search."""
    from analysis.export import main as export_main

    paths = export_main(
        ["--experiment", "fab", "--out", str(out), "--tracking-uri", fabricated["uri"], *flags]
    )
    return [yaml.safe_load(p.read_text())["origin"] for p in paths]


@pytest.mark.parametrize(
    "flags, expected",
    [
        (
            ["--select", "best-robust", "--min-clean", "75"],
            ["trial-0001"],
        ),  # not trial-0003, the most robust (70.10 clean)
        (
            ["--select", "best-robust", "--min-clean", "0.85x"],
            ["trial-0001"],
        ),  # 0.85 x the natural teacher's 89.00
        (
            ["--select", "best-clean", "--min-robust", "13"],
            ["trial-0003"],
        ),  # not trial-0001, the cleanest (12.81 AA)
        (
            ["--select", "best-clean", "--min-robust", "0.45x"],
            ["trial-0003"],
        ),  # 0.45 x the robust teacher's PGD 30.00
        (["--select", "front", "--min-clean", "75"], ["trial-0001"]),
        (
            ["--select", "knee", "--min-robust", "13"],
            ["trial-0003"],
        ),  # the knee of what meets it (unconstrained: trial-0001)
        (["--select", "front", "--min-clean", "0"], FRONT),
        (
            ["--select", "best-clean", "--min-worst-robust", "5"],
            ["trial-0003"],
        ),  # trial-0001's weakest class: 4.81 AA
        (
            ["--select", "best-clean", "--min-worst-robust", "0.3x"],
            ["trial-0003"],
        ),  # 0.3 x the robust teacher's 20.00
        (["--select", "best-clean", "--min-worst-robust", "4"], ["trial-0001"]),
    ],
)
def test_constrained_export_picks_among_the_trials_that_meet_the_floors(
    fabricated, tmp_path, flags, expected
):
    assert [o["trial"] for o in _export(fabricated, tmp_path, *flags)] == expected


def test_the_export_records_its_selection_and_constraint(fabricated, tmp_path):
    (origin,) = _export(
        fabricated, tmp_path, "--select", "best-robust", "--min-clean", "0.85x", "--min-robust", "10"
    )
    assert origin["select"] == "best-robust"
    assert origin["constraint"] == {
        "val/clean_acc": {
            "min": 75.65,
            "asked": "--min-clean 0.85x",
            "from": "--min-clean",
            "of": "teacher/natural_clean_acc",
            "reference": 89.0,
        },
        "val/aa_acc": {"min": 10.0, "asked": "--min-robust 10", "from": "--min-robust"},
    }


def test_the_searchs_recorded_floor_chooses_unless_a_flag_replaces_it(fabricated, tmp_path):

    client = fabricated["client"]
    parent = client.search_runs([fabricated["exp_id"]], "tags.`derd.kind` = 'search'")[0].info.run_id
    client.set_tag(parent, Tag.MIN_CLEAN, "0.85x")  # what tuning/search.py --min-clean 0.85x records
    try:
        (origin,) = _export(fabricated, tmp_path / "a", "--select", "best-robust")
        assert (
            origin["trial"] == "trial-0001" and origin["constraint"]["val/clean_acc"]["from"] == "the search"
        )
        (origin,) = _export(fabricated, tmp_path / "b", "--select", "best-robust", "--min-clean", "60")
        assert (
            origin["trial"] == "trial-0003"
            and origin["constraint"]["val/clean_acc"]["asked"] == "--min-clean 60"
        )
    finally:
        client.delete_tag(parent, Tag.MIN_CLEAN)


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--select", "best-robust", "--min-clean", "0.95x"],
            "error: no eligible trial meets Clean >= 84.55 (0.95x teacher/natural_clean_acc 89.00); the closest is "
            "trial-0001 (derd_no_nat: Clean 80.22); pass a lower --min-clean",
        ),
        (
            [
                "--select",
                "knee",
                "--min-clean",
                "75",
                "--min-robust",
                "13",
            ],  # trial-0001 misses AA by 0.19, trial-0003 clean by 4.9
            "error: no eligible trial meets Clean >= 75.00 and AA >= 13.00; the closest is trial-0001 (derd_no_nat: Clean "
            "80.22, AA 12.81); pass a lower --min-robust",
        ),
        (["--select", "front", "--min-clean", "seventy"], "error: --min-clean 'seventy': expected points"),
        (
            ["--select", "trial-0001", "--min-clean", "60"],
            "error: --min-clean, --min-robust and --min-worst-robust choose among trials",
        ),
        (
            ["--select", "best-robust", "--min-worst-robust", "7"],
            "error: no eligible trial meets worst-class AA >= 7.00; the closest is trial-0003 (derd_no_nat: Clean 70.10, "
            "worst-class AA 6.20); pass a lower --min-worst-robust",
        ),
    ],
)
def test_no_trial_meeting_the_floor_is_exit_2_and_one_line(fabricated, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        _export(fabricated, tmp_path, *flags)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())  # nothing written


def test_an_exported_origin_names_the_protocol_of_its_val_scores(fabricated, tmp_path):
    from derd.evaluate import protocol_record

    origin = _export(fabricated, tmp_path, "--select", "knee")[0]
    assert origin["val_protocol"] == protocol_record("search", 0.2, "real") and "val/aa_acc" in origin["val"]


def test_report_names_the_protocols_and_sorts_the_front(fabricated, tmp_path):
    from analysis.report import main as report_main

    result = report_main(["--experiment", "fab", "--tracking-uri", fabricated["uri"], "--out", str(tmp_path)])
    text = (tmp_path / "report.md").read_text()
    assert "| model | Clean | FGSM | PGD_S | PGD_T | CW | AA (standard) | Ave |" in text
    assert "| model | Clean | PGD_S | AA (APGD-CE+T) |" in text and "val split, search protocol" in text
    assert [name.split(" ")[0] for name, _ in result["front"]] == FRONT
    assert (tmp_path / "report.csv").read_text().splitlines()[0].startswith("row,Clean,FGSM")


def test_a_moved_search_folder_is_refused_until_relocated(fabricated, tmp_path, capsys):
    from analysis.pareto import main as pareto_main
    from analysis.relocate import main as relocate_main

    copy = tmp_path / "moved copy"  # a space: the store keeps %-encoded file URIs
    shutil.copytree(fabricated["out"], copy)
    with pytest.raises(SystemExit) as exc:
        pareto_main(["--experiment", "fab", "--tracking-uri", f"sqlite:///{copy / 'mlflow.db'}"])
    assert exc.value.code == 2 and "analysis/relocate.py --out" in capsys.readouterr().err
    relocate_main(["--out", str(copy)])
    pareto_main(["--experiment", "fab", "--tracking-uri", f"sqlite:///{copy / 'mlflow.db'}"])
    client = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    parent = client.search_runs(
        [client.get_experiment_by_name("fab").experiment_id], "tags.`derd.kind` = 'search'"
    )[0]
    assert parent.info.artifact_uri.startswith((copy / "mlartifacts").as_uri())
    assert (copy / "mlartifacts").is_dir()


@pytest.fixture(scope="module")
def store(tmp_path_factory, teacher_args):
    """A finished tiny real search (3 trials, every trial feasible) on a local Ray instance."""
    import ray

    from tuning.search import run_search

    folder = tmp_path_factory.mktemp("search")
    space = write_space(
        folder / "space.yaml",
        search={"num_trials": 3, "max_concurrent": 2, "scheduler": "none"},
        constraints={"min_clean_fraction": 0.0},
    )
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        summary = run_search(
            ["--space", str(space), "--out", str(folder / "s"), "--min-clean", "1", *teacher_args]
        )
    finally:
        ray.shutdown()
    return {"uri": summary["tracking_uri"], "out": folder / "s", "summary": summary}


def test_the_search_refuses_a_bad_min_clean_before_anything_runs(tmp_path):
    from derd.errors import UserError
    from tuning.plan import build_parser, plan_search

    with pytest.raises(UserError, match="write 0.9x"):  # the same reader as analysis/export.py's
        plan_search(build_parser().parse_args(["--min-clean", "0.9", "--out", str(tmp_path / "s")]))
    assert not (tmp_path / "s").exists()


def test_the_search_records_its_min_clean_for_the_summary_and_the_export(store, tmp_path):
    from analysis.export import main as export_main

    summary = store["summary"]
    parent = MlflowClient(store["uri"]).get_run(summary["parent_run_id"])
    assert parent.data.tags[Tag.MIN_CLEAN] == "1" and "teacher/natural_clean_acc" in parent.data.metrics
    assert json.loads((store["out"] / "search.json").read_text())["min_clean"] == "1"
    assert "Best feasible AA (APGD-CE+T, val) with Clean >= 1.00: " in summary["markdown"]
    paths = export_main(
        [
            "--experiment",
            "derd-digits",
            "--select",
            "best-robust",
            "--out",
            str(tmp_path),
            "--tracking-uri",
            store["uri"],
        ]
    )
    assert (
        yaml.safe_load(paths[0].read_text())["origin"]["constraint"]["val/clean_acc"]["from"] == "the search"
    )


def test_export_then_train_reproduces_the_trial(store, tmp_path, monkeypatch):
    from analysis.export import main as export_main
    from derd.train import main as train_main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])  # every CLI honours it
    paths = export_main(
        [
            "--experiment",
            "derd-digits",
            "--select",
            "best-clean",
            "--out",
            str(tmp_path / "cfg"),
            "--budget",
            "trial",
        ]
    )
    cfg = yaml.safe_load(paths[0].read_text())
    assert cfg["origin"]["experiment"] == "derd-digits" and "val/clean_acc" in cfg["origin"]["val"]
    assert cfg["eval"]["final_protocol"] == "full" and cfg["budget"]["epochs"] == TINY_BASE["budget.epochs"]
    assert len(cfg["teachers"]["natural_sha256"]) == 64  # the teachers' provenance travels with the config
    full = export_main(["--experiment", "derd-digits", "--select", "knee", "--out", str(tmp_path / "full")])
    assert yaml.safe_load(full[0].read_text())["budget"]["epochs"] == 30  # the preset's full-length budget
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial ran (cpus_per_trial 1): same arithmetic
    try:
        train_main(["--config", str(paths[0]), "--out", str(tmp_path / "train"), "--protocol", "search"])
    finally:
        torch.set_num_threads(threads)
    history = yaml.safe_load((tmp_path / "train" / "table.json").read_text())["history"]
    for key, value in cfg["origin"]["val"].items():
        assert history[-1][key] == pytest.approx(value, abs=1e-6), (
            key
        )  # same seed, budget and threads: identical


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The iframe of MLflow's artifact viewer, clipped by every ancestor that hides its overflow: the part a
# user sees (the frame is sandboxed: its inside is measured from within).
SHOWN_FRAME = """
const frame = document.querySelector('iframe'), r = frame.getBoundingClientRect();
let box = {left: 0, top: 0, right: window.innerWidth, bottom: window.innerHeight};
for (let e = frame.parentElement; e; e = e.parentElement) {
  if (getComputedStyle(e).overflowX !== 'visible') {
    const q = e.getBoundingClientRect();
    box = {left: Math.max(box.left, q.left), top: Math.max(box.top, q.top), right: Math.min(box.right, q.right),
           bottom: Math.min(box.bottom, q.bottom)};
  }
}
return [r.left, r.right, r.top, r.bottom, box.left, box.right, box.top, box.bottom];
"""
PLOT_IN_FRAME = """
const root = document.documentElement, a = document.querySelector('rect.plot-area').getBoundingClientRect();
return [root.scrollWidth, root.clientWidth, root.scrollHeight, root.clientHeight, a.left, a.right, a.top, a.bottom];
"""


def _assert_plot_fully_visible(driver) -> None:
    """The front page does not scroll, its plot area lies within its frame, and the frame's part that
    holds the plot is not clipped by MLflow's layout or the window."""
    from selenium.webdriver.common.by import By

    fl, fr, ft, fb, sl, sr, st, sb = driver.execute_script(SHOWN_FRAME)
    driver.switch_to.frame(driver.find_elements(By.TAG_NAME, "iframe")[0])
    sw, cw, sh, ch, al, ar, at, ab = driver.execute_script(PLOT_IN_FRAME)
    driver.switch_to.default_content()
    where = dict(
        frame=(fl, fr, ft, fb), shown=(sl, sr, st, sb), scroll=(sw, cw, sh, ch), plot=(al, ar, at, ab)
    )
    assert sw <= cw + 1 and sh <= ch + 1, where
    assert 0 <= al and ar <= cw + 1 and 0 <= at and ab <= ch + 1, where
    assert sl <= fl + al and fl + ar <= sr + 1 and st <= ft + at and ft + ab <= sb + 1, where


@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)
def test_mlflow_ui_opens_on_the_trials_and_the_front_fits_in_a_real_browser(fabricated):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tuning.store import ui_instructions

    client, exp_id = fabricated["client"], fabricated["exp_id"]
    parent = client.search_runs([exp_id], "tags.`derd.kind` = 'search'")[0]
    front = [r for r in client.search_runs([exp_id], "tags.pareto_front = 'true'")]
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            fabricated["uri"],
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    drivers = []

    def browser(width: int):
        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium")
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--window-size={width},860",
        ):
            opts.add_argument(arg)
        drivers.append(webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts))
        return drivers[-1], WebDriverWait(drivers[-1], 60)

    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=1)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        lines = ui_instructions(base, exp_id, parent.info.run_id)  # what the search and pareto.py print
        trials_url = lines[1].split(": ", 1)[1].strip()
        front_url = lines[2].split(": ", 1)[1].strip()
        ARTIFACTS.mkdir(exist_ok=True)
        driver, wait = browser(1500)
        # 1. the printed URL opens the runs table in model-training mode, every trial listed (no expander)
        driver.get(trials_url)
        wait.until(lambda d: all(name in d.page_source for name, *_ in FABRICATED))
        assert "workflowType=machine_learning" in driver.current_url
        assert driver.find_elements(
            By.XPATH, "//*[normalize-space(text())='val/aa_acc']"
        )  # the objectives' columns
        assert not driver.find_elements(
            By.XPATH, "//*[contains(text(), 'Detect Issues')]"
        )  # not the GenAI overview
        driver.save_screenshot(str(ARTIFACTS / "mlflow_ui_trials.png"))
        # 2. the interactive front, as MLflow's artifact viewer renders it, beside the assistant panel (the default)
        driver.get(front_url)
        wait.until(lambda d: d.find_elements(By.TAG_NAME, "iframe"))
        driver.switch_to.frame(driver.find_elements(By.TAG_NAME, "iframe")[0])
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "g.trial")) == len(FABRICATED))
        assert len(driver.find_elements(By.CSS_SELECTOR, "polyline.front")) == 1
        titles = [
            t.get_attribute("textContent") for t in driver.find_elements(By.CSS_SELECTOR, "g.trial title")
        ]
        assert any("trial-0003 (derd_no_nat)" in t and "± 1.84" in t for t in titles)  # hover text
        driver.switch_to.default_content()
        _assert_plot_fully_visible(driver)
        driver.save_screenshot(str(ARTIFACTS / "mlflow_ui_front_page.png"))
        # 3. the experiment's description shows the best trials (one click on its expander)
        driver.get(trials_url)
        expand = "button[data-component-id='mlflow.experiment.metadata_editor.expand_button']"
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, expand))
        driver.find_element(By.CSS_SELECTOR, expand).click()
        wait.until(lambda d: any("trial-0003" in c.text for c in d.find_elements(By.TAG_NAME, "td")))
        cells = [c.text for c in driver.find_elements(By.TAG_NAME, "td")]
        assert cells[cells.index("trial-0001") + 3] == "80.22 ± 2.10"  # the front's best clean, with its s.e.
        driver.save_screenshot(str(ARTIFACTS / "mlflow_ui_description.png"))
        # 4. the tag filter leaves exactly the front, listed flat
        query = urllib.parse.quote("tags.pareto_front = 'true'")
        driver.get(f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning&searchFilter={query}")
        wait.until(lambda d: all(r.info.run_name in d.page_source for r in front))
        driver.save_screenshot(str(ARTIFACTS / "mlflow_ui_pareto_front.png"))
        # 5. at 1,000 px the front fits too, once MLflow's assistant panel is closed (beside it, MLflow's own
        # artifact pane, a 200 px file tree and a viewer of at least 400 px, no longer fits and is clipped)
        driver, wait = browser(1000)
        driver.get(front_url)
        wait.until(lambda d: d.find_elements(By.TAG_NAME, "iframe"))
        close = "button[data-component-id='mlflow.assistant.chat_panel.close']"
        if driver.find_elements(By.CSS_SELECTOR, close):
            driver.find_element(By.CSS_SELECTOR, close).click()
        time.sleep(1)
        _assert_plot_fully_visible(driver)
        driver.save_screenshot(str(ARTIFACTS / "mlflow_ui_front_page_1000.png"))
    finally:
        for driver in drivers:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def test_the_trials_table_shows_the_worst_class_aa(fabricated):
    from analysis.pareto import front_of
    from analysis.trials import best_trials_markdown, search_trials

    _, objectives, records = next(search_trials(fabricated["client"], fabricated["exp_id"]))
    front, _ = front_of(records)
    table = best_trials_markdown(records, front, objectives)
    assert "worst-class AA (APGD-CE+T, val)" in table.splitlines()[2]
    row = next(line for line in table.splitlines() if line.startswith("| trial-0001 |"))
    assert "| 4.81 |" in row  # a class's share of the images: no one binomial s.e. of the whole split
