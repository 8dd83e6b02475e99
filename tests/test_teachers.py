"""Teachers: checkpoints round-trip with metadata; unsafe or mismatched files give one clear line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from derd.checkpoints import load_checkpoint, save_checkpoint
from derd.errors import UserError
from derd.models import create_model
from derd.teachers import train_teacher


class Payload:
    """Unpickling this would run code: the loader must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _model(info, arch="digits_cnn_small"):
    return create_model(arch, info.num_classes, in_channels=1, mean=info.mean, std=info.std)


def test_checkpoint_round_trip_keeps_weights_and_metadata(tmp_path, digits_info):
    model = _model(digits_info)
    save_checkpoint(
        tmp_path / "t.pt",
        model,
        {
            "arch": "digits_cnn_small",
            "dataset": "digits",
            "num_classes": 10,
            "kind": "natural",
            "table": {"clean_acc": 1.0},
        },
    )
    loaded, meta = load_checkpoint(tmp_path / "t.pt", digits_info)
    assert meta["kind"] == "natural" and meta["table"] == {"clean_acc": 1.0}
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(loaded(x), model.eval()(x))


def test_plain_state_dicts_load_with_arch_and_prefixes(tmp_path, digits_info):
    model = _model(digits_info).eval()
    torch.save({f"module.{k}": v for k, v in model.net.state_dict().items()}, tmp_path / "plain.pt")
    with pytest.raises(UserError, match="plain state_dict without metadata: name its architecture"):
        load_checkpoint(tmp_path / "plain.pt", digits_info)
    loaded, _ = load_checkpoint(tmp_path / "plain.pt", digits_info, arch="digits_cnn_small")
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(loaded(x), model(x))


def test_pickled_code_is_refused_and_never_run(tmp_path, digits_info):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refusing .*pickled code"):
        load_checkpoint(tmp_path / "evil.pt", digits_info, arch="digits_cnn_small")


def test_wrong_arch_wrong_classes_corrupt_and_missing(tmp_path, digits_info):
    save_checkpoint(tmp_path / "t.pt", _model(digits_info), {"arch": "digits_cnn_small", "num_classes": 10})
    torch.save(_model(digits_info).state_dict(), tmp_path / "plain.pt")
    with pytest.raises(UserError, match="does not fit a digits_cnn"):
        load_checkpoint(tmp_path / "plain.pt", digits_info, arch="digits_cnn")
    save_checkpoint(
        tmp_path / "c100.pt",
        create_model("digits_cnn_small", 100, in_channels=1),
        {"arch": "digits_cnn_small", "num_classes": 100},
    )
    with pytest.raises(UserError, match="has 100 classes but digits has 10"):
        load_checkpoint(tmp_path / "c100.pt", digits_info)
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="corrupt or not a PyTorch file"):
        load_checkpoint(tmp_path / "bad.pt", digits_info)
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt", digits_info)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["derd.evaluate", "--dataset", "digits", "--checkpoint", "missing.pt"], "does not exist"),
        (["derd.evaluate", "--dataset", "svhn", "--checkpoint", "x.pt"], "unknown dataset 'svhn'"),
        (["derd.teachers", "--dataset", "cifar10", "--kind", "natural"], "--data-root"),
        (
            ["derd.evaluate", "--dataset", "digits", "--checkpoint", "evil.pt", "--arch", "digits_cnn"],
            "refusing",
        ),
    ],
)
def test_clis_report_one_line_and_exit_2(tmp_path, argv, message):
    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    proc = subprocess.run(
        [sys.executable, "-m", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_adversarial_training_makes_a_more_robust_teacher(digits_info):
    from derd.attacks import pgd
    from derd.data import load_split

    x, y = load_split("digits", "val").tensors
    accs = {}
    for kind in ("natural", "robust"):
        model = train_teacher(digits_info, kind, "digits_cnn_small", epochs=6, progress=False)
        x_adv = pgd(
            model,
            x,
            y,
            eps=digits_info.eps,
            steps=10,
            step_size=digits_info.eps / 4,
            generator=torch.Generator().manual_seed(0),
        )
        with torch.no_grad():
            accs[kind] = (model(x_adv).argmax(1) == y).float().mean().item()
    assert accs["robust"] > accs["natural"] + 0.2


class SelfNormalizing(torch.nn.Module):
    """A RobustBench-style network: takes raw [0, 1] images and normalises inside itself."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.register_buffer("mu", torch.tensor([0.3]).view(1, 1, 1, 1))
        self.register_buffer("sigma", torch.tensor([0.4]).view(1, 1, 1, 1))
        self.model = net

    def forward(self, x):
        return self.model((x - self.mu) / self.sigma)


def test_a_model_that_normalises_itself_loads_with_normalize_none(tmp_path, digits_info):
    from derd.models import register

    @register("self_normalizing_cnn")
    def _builder(num_classes: int, in_channels: int = 1):
        return SelfNormalizing(create_model("digits_cnn_small", num_classes, in_channels=in_channels).net)

    theirs = _builder(10).eval()
    torch.save(theirs.state_dict(), tmp_path / "robustbench.pt")
    x = torch.rand(4, 1, 8, 8)
    raw, _ = load_checkpoint(
        tmp_path / "robustbench.pt", digits_info, arch="self_normalizing_cnn", normalize="none"
    )
    assert torch.allclose(raw(x), theirs(x), atol=1e-6)  # exactly the user's model
    twice, _ = load_checkpoint(tmp_path / "robustbench.pt", digits_info, arch="self_normalizing_cnn")
    assert not torch.allclose(twice(x), theirs(x), atol=1e-3)  # the default would normalise twice


def test_cached_teachers_are_found_for_any_dataset_by_name_and_kind(tmp_path, digits_info):
    """$DERD_CACHE/teachers/<dataset>/<kind>_<arch>.pt: the dataset's own architecture first, else the only
    file of that kind; several others are ambiguous (one line naming the flag); none is None."""
    from derd.cache import cache_dir
    from derd.teachers import find_cached_teacher, teacher_path

    folder = cache_dir() / "teachers" / "digits"
    for existing in folder.glob("*.pt"):  # the session's cache may hold the trained digits pair
        existing.rename(tmp_path / existing.name)
    try:
        assert find_cached_teacher(digits_info, "robust") is None
        save_checkpoint(
            folder / "robust_digits_cnn_small.pt",
            _model(digits_info),
            {"arch": "digits_cnn_small", "num_classes": 10},
        )
        assert find_cached_teacher(digits_info, "robust") == folder / "robust_digits_cnn_small.pt"
        assert find_cached_teacher(digits_info, "natural") is None
        save_checkpoint(
            folder / "robust_other.pt", _model(digits_info), {"arch": "digits_cnn_small", "num_classes": 10}
        )
        with pytest.raises(UserError, match="holds 2 robust teachers .*pass --teacher-robust FILE"):
            find_cached_teacher(digits_info, "robust")
        save_checkpoint(
            teacher_path(digits_info, "robust", "digits_cnn"),
            _model(digits_info),
            {"arch": "digits_cnn_small", "num_classes": 10},
        )
        assert find_cached_teacher(digits_info, "robust") == teacher_path(digits_info, "robust", "digits_cnn")
    finally:
        for made in folder.glob("*.pt"):
            made.unlink()
        for kept in tmp_path.glob("*.pt"):
            kept.rename(folder / kept.name)
