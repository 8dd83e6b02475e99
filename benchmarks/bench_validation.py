"""How faithfully does a validation set made from the teachers alone rank students? (prints figures)

    python benchmarks/bench_validation.py --searches runs/digits-all runs/bench-confirm/full/* [--out runs/bench-validation]
                                          [--variants both inversion robust] [--full-budget-only]

Every student is a trial of the searches named (its ``trials/<n>/run.pt``: students of every method,
of varied quality, stopped early or not). Each is scored with the ``search`` protocol twice: on the
real val split, and on each synthetic validation set of ``VARIANTS`` (``derd.validation``, made
once from the digits teachers, seed 0, stored in --out). Figures per variant:

* Kendall tau-b between the synthetic and the real rankings, for AA and for clean accuracy;
* regret per search: the real val AA of the trial the real scores choose (the best val AA among the
  feasible trials that ran the full budget) minus that of the trial the synthetic scores choose
  (feasible there: clean agreement at least the space's fraction of the teachers', which is 100 on
  the set by construction), in points and in binomial standard errors of the real val AA;
* the set's size, the teachers' agreement, what it cost to make and what scoring it costs a trial.

The choice is made over the searches' own trials (their students as they ended), not by re-running
each search with the synthetic score: early stopping, and so which trials ran to the end, would
differ there. Scores are cached in ``<out>/scores.jsonl`` (one line per student and set): a second
run, or one with more searches, scores only what is new.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from derd.config import apply_overrides, from_dict, preset  # noqa: E402
from derd.data import dataset_info, load_split, make_loader  # noqa: E402
from derd.evaluate import evaluate  # noqa: E402
from derd.experts import load_experts  # noqa: E402
from derd.methods.registry import total_epochs  # noqa: E402
from derd.models import create_model  # noqa: E402
from derd.run import DistillationRun  # noqa: E402
from derd.validation import load_validation_set, make_validation_set, save_validation_set  # noqa: E402

VARIANTS: dict[str, dict] = {  # synthetic_val.* over its defaults
    "inversion": {"procedure": "inversion"},
    "inversion-snapshots": {"procedure": "inversion", "per_class": 34, "snapshots": 3},
    "robust": {"procedure": "robust"},
    "robust-snapshots": {"procedure": "robust", "snapshots": 3},
    "both": {"procedure": "both"},  # the default
}
MIN_CLEAN_FRACTION = 0.5  # the digits space's constraint


def student_of(path: Path, info) -> tuple[torch.nn.Module, dict]:
    """A trial's student as its run.pt holds it, and what the bench needs of the trial."""
    state = DistillationRun.read_state(path)
    cfg = from_dict(state["config"])
    model = create_model(
        cfg.student.arch, info.num_classes, in_channels=info.image_shape[0], mean=info.mean, std=info.std
    )
    model.load_state_dict(state["student"])
    return model.eval(), {
        "method": cfg.method,
        "epoch": state["epoch"],
        "full_budget": state["epoch"] >= total_epochs(cfg),
    }


def synthetic_sets(out: Path, info, names: list[str]) -> dict[str, torch.utils.data.Dataset]:
    cfg = preset(info.name)
    experts = load_experts(cfg, progress=False, methods=("derd",))
    sets = {}
    for name in names:
        path = out / f"synthetic_{name}.pt"
        if not path.is_file():
            recipe = apply_overrides(
                cfg, {f"synthetic_val.{k}": v for k, v in VARIANTS[name].items()}
            ).synthetic_val
            save_validation_set(make_validation_set(experts, info, recipe, seed=0), info, path)
        synthetic = load_validation_set(path, info)
        s = synthetic.stats
        print(
            f"set {name}: {s['n_images']} images of {s['n_drawn']} drawn (teachers agree on "
            f"{100 * s['teacher_agreement']:.1f}%), classes {s['class_counts']}, made in {s['seconds']:.0f} s",
            flush=True,
        )
        sets[name] = synthetic.dataset()
    return sets


def score(model: torch.nn.Module, data, info) -> dict[str, float]:
    start = time.perf_counter()
    m = evaluate(model, make_loader(data, 256), "search", eps=info.eps, device="cpu")
    return {"clean": m["clean_acc"], "aa": m["aa_acc"], "seconds": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--searches", nargs="+", required=True, help="search folders (each with trials/*/run.pt)")
    p.add_argument("--out", default=str(REPO / "runs" / "bench-validation"))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument(
        "--full-budget-only",
        action="store_true",
        help="score only the trials that ran the full budget (the only ones a search chooses): enough "
        "for the regret, and cheaper; tau is then over those students only",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    info = dataset_info("digits")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = {"real": load_split("digits", "val"), **synthetic_sets(out, info, args.variants)}
    cache_file = out / "scores.jsonl"
    cached = {}
    if cache_file.is_file():
        for line in cache_file.read_text().splitlines():
            row = json.loads(line)
            cached[(row["student"], row["set"])] = row
    students = []
    for search in map(Path, args.searches):
        record = json.loads((search / "search.json").read_text())
        for path in sorted(search.glob("trials/*/run.pt")):
            model, meta = student_of(path, info)
            if args.full_budget_only and not meta["full_budget"]:
                continue
            entry = {"path": str(path), "search": str(search), "threshold": record["clean_threshold"], **meta}
            for name, data in sets.items():
                key = (str(path), name)
                if key not in cached:
                    cached[key] = {"student": str(path), "set": name, **score(model, data, info)}
                    with cache_file.open("a") as f:
                        f.write(json.dumps(cached[key]) + "\n")
                entry[name] = cached[key]
            students.append(entry)
    print(
        f"\n{len(students)} students from {len(args.searches)} searches; real val: {len(sets['real'])} images, "
        "search protocol (clean, PGD_S, APGD-CE+T), CPU"
    )
    real_aa = [s["real"]["aa"] for s in students]
    print(
        "| set | images | teachers agree | tau AA | tau clean | scoring s per student | regret per search (points; s.e.) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.variants:
        syn = load_validation_set(out / f"synthetic_{name}.pt", info).stats
        tau_aa = kendalltau([s[name]["aa"] for s in students], real_aa).statistic
        tau_clean = kendalltau(
            [s[name]["clean"] for s in students], [s["real"]["clean"] for s in students]
        ).statistic
        regrets = []
        for search in dict.fromkeys(s["search"] for s in students):
            full = [s for s in students if s["search"] == search and s["full_budget"]]
            real_pick = max(
                (s for s in full if s["real"]["clean"] >= s["threshold"]), key=lambda s: s["real"]["aa"]
            )
            syn_pick = max(
                (s for s in full if s[name]["clean"] >= MIN_CLEAN_FRACTION * 100), key=lambda s: s[name]["aa"]
            )
            p_hat = real_pick["real"]["aa"] / 100
            se = 100 * math.sqrt(max(p_hat * (1 - p_hat), 1e-4) / len(sets["real"]))
            gap = real_pick["real"]["aa"] - syn_pick["real"]["aa"]
            regrets.append(f"{gap:.2f} ({gap / se:.1f})")
        cost = sum(s[name]["seconds"] for s in students) / len(students)
        print(
            f"| {name} | {syn['n_images']} | {100 * syn['teacher_agreement']:.1f}% | {tau_aa:.3f} | {tau_clean:.3f} | "
            f"{cost:.2f} | {', '.join(regrets)} |"
        )
    cost = sum(s["real"]["seconds"] for s in students) / len(students)
    print(
        f"real val scoring: {cost:.2f} s per student; real val AA spans {min(real_aa):.2f} to {max(real_aa):.2f}"
    )


if __name__ == "__main__":
    main()
