"""Attacks and the evaluation protocol: eps-ball, [0, 1], lower accuracy, no side effects."""

from __future__ import annotations

import pytest
import torch

from derd import attacks
from derd.data import make_loader
from derd.evaluate import PROTOCOLS, column_attacks, evaluate, markdown_table

EPS = 0.2


def _acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("column", ["fgsm_acc", "pgd_acc", "pgd_t_acc", "cw_acc", "aa_acc"])
def test_each_attack_stays_in_ball_and_unit_range_and_lowers_accuracy(
    natural_model, digits_val_batch, column
):
    x, y = digits_val_batch
    x, y = x[:48], y[:48]
    x_adv = column_attacks(EPS, seed=0, aa_version="fast")[column](natural_model, x, y)
    assert x_adv.shape == x.shape
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    clean = _acc(natural_model, x, y)
    assert clean > 0.8
    assert _acc(natural_model, x_adv, y) < clean - 0.2


def test_fgsm_is_no_stronger_than_pgd_on_a_natural_model(natural_model, digits_val_batch):
    x, y = digits_val_batch
    fns = column_attacks(EPS, seed=0, aa_version="fast")
    assert _acc(natural_model, fns["fgsm_acc"](natural_model, x, y), y) >= _acc(
        natural_model, fns["pgd_acc"](natural_model, x, y), y
    )


def test_pgd_is_seeded(natural_model, digits_val_batch):
    x, y = digits_val_batch

    def run(s):
        return attacks.pgd(
            natural_model, x, y, eps=EPS, steps=3, step_size=0.05, generator=torch.Generator().manual_seed(s)
        )

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


def test_evaluation_leaves_parameters_bn_buffers_mode_and_rng_unchanged(natural_model, digits_val_batch):
    x, y = digits_val_batch
    natural_model.train()
    natural_model.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in natural_model.state_dict().items()}
    rng_before = torch.get_rng_state()
    loader = make_loader(torch.utils.data.TensorDataset(x[:24], y[:24]), 12)
    result = evaluate(natural_model, loader, "full", eps=EPS)
    assert natural_model.training
    natural_model.eval()
    for k, v in natural_model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in natural_model.parameters())
    assert torch.equal(torch.get_rng_state(), rng_before)
    columns = {"clean_acc", "fgsm_acc", "pgd_acc", "pgd_t_acc", "cw_acc", "aa_acc"}
    assert set(result) == columns | {"ave_acc"} | {f"worst_{c}" for c in columns}
    six = [result[k] for k in columns]
    assert result["ave_acc"] == pytest.approx(sum(six) / 6)
    assert result["aa_acc"] <= result["pgd_acc"] + 1e-9


def test_standard_autoattack_runs_through_pyautoattack(natural_model, digits_val_batch):
    x, y = digits_val_batch
    x_adv = attacks.autoattack(natural_model, x[:16], y[:16], eps=EPS, version="standard")
    assert (x_adv - x[:16]).abs().max() <= EPS + 1e-6
    assert _acc(natural_model, x_adv, y[:16]) < _acc(natural_model, x[:16], y[:16])


def test_search_protocol_scores_a_fixed_prefix(natural_model, digits_val_batch):
    x, y = digits_val_batch
    proto = PROTOCOLS["search"]
    assert proto.columns == ("clean_acc", "pgd_acc", "aa_acc")
    small = type(proto)("tiny", proto.columns, 20, proto.aa_version)
    loader = make_loader(torch.utils.data.TensorDataset(x, y), 16)
    first = evaluate(natural_model, loader, small, eps=EPS)
    assert first == evaluate(natural_model, loader, small, eps=EPS)
    assert first["clean_acc"] == pytest.approx(100 * _acc(natural_model, x[:20], y[:20]))


def test_markdown_table_orders_columns_like_the_paper():
    table = markdown_table({"m": {"aa_acc": 1.0, "clean_acc": 2.0}})
    assert table.splitlines()[0] == "| model | Clean | AA |"


def test_search_protocol_aa_is_standard_aa_after_its_first_two_attacks(
    natural_model, digits_val_batch, caplog
):
    """pyautoattack's standard run logs its robust accuracy after each attack; the search
    protocol's AA must equal the figure after APGD-T (APGD-CE with 1 restart, then APGD-T)."""
    import logging
    import re

    x, y = digits_val_batch
    x, y = x[:24], y[:24]
    with caplog.at_level(logging.DEBUG, logger="auto-attack"):
        attacks.autoattack(natural_model, x, y, eps=0.05, version="standard")
    after_t = [float(m) for m in re.findall(r"robust accuracy after APGD-T: ([\d.]+)%", caplog.text)]
    assert len(after_t) == 1
    fast = attacks.autoattack(natural_model, x, y, eps=0.05, version="fast")
    assert _acc(natural_model, fast, y) * 100 == pytest.approx(
        after_t[0], abs=0.006
    )  # the log rounds to 0.01


def test_a_columns_value_does_not_depend_on_which_columns_ran_before(natural_model, digits_val_batch):
    x, y = digits_val_batch
    loader = make_loader(torch.utils.data.TensorDataset(x[:32], y[:32]), 16)
    only_pgd = type(PROTOCOLS["search"])("pgd", ("pgd_acc",), None, "fast")
    with_others = type(PROTOCOLS["search"])(
        "all", ("clean_acc", "pgd_t_acc", "fgsm_acc", "pgd_acc"), None, "fast"
    )
    assert (
        evaluate(natural_model, loader, only_pgd, eps=0.1)["pgd_acc"]
        == evaluate(natural_model, loader, with_others, eps=0.1)["pgd_acc"]
    )
