"""Shared fixtures: small digits models trained in seconds, temporary caches."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from derd.checkpoints import save_checkpoint
from derd.data import dataset_info, load_split, make_loader
from derd.models import create_model

REPO = Path(__file__).resolve().parent.parent
# top-level entries the suite may create by design: pytest's own cache, the browser test's screenshots
SUITE_OUTPUTS = {".pytest_cache", "artifacts"}


def working_tree_paths(root: Path = REPO) -> set[str]:
    """What a test could leave behind in the repository: its top-level entries and, where it is a git
    checkout, every untracked path git does not ignore (``git status --porcelain``)."""
    paths = (
        {p.name + ("/" if p.is_dir() else "") for p in root.iterdir()}
        - {f"{n}/" for n in SUITE_OUTPUTS}
        - SUITE_OUTPUTS
    )
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return paths
    return paths | {line[3:] for line in status.splitlines() if line.startswith("?? ")}


@pytest.fixture(scope="session", autouse=True)
def _working_tree_unchanged():
    """The suite writes only to temporary folders: after it, the repository holds no new path (an MLflow
    experiment without an artifact location, for one, writes ``mlruns/`` into the working directory)."""
    before = working_tree_paths()
    yield
    new = sorted(working_tree_paths() - before)
    if new:
        pytest.fail(
            f"the tests left new paths in {REPO}: {', '.join(new)}; write them under tmp_path instead",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Teachers trained by a test never land in the user's cache."""
    monkeypatch.setenv("DERD_CACHE", str(tmp_path_factory.getbasetemp() / "derd-cache"))


@pytest.fixture(scope="session")
def digits_info():
    return dataset_info("digits")


@pytest.fixture(scope="session")
def digits_val_batch():
    """128 validation images and labels as tensors."""
    x, y = next(iter(make_loader(load_split("digits", "val"), 128)))
    return x, y


def train_quick(arch: str = "digits_cnn_small", epochs: int = 8, seed: int = 0) -> torch.nn.Module:
    """A natural digits classifier in about a second (well above 85% clean accuracy)."""
    torch.manual_seed(seed)
    info = dataset_info("digits")
    model = create_model(arch, 10, in_channels=1, mean=info.mean, std=info.std)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = make_loader(load_split("digits", "teacher"), 64, shuffle=True, seed=seed)
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def natural_model():
    return train_quick()


TINY_BASE = {
    "budget.epochs": 4,
    "budget.iters_per_epoch": 2,
    "budget.batch_size": 16,
    "stage1.epochs": 2,
    "stage2.pgd_steps": 2,
    "eval.every": 2,
    "student.latent_dim": 16,
    "student.generator_width": 16,
    "data.val_batch_size": 64,
}


def write_space(path: Path, **extra) -> Path:
    space = {
        "dataset": "digits",
        "base": dict(TINY_BASE),
        "space": {
            "stage1.lambda_adv": {"distribution": "loguniform", "low": 1e-3, "high": 1.0},
            "stage2.lambda_nat": {"distribution": "loguniform", "low": 0.05, "high": 5.0},
        },
        "presets": ["paper"],
        "search": {"num_trials": 3, "max_concurrent": 2, "scheduler": "none"},
    }
    for key, value in extra.items():
        space[key] = value
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.fixture(scope="session")
def teacher_args(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teachers")
    for kind, seed in (("natural", 1), ("robust", 2)):
        save_checkpoint(
            folder / f"{kind}.pt",
            train_quick(seed=seed, epochs=2),
            {"arch": "digits_cnn_small", "num_classes": 10, "kind": kind},
        )
    return ["--teacher-natural", str(folder / "natural.pt"), "--teacher-robust", str(folder / "robust.pt")]
