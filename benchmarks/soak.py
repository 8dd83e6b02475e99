"""A soak of the search on a two-node Ray cluster with kills: N trials, a ``kill -9`` of a trial worker every
K finished trials, one node lost, one driver ``kill -9`` then ``--resume`` (prints figures, asserts nothing).

    python benchmarks/soak.py --out /work/runs/soak [--trials 100] [--kill-every 20]

The cluster is two Ray nodes on this machine started by the real CLI (``tests/ray_nodes.py``): a head
(``ray start --head``, 127.0.0.2) and a worker node (``ray start --address``, 127.0.0.3), one CPU each,
each with its own temporary folder, token authentication on (Ray's default once the machine holds a
token; the token lives in ``<out>/home``, never in the user's ``~/.ray``). The search joins it with
``--address`` and runs two trials at a time, one per node. During the search:

* every K finished trials, one trial worker (the ``ray::ImplicitFunc`` process of a running trial, on
  either node) is killed with SIGKILL, about a second after its trial's ``run.pt`` was rewritten (an
  epoch ended): mid-epoch, so that the epoch in progress is lost and redone;
* once, at ``--node-loss-at`` finished trials, every process of the worker node (``ray start``, its raylet,
  agents and workers) is killed with SIGKILL at once, mid-epoch of its trial, as a machine that
  disappears; ``--join-after`` seconds later a new node (127.0.0.4) joins and takes trials;
* once, at ``--driver-kill-at`` finished trials, the search driver is killed with SIGKILL mid-epoch, and
  ``python tuning/search.py --out ... --resume --address ...`` continues it.

The trial is the digits space's at a shorter budget (``--epochs`` of ``--iters`` iterations, one
validation at the end; ``scheduler: none``), so that an epoch lasts a few seconds and a kill falls inside
one. At the end it checks and prints, from the search's folder:

* per trial, epochs lost (in the trial's checkpoint, not in MLflow) and repeated (an MLflow step logged
  twice), and whether MLflow's last epoch, the checkpoint's and Optuna's (``epochs``) agree;
* Optuna against MLflow trial by trial: one run per trial number, the states and the objective values;
* orphaned Ray processes: trial workers alive 30 s after the driver was killed, processes of the lost
  node alive 10 s after its loss, trial workers alive after the search ended, and any process of the
  soak's Ray temporary folders alive after the nodes were stopped;
* the memory (RSS) of every long-lived process over time, sampled every ``--sample-s`` seconds: peak, and
  the slope over the last half of its life (MB/hour); the trial workers' peaks;
* trials per hour, over the sessions' wall time and over the soak's.

Resumable: the state is ``<out>/soak.json`` (and ``<out>/memory.jsonl``). Run the same command again after
the soak itself was stopped: the processes it had started are ended (by process id and start time), a
fresh cluster is started and the search resumed; the kills already made are not made again. Once the
search finished, the command prints the figures again.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import psutil  # noqa: E402
import yaml  # noqa: E402
from ray_nodes import RayNode, cluster_env, generate_token, trial_of  # noqa: E402

from derd.cache import cache_dir  # noqa: E402

FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")
# the tests' small trial (tests/conftest.py): small batches, generator and student latent
TINY = {
    "budget.batch_size": 16,
    "student.latent_dim": 16,
    "student.generator_width": 16,
    "data.val_batch_size": 64,
}
NAME = "soak"


# ---- state ------------------------------------------------------------------------------------------
def load_state(out: Path) -> dict[str, Any]:
    path = out / "soak.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {
        "created": time.time(),
        "worker_kills": [],
        "node_loss": None,
        "node_join": None,
        "driver_kills": [],
        "drivers": [],
        "started": [],
        "runs": [],
        "orphans": {},
        "done": False,
    }


def save_state(out: Path, state: dict[str, Any]) -> None:
    tmp = out / "soak.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, out / "soak.json")


def end_recorded(recorded: list[list[float]]) -> int:
    """SIGKILL the processes recorded as (pid, start time) that still run, and their descendants; returns
    how many."""
    procs = []
    for pid, started in recorded:
        try:
            proc = psutil.Process(int(pid))
            if abs(proc.create_time() - started) < 1e-3:
                procs += [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)
    return len(procs)


# ---- the search ---------------------------------------------------------------------------------------
def write_space(path: Path, args: argparse.Namespace) -> None:
    space = yaml.safe_load((REPO / "search_spaces" / "digits.yaml").read_text())
    space["base"] = {
        **TINY,
        "budget.epochs": args.epochs,
        "budget.iters_per_epoch": args.iters,
        "stage1.epochs": args.epochs // 2,
        "eval.every": args.epochs,  # one validation, at the end
    }
    space["search"] = {
        "num_trials": args.trials,
        "max_concurrent": 2,
        "sampler": "tpe",
        "scheduler": "none",
        "seed": args.seed,
    }
    path.write_text(yaml.safe_dump(space, sort_keys=False))


def finished_trials(folder: Path) -> int:
    db = folder / "optuna.db"
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            marks = ",".join("?" * len(FINISHED_STATES))
            return con.execute(
                f"SELECT COUNT(*) FROM trials WHERE state IN ({marks})", FINISHED_STATES
            ).fetchone()[0]
    except sqlite3.Error:
        return 0


def trial_workers(nodes: list[RayNode], search: Path) -> list[tuple[psutil.Process, int, RayNode]]:
    """(process, trial number, node) of every running trial worker."""
    found = []
    for node in nodes:
        for proc in node.trial_workers():
            number = trial_of(proc, search)
            if number is not None:
                found.append((proc, number, node))
    return found


def after_an_epoch_end(
    search: Path, nodes: list[RayNode], pick, delay: float, timeout: float = 120
) -> tuple[psutil.Process, int, RayNode, float] | None:
    """Wait until one of the running trials that ``pick`` accepts rewrites its ``run.pt`` (an epoch ended),
    then ``delay`` seconds more; returns (worker, trial number, node, the file's mtime) or None."""
    from tuning.records import SearchFolder

    folder = SearchFolder(search)
    seen: dict[int, float] = {}
    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc, number, node in trial_workers(nodes, search):
            if not pick(proc, number, node):
                continue
            path = folder.trial_checkpoint(number)
            mtime = path.stat().st_mtime if path.is_file() else 0.0
            if number in seen and mtime != seen[number] and mtime:
                epoch, total = saved_epoch(search, number)
                if 0 < epoch < total:  # not its last epoch: the trial goes on after it
                    time.sleep(delay)
                    return proc, number, node, mtime
            seen[number] = mtime
        time.sleep(0.05)
    return None


def saved_epoch(search: Path, number: int) -> tuple[int, int]:
    """(the epoch the trial's run.pt holds, the trial's total epochs)."""
    from derd.config import from_dict
    from derd.methods import total_epochs
    from tuning.records import SearchFolder
    from tuning.trainable import checkpoint_state

    state = checkpoint_state(SearchFolder(search).trial_checkpoint(number))
    if state is None:
        return 0, 0
    return int(state["history"][-1]["epoch"]) if state["history"] else 0, total_epochs(
        from_dict(state["config"])
    )


def kill_mid_epoch(search: Path, nodes: list[RayNode], pick, kill, delay: float) -> dict[str, Any] | None:
    """``kill(worker, node)`` ``delay`` s after an epoch end of a trial ``pick`` accepts; what was killed, or
    None if no trial ended an epoch in time. ``mid_epoch``: the file was not rewritten before the kill."""
    from tuning.records import SearchFolder

    found = after_an_epoch_end(search, nodes, pick, delay)
    if found is None:
        return None
    proc, number, node, mtime = found
    try:
        what = kill(proc, node)
    except psutil.NoSuchProcess:  # ended in the meantime: the next loop tries again
        return None
    path = SearchFolder(search).trial_checkpoint(number)
    mid = path.stat().st_mtime == mtime
    epoch, total = saved_epoch(search, number)
    return {
        "time": time.time(),
        "trial": number,
        "node": node.name,
        "what": what,
        "saved_epoch": epoch,
        "total_epochs": total,
        "mid_epoch": bool(mid and epoch < total),
        "s_after_epoch_end": delay,
    }


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.search = self.out / "search"
        self.state = load_state(self.out)
        cache = str(cache_dir())  # the caller's, pinned: the nodes' HOME is the soak's own
        home = self.out / "home"
        home.mkdir(exist_ok=True)
        self.env = {**cluster_env(home, REPO), "DERD_CACHE": cache, "PYTHONUNBUFFERED": "1"}
        if not (home / ".ray" / "auth_token").is_file():
            generate_token(self.env)
        self.nodes: list[RayNode] = []
        self.driver: subprocess.Popen | None = None
        self.memory = (self.out / "memory.jsonl").open("a")
        self.last_sample = 0.0

    def teachers(self) -> list[str]:
        """Two small digits teachers (the tests' ``train_quick``), trained once into ``<out>/teachers``."""
        from conftest import train_quick

        from derd.checkpoints import save_checkpoint

        folder = self.out / "teachers"
        folder.mkdir(exist_ok=True)
        flags = []
        for kind, seed in (("natural", 1), ("robust", 2)):
            path = folder / f"{kind}.pt"
            if not path.is_file():
                meta = {"arch": "digits_cnn_small", "num_classes": 10, "kind": kind}
                save_checkpoint(path, train_quick(seed=seed, epochs=2), meta)
            flags += [f"--teacher-{kind}", str(path)]
        return flags

    def save(self) -> None:
        save_state(self.out, self.state)

    def record_started(self, proc: psutil.Process) -> None:
        try:
            self.state["started"].append([proc.pid, proc.create_time()])
        except psutil.Error:
            pass
        self.save()

    def start_node(self, name: str, ip: str) -> RayNode:
        head = self.nodes[0].address if self.nodes else None
        node = RayNode(self.out, name, self.env, num_cpus=1, head=head, ip=ip)
        self.record_started(psutil.Process(node.proc.pid))
        self.state.setdefault("temp_dirs", []).append(str(node.temp_dir))
        self.nodes.append(node.wait_started())
        print(f"[soak] node {name} ({ip}) up", flush=True)
        return node

    def start_driver(self) -> None:
        resume = (self.search / "search.json").is_file()
        cmd = [
            sys.executable,
            str(REPO / "tuning" / "search.py"),
            "--out",
            str(self.search),
            "--address",
            self.nodes[0].address,
        ]
        if resume:
            cmd.append("--resume")
        else:
            write_space(self.out / "space.yaml", self.args)
            cmd += [
                "--space",
                str(self.out / "space.yaml"),
                "--name",
                NAME,
                "--cpus-per-trial",
                "1",
                "--max-failures",
                "3",
            ]
        log = (self.out / f"driver-{len(self.state['drivers']) + 1}.log").open("w")
        self.driver = subprocess.Popen(
            cmd, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.record_started(psutil.Process(self.driver.pid))
        self.state["drivers"].append(
            {"pid": self.driver.pid, "start": time.time(), "resume": resume, "log": log.name}
        )
        self.save()
        print(
            f"[soak] driver {len(self.state['drivers'])} started{' (--resume)' if resume else ''}", flush=True
        )

    # ---- memory -------------------------------------------------------------------------------------
    def sample(self) -> None:
        if time.time() - self.last_sample < self.args.sample_s:
            return
        self.last_sample = time.time()
        rows = []
        groups = (
            [("driver", psutil.Process(self.driver.pid))]
            if self.driver and self.driver.poll() is None
            else []
        )
        groups += [(n.name, p) for n in self.nodes for p in n.processes()]
        for where, proc in groups:
            try:
                title = " ".join(proc.cmdline())
                rows.append([where, proc.pid, _short(title), proc.memory_info().rss / 2**20])
            except (psutil.Error, IndexError):
                continue
        self.memory.write(json.dumps({"t": self.last_sample, "procs": rows}) + "\n")
        self.memory.flush()

    # ---- the run ------------------------------------------------------------------------------------
    def run(self) -> None:
        state = self.state
        if not state["done"]:
            left = end_recorded(state["started"])
            if left:
                print(f"[soak] ended {left} processes of an earlier soak session", flush=True)
            state["started"] = []
            self.start_node("head", "127.0.0.2")
            if state["node_loss"] is None:
                self.start_node("node2", "127.0.0.3")
            else:
                self.start_node("node3", "127.0.0.4")
                state["node_join"] = state["node_join"] or {"time": time.time(), "finished": None}
            try:
                self.loop()
                self.end_checks()
            finally:
                for node in reversed(self.nodes):
                    node.stop()
                self.memory.close()
            state["orphans"]["after_stop"] = self.left_over()
            state["done"] = True
            state["end"] = time.time()
            self.save()
        report(self.out, self.state)

    def loop(self) -> None:
        args, state = self.args, self.state
        self.start_driver()
        unexpected = 0
        while True:
            self.sample()
            rc = self.driver.poll()
            if rc is not None:
                state["drivers"][-1].update(end=time.time(), rc=rc)
                self.save()
                if rc == 0:
                    return
                unexpected += 1
                print(f"[soak] driver exited {rc} (see its log); resuming", flush=True)
                if unexpected > 3:
                    raise SystemExit("the driver keeps failing; see driver-*.log")
                self.start_driver()
                continue
            done = finished_trials(self.search)
            if state["node_loss"] is None and done >= args.node_loss_at:
                self.lose_node()
            elif (
                state["node_loss"]
                and state["node_join"] is None
                and time.time() - state["node_loss"]["time"] > args.join_after
            ):
                self.start_node("node3", "127.0.0.4")
                state["node_join"] = {"time": time.time(), "finished": done}
                self.save()
            elif not state["driver_kills"] and done >= args.driver_kill_at:
                self.kill_driver()
            elif (
                done >= (len(state["worker_kills"]) + 1) * args.kill_every
                and len(state["worker_kills"]) < (args.trials - 1) // args.kill_every
            ):
                self.kill_worker(done)
            time.sleep(1)

    def kill_worker(self, done: int) -> None:
        def kill(proc, node):
            proc.send_signal(signal.SIGKILL)
            return f"trial worker pid {proc.pid}"

        event = kill_mid_epoch(self.search, self.nodes, lambda *_: True, kill, self.args.delay)
        if event:
            event["finished"] = done
            self.state["worker_kills"].append(event)
            self.save()
            print(
                f"[soak] kill -9 of trial {event['trial']}'s worker on {event['node']} at {done} finished "
                f"(its run.pt at epoch {event['saved_epoch']} of {event['total_epochs']})",
                flush=True,
            )

    def lose_node(self) -> None:
        victim = self.nodes[1]

        def kill(proc, node):
            pids = [[p.pid, p.create_time()] for p in node.processes()]
            n = node.kill()
            self.state["node_loss_pids"] = pids
            return f"{n} processes of {node.name}"

        event = kill_mid_epoch(
            self.search, self.nodes, lambda p, n, node: node is victim, kill, self.args.delay
        )
        if event is None:
            return
        event["finished"] = finished_trials(self.search)
        self.nodes.remove(victim)
        self.state["node_loss"] = event
        self.save()
        print(
            f"[soak] node {victim.name} lost (kill -9 of {event['what']}) at {event['finished']} finished, "
            f"mid-epoch of trial {event['trial']}",
            flush=True,
        )
        time.sleep(10)
        alive = sum(_running(pid, t) for pid, t in self.state["node_loss_pids"])
        self.state["orphans"]["lost_node_processes_10s_after"] = alive
        self.save()

    def kill_driver(self) -> None:
        driver = self.driver

        def kill(proc, node):
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
            return f"driver pid {driver.pid}"

        event = kill_mid_epoch(self.search, self.nodes, lambda *_: True, kill, self.args.delay)
        if event is None:
            return
        event["finished"] = finished_trials(self.search)
        self.state["drivers"][-1].update(end=time.time(), rc=-9)
        self.state["driver_kills"].append(event)
        self.save()
        print(
            f"[soak] kill -9 of the driver at {event['finished']} finished (trial {event['trial']} mid-epoch)",
            flush=True,
        )
        time.sleep(30)
        self.state["orphans"]["trial_workers_30s_after_driver_kill"] = len(
            trial_workers(self.nodes, self.search)
        )
        self.save()
        self.start_driver()

    def end_checks(self) -> None:
        deadline = time.time() + 15
        while trial_workers(self.nodes, self.search) and time.time() < deadline:
            time.sleep(1)
        self.state["orphans"]["trial_workers_after_search"] = len(trial_workers(self.nodes, self.search))
        self.save()

    def left_over(self) -> list[str]:
        """Processes that name one of the soak's Ray temporary folders, after every node was stopped."""
        dirs = self.state.get("temp_dirs", [])
        found = []
        time.sleep(3)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            line = " ".join(proc.info["cmdline"] or [])
            if any(d in line for d in dirs):
                found.append(f"{proc.info['pid']} {_short(line)}")
        return found


def _running(pid: int, started: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) < 1e-3 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _short(title: str) -> str:
    for name in (
        "gcs_server",
        "raylet",
        "log_monitor.py",
        "monitor.py",
        "dashboard.py",
        "ray start",
        "search.py",
    ):
        if name in title:
            return name
    first = title.split()[0] if title.split() else title  # Ray pads its workers' titles with spaces
    return first if first.startswith("ray::") else first.rsplit("/", 1)[-1]


# ---- the figures ---------------------------------------------------------------------------------------
def epoch_checks(search: Path) -> tuple[list[str], dict[str, int]]:
    """Per trial: MLflow's epochs against its checkpoint and Optuna; Optuna against MLflow trial by trial."""
    import optuna
    from mlflow.tracking import MlflowClient

    from tuning.records import SearchFolder
    from tuning.trainable import checkpoint_state

    folder = SearchFolder(search)
    client = MlflowClient(folder.mlflow_uri)
    exp = client.get_experiment_by_name(NAME)
    runs = [
        r
        for r in client.search_runs([exp.experiment_id], max_results=10_000)
        if r.data.tags.get("derd.kind") == "trial"
    ]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=NAME, storage=folder.optuna_uri)
    by_number: dict[int, list] = {}
    for run in runs:
        by_number.setdefault(int(run.data.tags["optuna.trial_number"]), []).append(run)
    counts = dict.fromkeys(
        (
            "trials",
            "optuna_complete",
            "mlflow_finished",
            "runs_per_trial_not_1",
            "state_mismatch",
            "value_mismatch",
            "epochs_lost",
            "epochs_repeated",
            "last_epoch_mismatch",
            "restored_trials",
            "restores",
        ),
        0,
    )
    lines = []
    state_of = {"COMPLETE": "FINISHED", "FAIL": "FAILED", "PRUNED": "FINISHED"}
    for trial in study.trials:
        counts["trials"] += 1
        counts["optuna_complete"] += trial.state.name == "COMPLETE"
        mine = by_number.get(trial.number, [])
        if len(mine) != 1:
            counts["runs_per_trial_not_1"] += 1
            lines.append(f"trial {trial.number}: {len(mine)} MLflow runs")
            continue
        run = mine[0]
        counts["mlflow_finished"] += run.info.status == "FINISHED"
        if state_of.get(trial.state.name) != run.info.status:
            counts["state_mismatch"] += 1
            lines.append(f"trial {trial.number}: Optuna {trial.state.name}, MLflow {run.info.status}")
        if trial.values is not None:
            mlflow_values = [run.data.metrics.get(m) for m in study.metric_names]
            if any(v is None or abs(v - o) > 1e-9 for v, o in zip(mlflow_values, trial.values)):
                counts["value_mismatch"] += 1
                lines.append(f"trial {trial.number}: Optuna {trial.values}, MLflow {mlflow_values}")
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "time/epoch_s")]
        state = checkpoint_state(folder.trial_checkpoint(trial.number))
        saved = [int(h["epoch"]) for h in state["history"]] if state else []
        lost = sorted(set(saved) - set(steps))
        repeated = len(steps) - len(set(steps))
        counts["epochs_lost"] += len(lost)
        counts["epochs_repeated"] += repeated
        last = {max(steps, default=0), max(saved, default=0), int(trial.user_attrs.get("epochs", -1))}
        if len(last) != 1:
            counts["last_epoch_mismatch"] += 1
            lines.append(
                f"trial {trial.number}: last epoch MLflow {max(steps, default=0)}, checkpoint "
                f"{max(saved, default=0)}, Optuna {trial.user_attrs.get('epochs')}"
            )
        if lost or repeated:
            lines.append(f"trial {trial.number}: lost {lost}, repeated {repeated} ({sorted(steps)})")
        restores = int(run.data.tags.get("derd.restores", "0"))
        counts["restored_trials"] += restores > 0
        counts["restores"] += restores
    return lines, counts


def memory_figures(out: Path) -> list[str]:
    """Per long-lived process (alive over at least half the soak): peak RSS and the slope over the last half
    of its samples; the trial workers' peaks."""
    series: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    with (out / "memory.jsonl").open() as f:
        for line in f:
            sample = json.loads(line)
            for where, pid, title, rss in sample["procs"]:
                series.setdefault((where, pid, _short(title)), []).append((sample["t"], rss))
    if not series:
        return ["no memory samples"]
    t0 = min(p[0][0] for p in series.values())
    t1 = max(p[-1][0] for p in series.values())
    lines = [
        f"{'process':<34} {'pid':>7} {'alive min':>9} {'samples':>7} {'peak MB':>8} {'last-half slope MB/h':>21}"
    ]
    workers = []
    for (where, pid, title), points in sorted(series.items()):
        span = points[-1][0] - points[0][0]
        if "ImplicitFunc" in title or span < 0.25 * (t1 - t0) or len(points) < 6:
            if "ImplicitFunc" in title:
                workers.append(max(r for _, r in points))
            continue
        half = points[len(points) // 2 :]
        xs, ys = [t / 3600 for t, _ in half], [r for _, r in half]
        slope = statistics.linear_regression(xs, ys).slope if len(set(xs)) > 1 else 0.0
        lines.append(
            f"{where + ' ' + title:<34} {pid:>7} {span / 60:>9.1f} {len(points):>7} "
            f"{max(r for _, r in points):>8.0f} {slope:>+21.1f}"
        )
    if workers:
        lines.append(
            f"trial workers: {len(workers)} processes sampled, peak RSS median {statistics.median(workers):.0f} "
            f"MB, max {max(workers):.0f} MB"
        )
    return lines


def report(out: Path, state: dict[str, Any]) -> None:
    search = out / "search"
    record = json.loads((search / "search.json").read_text())
    lines, counts = epoch_checks(search)
    sessions = record.get("sessions", [])
    wall = sum(s["wall_s"] for s in sessions)
    soak_wall = state.get("end", time.time()) - state["created"]
    finished = counts["trials"]
    kills = state["worker_kills"]
    text = [
        f"soak of {finished} trials over {len(sessions)} driver session(s), {len(state['drivers'])} drivers started",
        f"kills: {len(kills)} trial workers (at {[k['finished'] for k in kills]} finished; mid-epoch "
        f"{sum(k['mid_epoch'] for k in kills)}/{len(kills)}), node loss at "
        f"{(state['node_loss'] or {}).get('finished')} finished (trial {(state['node_loss'] or {}).get('trial')}, "
        f"mid-epoch {(state['node_loss'] or {}).get('mid_epoch')}), a node joined at "
        f"{(state['node_join'] or {}).get('finished')} finished, driver kill -9 at "
        f"{[k['finished'] for k in state['driver_kills']]} finished (mid-epoch "
        f"{[k['mid_epoch'] for k in state['driver_kills']]}) then --resume",
        f"epochs: {counts['epochs_lost']} lost, {counts['epochs_repeated']} repeated, "
        f"{counts['last_epoch_mismatch']} trials whose last epoch differs between MLflow, checkpoint and Optuna",
        f"Optuna vs MLflow: {counts['trials']} trials, {counts['optuna_complete']} COMPLETE in Optuna, "
        f"{counts['mlflow_finished']} FINISHED in MLflow; {counts['runs_per_trial_not_1']} trials without "
        f"exactly one run, {counts['state_mismatch']} state and {counts['value_mismatch']} value mismatches",
        f"restores: {counts['restored_trials']} trials restored ({counts['restores']} restores in derd.restores)",
        f"orphans: {json.dumps(state['orphans'])}",
        f"trials per hour: {finished / max(wall, 1e-9) * 3600:.1f} over the sessions' {wall / 60:.1f} min, "
        f"{finished / max(soak_wall, 1e-9) * 3600:.1f} over the soak's {soak_wall / 60:.1f} min",
        "memory (RSS):",
        *memory_figures(out),
        *(["details:", *lines] if lines else []),
    ]
    (out / "figures.txt").write_text("\n".join(text) + "\n")
    print("\n".join(text), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", default=str(REPO / "runs" / "soak"), help="the soak's folder (state, search, logs)"
    )
    p.add_argument("--trials", type=int, default=100)
    p.add_argument(
        "--kill-every", type=int, default=20, help="K: a trial worker killed every K finished trials"
    )
    p.add_argument(
        "--node-loss-at", type=int, default=30, help="finished trials at which the worker node is lost"
    )
    p.add_argument("--join-after", type=float, default=30, help="seconds after the loss a new node joins")
    p.add_argument(
        "--driver-kill-at", type=int, default=50, help="finished trials at which the driver is killed"
    )
    p.add_argument("--epochs", type=int, default=4, help="a trial's epochs (half of them stage I)")
    p.add_argument("--iters", type=int, default=80, help="iterations per epoch")
    p.add_argument("--delay", type=float, default=1.0, help="seconds after an epoch end that a kill falls")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between memory samples")
    p.add_argument("--seed", type=int, default=0)
    Soak(p.parse_args(argv)).run()


if __name__ == "__main__":
    main()
