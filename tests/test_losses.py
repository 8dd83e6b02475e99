"""Each loss term moves the way docs/methods.md says under one gradient step on its own."""

from __future__ import annotations

import pytest
import torch

from derd import losses
from derd.models import Generator, create_model
from derd.objectives import sga


def _descend(param: torch.Tensor, fn, lr: float, steps: int = 5) -> tuple[float, float]:
    """Loss before and after a few plain gradient-descent steps on ``param``."""
    before = fn(param).item()
    for _ in range(steps):
        param.requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(param), param)
        param = (param - lr * grad).detach()
    return before, fn(param).item()


@pytest.fixture()
def teacher(natural_model):
    return natural_model.eval()


def test_kl_is_zero_for_equal_logits_and_positive_otherwise():
    a = torch.randn(4, 10)
    assert losses.kl_divergence(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.kl_divergence(a, torch.randn(4, 10)).item() > 0


def test_one_hot_loss_step_makes_the_teacher_more_confident(teacher):
    x0 = torch.rand(16, 1, 8, 8)
    before, after = _descend(x0, lambda x: losses.one_hot_loss(teacher(x.clamp(0, 1))), lr=0.05)
    assert after < before


def test_adversarial_loss_step_increases_teacher_student_disagreement(teacher):
    student = create_model("digits_cnn_small", 10, in_channels=1).eval()
    x0 = torch.rand(16, 1, 8, 8)
    kl = lambda x: losses.kl_divergence(teacher(x), student(x))  # noqa: E731
    before = kl(x0).item()
    x = x0.clone()
    for _ in range(5):
        x.requires_grad_(True)
        (g,) = torch.autograd.grad(losses.adversarial_loss(teacher(x), student(x)), x)
        x = (x - 0.05 * g).detach()
    assert kl(x).item() > before


def test_information_entropy_step_balances_classes():
    logits0 = torch.zeros(32, 10)
    logits0[:, 0] = 3.0  # everything predicted as class 0
    entropy = lambda z: -(torch.softmax(z, 1).mean(0) * torch.log(torch.softmax(z, 1).mean(0))).sum()  # noqa: E731
    before, after = _descend(logits0 + 0.01 * torch.randn(32, 10), losses.information_entropy_loss, lr=1.0)
    assert after < before  # L_ie falls, so the entropy of the mean prediction rises
    assert before == pytest.approx(-entropy(logits0).item(), abs=0.05)


def test_bn_loss_step_matches_teacher_statistics_and_hooks_are_removable(teacher):
    bn = losses.BatchNormStatistics(teacher)

    def l_bn(x):
        with bn.recording():
            teacher(x)
        return bn.loss()

    before, after = _descend(torch.rand(32, 1, 8, 8), l_bn, lr=0.01)
    assert after < before
    teacher(torch.rand(2, 1, 8, 8))  # outside recording(): nothing recorded
    assert len(bn.terms) == len(bn.handles)
    bn.remove()
    assert all(not m._forward_hooks for m in teacher.modules())


def test_diversity_loss_step_spreads_the_generator():
    torch.manual_seed(0)
    gen = Generator((1, 8, 8), latent_dim=8, width=16)
    z = torch.randn(32, 8)
    opt = torch.optim.SGD(gen.parameters(), lr=0.5)
    before = losses.diversity_loss(z, gen(z)).item()
    for _ in range(5):
        opt.zero_grad()
        losses.diversity_loss(z, gen(z)).backward()
        opt.step()
    assert losses.diversity_loss(z, gen(z)).item() < before  # larger image distance per noise distance


def test_consistency_step_pulls_clean_and_adversarial_views_together():
    torch.manual_seed(0)
    student = create_model("digits_cnn_small", 10, in_channels=1).eval()
    x = torch.rand(16, 1, 8, 8)
    x_adv = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    cons = lambda: losses.consistency_loss(student(x), student(x_adv))  # noqa: E731
    before = cons().item()
    for _ in range(5):
        opt.zero_grad()
        cons().backward()
        opt.step()
    assert cons().item() < before


def test_sga_removes_conflict_and_keeps_agreeing_gradients():
    gen = torch.Generator().manual_seed(0)
    a = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), torch.randn(3, 3)]
    b = [torch.tensor([-1.0, 1.0]), torch.tensor([2.0, 0.5]), -a[2] + 0.1 * torch.randn(3, 3)]
    out, frac = sga(a, b, gen)
    assert frac.item() == pytest.approx(2 / 3)
    assert torch.equal(out[1], a[1] + b[1])  # no conflict: plain sum
    for i in (0, 2):  # conflict: exactly one of the two loses its component along the other
        a_proj = a[i] - (a[i] * b[i]).sum() / b[i].pow(2).sum() * b[i]
        b_proj = b[i] - (a[i] * b[i]).sum() / a[i].pow(2).sum() * a[i]
        if torch.allclose(out[i], a_proj + b[i], atol=1e-6):
            assert (a_proj * b[i]).sum().abs() < 1e-5  # no negative inner product left
        else:
            assert torch.allclose(out[i], a[i] + b_proj, atol=1e-6)
            assert (b_proj * a[i]).sum().abs() < 1e-5


def test_sga_choice_is_random_over_calls():
    a, b = [torch.tensor([1.0, 0.0])], [torch.tensor([-1.0, 1.0])]
    gen = torch.Generator().manual_seed(0)
    results = {tuple(sga(a, b, gen)[0][0].tolist()) for _ in range(20)}
    assert len(results) == 2


def test_l1_discrepancy_step_pushes_teacher_and_student_apart(teacher):
    student = create_model("digits_cnn_small", 10, in_channels=1).eval()
    x0 = torch.rand(16, 1, 8, 8)
    assert losses.l1_discrepancy(teacher(x0), teacher(x0)).item() == 0
    l1 = lambda x: losses.l1_discrepancy(teacher(x), student(x))  # noqa: E731
    before, after = _descend(x0, lambda x: -l1(x), lr=0.05)  # DFAD's generator minimises -L1
    assert -after > -before


def test_activation_loss_step_excites_the_teachers_features(teacher):
    feats = losses.PenultimateFeatures(teacher)

    def l_act(x):
        with feats.recording():
            teacher(x)
        return losses.activation_loss(feats.features)

    before, after = _descend(torch.rand(16, 1, 8, 8), l_act, lr=0.5)
    assert after < before  # L_a = -mean|f|: the features grow
    feats.remove()


def test_attention_transfer_matches_the_shared_resolutions_and_a_step_reduces_it(teacher):
    torch.manual_seed(0)
    student = create_model("digits_cnn_small", 10, in_channels=1)
    s_acts, t_acts = losses.ResolutionActivations(student), losses.ResolutionActivations(teacher)
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad(), t_acts.recording():
        teacher(x)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)

    def at():
        with s_acts.recording():
            student(x)
        s, t = losses.matched_activations(s_acts, t_acts)
        return losses.attention_transfer_loss(s, t), [a.shape[2:] for a in s]

    before, sizes = at()
    assert sizes == [(8, 8), (4, 4), (2, 2)]  # digits_cnn_small against digits_cnn
    for _ in range(5):
        opt.zero_grad()
        at()[0].backward()
        opt.step()
    assert at()[0].item() < before.item()
    same = [torch.randn(2, 4, 3, 3)]
    assert losses.attention_transfer_loss(same, same).item() == 0


def test_contrastive_loss_prefers_matching_views_and_a_step_lowers_it():
    torch.manual_seed(0)
    anchors = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    shuffled = anchors[torch.randperm(8)]
    assert losses.contrastive_loss(anchors, anchors, 0.2) < losses.contrastive_loss(anchors, shuffled, 0.2)
    head = torch.nn.Linear(16, 16)

    def fn():
        return losses.contrastive_loss(
            torch.nn.functional.normalize(head(anchors), dim=1),
            torch.nn.functional.normalize(head(anchors + 0.3 * torch.randn(8, 16)), dim=1),
            0.2,
        )

    torch.manual_seed(1)
    before = fn().item()
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    for _ in range(20):
        torch.manual_seed(1)
        opt.zero_grad()
        fn().backward()
        opt.step()
    torch.manual_seed(1)
    assert fn().item() < before


def test_dfard_balance_and_temperature_follow_their_rules():
    from derd.methods.dfard import balanced

    adv, bn = torch.tensor(-0.6, requires_grad=True), torch.tensor(3.0, requires_grad=True)
    total = balanced({"adv": adv, "bn": bn})
    total.backward()
    assert adv.grad.item() == 1.0 and bn.grad.item() == pytest.approx(0.2)  # w = |L_adv| / L_bn, detached
    from derd.config import preset
    from derd.methods.dfard import DFARD

    method = DFARD.__new__(DFARD)
    method.cfg = preset("digits", "dfard")
    method.tau = 4.0
    assert method.end_epoch(None, {"kd/adv_agreement": 1.0}) == {"dfard/tau": 4.0} and method.tau == 1.0
    method.end_epoch(None, {"kd/adv_agreement": 0.0})
    assert method.tau == 4.0  # a student that agrees nowhere gets the softest targets


def test_sga_matches_the_per_tensor_reference_on_many_tensors():
    """The device-side SGA equals the plain per-tensor loop (the pre-rework implementation)."""
    torch.manual_seed(0)
    a = [torch.randn(s) for s in [(3, 3), (5,), (2, 4, 4), (7,)]]
    b = [torch.randn(s) for s in [(3, 3), (5,), (2, 4, 4), (7,)]]
    out, frac = sga(a, b, torch.Generator().manual_seed(3))
    picks = torch.rand(len(a), generator=torch.Generator().manual_seed(3))
    conflicts = 0
    for x, y, pick, got in zip(a, b, picks, out):
        dot = (x * y).sum()
        if dot < 0:
            conflicts += 1
            if pick < 0.5:
                x = x - dot / y.pow(2).sum() * y
            else:
                y = y - dot / x.pow(2).sum() * x
        assert torch.allclose(got, x + y, atol=1e-6)
    assert frac.item() == pytest.approx(conflicts / len(a))


def test_cmi_adversary_pushes_only_where_the_student_still_agrees(teacher):
    t = torch.tensor([[3.0, 0.0], [3.0, 0.0]])
    s = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # agrees on the first image only
    expected = -losses.kl_divergence(t[:1], s[:1]) / 2
    assert losses.agreeing_adversarial_loss(t, s).item() == pytest.approx(expected.item())
    student = create_model("digits_cnn_small", 10, in_channels=1).eval()
    x0 = torch.rand(16, 1, 8, 8)
    kl = lambda x: losses.kl_divergence(teacher(x), student(x))  # noqa: E731
    x = x0.clone()
    for _ in range(5):
        x.requires_grad_(True)
        (g,) = torch.autograd.grad(losses.agreeing_adversarial_loss(teacher(x), student(x)), x)
        x = (x - 0.05 * g).detach()
    assert kl(x).item() >= kl(x0).item()
