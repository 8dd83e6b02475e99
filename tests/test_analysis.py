"""Fronts in MLflow, export then train, the report, and the MLflow UI in a real browser."""
from __future__ import annotations

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
from mlflow.tracking import MlflowClient

from analysis.pareto import hypervolume, pareto_ranks, tag_fronts
from conftest import TINY_BASE, write_space

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts"


@pytest.fixture(scope="module")
def store(tmp_path_factory, teacher_args):
    """A finished tiny search (4 trials) on a local Ray instance."""
    import ray

    from tuning.search import run_search

    folder = tmp_path_factory.mktemp("search")
    space = write_space(folder / "space.yaml", search={"num_trials": 4, "max_concurrent": 2, "scheduler": "none"})
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        summary = run_search(["--space", str(space), "--out", str(folder / "s"), *teacher_args])
    finally:
        ray.shutdown()
    client = MlflowClient(summary["tracking_uri"])
    return {"client": client, "exp_id": summary["experiment_id"], "uri": summary["tracking_uri"], "out": folder / "s"}


def _tags(client, exp_id):
    runs = client.search_runs([exp_id], "tags.`derd.kind` = 'trial'")
    return {r.info.run_id: (r.data.tags.get("pareto_rank"), r.data.tags.get("pareto_front")) for r in runs}, runs


def test_front_tags_agree_with_metrics_and_are_rebuilt_identically(store):
    client, exp_id = store["client"], store["exp_id"]
    before, runs = _tags(client, exp_id)
    points = [(r.data.metrics["val/clean_acc"], r.data.metrics["val/aa_acc"]) for r in runs]
    for run, rank in zip(runs, pareto_ranks(points)):
        assert before[run.info.run_id] == (str(rank), "true" if rank == 0 else "false")
    tag_fronts(client, exp_id)
    assert _tags(client, exp_id)[0] == before
    parent = client.search_runs([exp_id], "tags.`derd.kind` = 'search'")[0]
    front = [p for p, r in zip(points, runs) if before[r.info.run_id][1] == "true"]
    assert parent.data.metrics["search/hypervolume"] == pytest.approx(hypervolume(front))
    files = {f.path for f in client.list_artifacts(parent.info.run_id, "pareto")}
    assert files == {"pareto/front.csv", "pareto/front.png"}


def test_export_then_train_reproduces_the_trial(store, tmp_path, capsys):
    from analysis.export import main as export_main
    from derd.train import main as train_main

    paths = export_main(["--experiment", "derd-digits", "--select", "best-clean", "--out", str(tmp_path / "cfg"),
                         "--budget", "trial", "--tracking-uri", store["uri"]])
    cfg = yaml.safe_load(paths[0].read_text())
    assert cfg["origin"]["experiment"] == "derd-digits" and "val/clean_acc" in cfg["origin"]["val"]
    assert cfg["eval"]["final_protocol"] == "full" and cfg["stage2"]["epochs"] == TINY_BASE["stage2.epochs"]
    full = export_main(["--experiment", "derd-digits", "--select", "knee", "--out", str(tmp_path / "full"), "--tracking-uri", store["uri"]])
    assert yaml.safe_load(full[0].read_text())["stage2"]["epochs"] == 20  # the preset's full-length budget
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial ran (cpus_per_trial 1): same arithmetic
    try:
        train_main(["--config", str(paths[0]), "--out", str(tmp_path / "train"), "--protocol", "search"])
    finally:
        torch.set_num_threads(threads)
    history = yaml.safe_load((tmp_path / "train" / "table.json").read_text())["history"]
    for key, value in cfg["origin"]["val"].items():
        assert history[-1][key] == pytest.approx(value, abs=3.0), key  # same seed and budget: within noise


def test_report_prints_the_seven_columns(store, tmp_path, capsys):
    from analysis.report import main as report_main

    result = report_main(["--experiment", "derd-digits", "--tracking-uri", store["uri"], "--out", str(tmp_path)])
    text = (tmp_path / "report.md").read_text()
    assert "| model | Clean | FGSM | PGD_S | PGD_T | CW | AA | Ave |" in text
    assert any(name.startswith("trial ") for name in result["rows"])
    assert (tmp_path / "report.csv").read_text().splitlines()[0] == "row,Clean,FGSM,PGD_S,PGD_T,CW,AA,Ave"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_mlflow_ui_shows_the_trials_and_their_pareto_tag_in_a_real_browser(store):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    client, exp_id = store["client"], store["exp_id"]
    front = [r for r in client.search_runs([exp_id], "tags.pareto_front = 'true'")]
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store["uri"],
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = None
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
        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium")
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1600,1000"):
            opts.add_argument(arg)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
        wait = WebDriverWait(driver, 60)
        query = urllib.parse.quote("tags.pareto_front = 'true'")
        driver.get(f"{base}/#/experiments/{exp_id}/runs?searchFilter={query}")
        wait.until(lambda d: "search-derd-digits" in d.page_source)
        driver.find_element(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()  # expand the search
        wait.until(lambda d: all(f"trial-{r.data.tags['derd.trial_id']}" in d.page_source for r in front))
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "mlflow_ui_pareto_front.png"))
        shown = driver.page_source.count("trial-")
        assert shown == len(front)  # the filter on the tag leaves exactly the front
        driver.get(f"{base}/#/experiments/{exp_id}/runs/{front[0].info.run_id}")
        wait.until(lambda d: "pareto_front" in d.page_source and "pareto_rank" in d.page_source)
        driver.save_screenshot(str(ARTIFACTS / "mlflow_ui_trial_run.png"))
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
