"""The baselines as their official code has them: one test per deviation that issue 15 found (each
failed on the code before it), on tiny CPU inputs against a hand-computed reference."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import train_quick

from derd import losses
from derd.config import apply_overrides, preset
from derd.context import Phase
from derd.data import load_split
from derd.experts import Experts
from derd.run import DistillationRun

TINY = {
    "budget.epochs": 2,
    "budget.iters_per_epoch": 2,
    "budget.batch_size": 8,
    "stage1.epochs": 1,
    "robust.pgd_steps": 1,
    "cmi.synthesis_steps": 2,
    "cmi.negatives": 8,
    "student.latent_dim": 16,
    "student.generator_width": 16,
    "eval.every": 100,
    "data.val_batch_size": 16,
}


@pytest.fixture(scope="module")
def experts():
    return Experts(train_quick(seed=1, epochs=2), train_quick(seed=2, epochs=2))


@pytest.fixture(scope="module")
def val_data():
    return torch.utils.data.Subset(load_split("digits", "val"), range(8))


def tiny_run(method: str, experts, val_data, **overrides) -> DistillationRun:
    run = DistillationRun(
        apply_overrides(preset("digits", method), {**TINY, **overrides}), experts, val_data=val_data
    )
    run.enter_phase(len(run.phases) - 1)
    return run


# ---- the shared robust distillation (RSLAD) ------------------------------------------------------


def test_rslad_kl_is_rslads_element_mean_over_batch_and_classes():
    """RSLAD (rslad_cifar10.py 59-63) averages KL over batch x classes: a tenth of a batch mean on 10 classes."""
    torch.manual_seed(0)
    t, s = torch.randn(4, 10), torch.randn(4, 10)
    q, log_p = F.softmax(t, 1), F.log_softmax(s, 1)
    reference = (q * (q.log() - log_p)).sum() / (4 * 10)
    assert losses.rslad_divergence(t, s).item() == pytest.approx(reference.item(), rel=1e-5)


def test_the_baselines_student_step_uses_rslads_kl_lr_and_weight_decay(experts, val_data):
    run = tiny_run("dafl", experts, val_data)
    group = run.ctx.trainer.optimizer.param_groups[0]
    assert group["weight_decay"] == 2e-4 and run.phases[0].lr_s == 0.1
    x = torch.rand(8, 1, 8, 8)
    student = copy.deepcopy(run.student).train()
    with torch.no_grad():
        reference = (
            F.softmax(experts.robust(x), 1)
            * (F.log_softmax(experts.robust(x), 1) - F.log_softmax(student(x), 1))
        ).sum() / (8 * 10)
    from derd.objectives import rslad

    assert rslad(run.ctx, x)["nat"].item() == pytest.approx(reference.item(), rel=1e-4)
    run.close()


# ---- DAFL ---------------------------------------------------------------------------------------


def test_dafl_information_entropy_is_in_base_10_as_its_code_takes_it(experts, val_data):
    """DAFL-train.py 178-179: sum_c pbar_c log10 pbar_c."""
    torch.manual_seed(0)
    logits = torch.randn(16, 10)
    pbar = F.softmax(logits, 1).mean(0)
    reference = (pbar * torch.log10(pbar)).sum()
    assert losses.information_entropy_loss(logits, base=10).item() == pytest.approx(
        reference.item(), rel=1e-5
    )
    run = tiny_run("dafl", experts, val_data)
    terms = run.method.iteration(run.phases[0], 0)
    assert "ie_log10" in terms and "ie" not in terms
    run.close()


def test_dafl_uses_its_published_weights_per_dataset_and_its_generator(experts, val_data):
    """README lines 29 and 35 (CIFAR-10, CIFAR-100); the MNIST defaults (lines 33-42) for digits."""
    c10, c100, digits = preset("cifar10").dafl, preset("cifar100").dafl, preset("digits").dafl
    assert (c10.lambda_oh, c10.lambda_ie, c10.lambda_act, c10.lr_g, c10.latent_dim) == (
        0.05,
        5.0,
        0.01,
        0.02,
        1000,
    )
    assert (c100.lambda_oh, c100.lambda_ie, c100.lambda_act, c100.lr_g, c100.latent_dim) == (
        0.5,
        20.0,
        0.1,
        0.02,
        1000,
    )
    assert (digits.lambda_oh, digits.lambda_ie, digits.lambda_act, digits.lr_g, digits.latent_dim) == (
        1.0,
        5.0,
        0.1,
        0.2,
        100,
    )
    run = tiny_run("dafl", experts, val_data, **{"dafl.latent_dim": 12})
    assert run.method.synth.generator.fc.in_features == 12
    assert run.method.synth.optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    run.close()


# ---- DFAD ---------------------------------------------------------------------------------------


def test_dfad_trains_its_generator_against_the_student_in_train_mode_with_adams_default_betas(
    experts, val_data
):
    """DFAD_cifar.py 19, 40 (the student stays in train mode: its BatchNorm follows the generator's batch)
    and 151 (Adam's default betas)."""
    run = tiny_run("dfad", experts, val_data)
    assert run.method.synth.optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    bn = next(m for m in run.student.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    run.method.synth.step(8, {"adv_l1": 1.0}, prior=run.experts.robust, natural=run.experts.robust, tau=1.0)
    assert not torch.equal(bn.running_mean, before)
    run.close()


# ---- ZSKT ---------------------------------------------------------------------------------------


def test_zskt_students_learn_on_the_batch_the_updated_generator_renders_from_the_generators_z(
    experts, val_data
):
    """solver.py 89 and 105-116, loaders.py 42-47: one z per cycle; the student steps see G'(z)."""
    run = tiny_run("zskt", experts, val_data, **{"zskt.student_steps": 2})
    synth, seen = run.method.synth, {}
    step = synth.step

    def spy(*args, **kwargs):
        seen["z"] = kwargs.get("z")
        return step(*args, **kwargs)

    synth.step = spy
    run.method.iteration(run.phases[0], 0)
    assert seen["z"] is not None
    assert torch.equal(run.method.batch, synth.render(seen["z"]))
    batch = run.method.batch
    run.method.iteration(run.phases[0], 1)  # the cycle's second student step: the same batch
    assert run.method.batch is batch
    run.close()


def test_zskt_attention_is_on_the_residual_groups_outputs():
    """wresnet.py 88-99: a WRN's attention maps are its three groups' outputs (the 8x8 one before the final
    BatchNorm-ReLU)."""
    from derd.models.classifiers import WideResNet

    torch.manual_seed(0)
    wrn = WideResNet(10, 1, 10, 3).eval()
    hooks = losses.ResolutionActivations(wrn)
    outputs = {}
    wrn.layers.register_forward_hook(lambda m, i, o: outputs.setdefault("block3", o))
    with torch.no_grad(), hooks.recording():
        wrn(torch.rand(2, 3, 32, 32))
    assert sorted(hooks.by_size) == [(8, 8), (16, 16), (32, 32)]
    assert torch.equal(hooks.by_size[(8, 8)], outputs["block3"])
    hooks.remove()


def test_zskt_clips_both_gradients_at_5_and_anneals_the_generators_lr(experts, val_data):
    """solver.py 100 and 115 (clip_grad_norm_ 5 on G and S), 40 and 170 (cosine for G)."""
    loud = Experts(None, copy.deepcopy(experts.robust))
    with torch.no_grad():
        loud.robust.net[-1].weight.mul_(30.0)  # large logits: large gradients
    run = tiny_run("zskt", loud, val_data, **{"zskt.lambda_at": 1e6, "zskt.student_steps": 1})
    norms = {"G": [], "S": []}
    for key, opt in (("G", run.method.synth.optimizer), ("S", run.ctx.trainer.optimizer)):
        original = opt.step

        def step(*args, _key=key, _opt=opt, _orig=original, **kwargs):
            grads = [p.grad for g in _opt.param_groups for p in g["params"] if p.grad is not None]
            norms[_key].append(
                torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
            )
            return _orig(*args, **kwargs)

        opt.step = step
    lr0 = run.method.synth.optimizer.param_groups[0]["lr"]
    run.method.iteration(run.phases[0], 0)
    run.method.iteration(run.phases[0], 1)
    teacher = run.experts.robust  # and a generator step whose unclipped gradient would be huge
    run.method.synth.step(8, {"adv": 1e6}, prior=teacher, natural=teacher, tau=1.0)
    assert len(norms["G"]) == 3 and len(norms["S"]) == 2 and max(norms["G"] + norms["S"]) <= 5.0 + 1e-3
    assert run.method.synth.optimizer.param_groups[0]["lr"] < lr0
    run.close()


# ---- CMI ----------------------------------------------------------------------------------------


def test_cmi_contrast_detaches_the_keys_and_sums_the_current_and_cached_anchors_means():
    """contrastive.py 320-326."""
    torch.manual_seed(0)
    anchors = F.normalize(torch.randn(6, 4), dim=1).requires_grad_(True)
    keys = F.normalize(torch.randn(6, 4), dim=1).requires_grad_(True)
    loss = losses.contrastive_loss(anchors, keys, 0.2, current=4)
    rows = F.cross_entropy(anchors.detach() @ keys.detach().t() / 0.2, torch.arange(6), reduction="none")
    assert loss.item() == pytest.approx((rows[:4].mean() + rows[4:].mean()).item(), rel=1e-5)
    loss.backward()
    assert keys.grad is None and anchors.grad is not None


def test_cmi_students_adversarial_term_sees_the_teachers_global_view(experts, val_data):
    """contrastive.py 284-288: S(x_g) beside T(x_g)."""
    run = tiny_run("cmi", experts, val_data)
    teacher_inputs, student_inputs = [], []
    handles = [
        experts.robust.register_forward_pre_hook(lambda m, a: teacher_inputs.append(a[0].detach())),
        run.student.register_forward_pre_hook(lambda m, a: student_inputs.append(a[0].detach())),
    ]
    run.method.synth.synthesize(4)
    for h in handles:
        h.remove()
    # per synthesis step the teacher sees the global then the local view, the student one view
    assert len(student_inputs) == 2 and len(teacher_inputs) == 4
    assert all(torch.equal(s, teacher_inputs[2 * i]) for i, s in enumerate(student_inputs))
    run.close()


def test_cmi_keeps_every_image_draws_without_replacement_and_has_its_scripts_head_bank_and_schedule(
    experts, val_data
):
    run = tiny_run("cmi", experts, val_data)
    cmi, synth = run.cfg.cmi, run.method.synth
    assert (cmi.synthesis_steps, cmi.synthesis_every, cmi.feature_bank, cmi.negatives, cmi.head_dim) == (
        2,
        400,
        40960,
        8,
        256,
    )
    assert preset("cifar10").cmi.synthesis_steps == 200 and preset("digits").cmi.synthesis_every == 400
    dim = synth.features.shape[1] // 2
    assert (
        synth.head.net[0].in_features == synth.head.net[0].out_features == dim
        and synth.head.net[-1].out_features == 256
    )
    assert synth.head_optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    for _ in range(3):
        synth.synthesize(4)
    assert synth.count == 12 and synth.rows == 12 and synth.images.dtype == torch.uint8  # nothing evicted
    picked = []
    for _ in range(3):  # a pass over the bank's shuffle
        synth.batch(4)
        picked += synth.order[synth.position - 4 : synth.position].tolist()
    assert sorted(picked) == list(range(12))  # each image once
    run.close()


# ---- DFARD --------------------------------------------------------------------------------------


def test_dfard_is_marked_as_a_reconstruction_wherever_it_is_shown():
    from analysis.paper_tables import markdown
    from analysis.trials import TrialRecord, best_trials_markdown
    from derd.methods import display_name, get_method

    assert (
        get_method("dfard").label == "DFARD*"
        and display_name("dfard") == "dfard*"
        and display_name("dafl") == "dafl"
    )
    record = TrialRecord(
        "r1",
        "trial-0001",
        "dfard",
        {"val/clean_acc": 80.0, "val/aa_acc": 20.0, "val/n_images": 100},
        {},
        {},
        [80.0, 20.0],
    )
    table = best_trials_markdown([record], [record], [("val/clean_acc", "max"), ("val/aa_acc", "max")])
    assert "| dfard* |" in table and "dfard*: reconstructed from the paper's abstract" in table
    tables = markdown(
        "digits",
        [0],
        {
            "dfard": [
                {
                    c: 1.0
                    for c in ("clean_acc", "fgsm_acc", "pgd_acc", "pgd_t_acc", "cw_acc", "aa_acc", "ave_acc")
                }
            ]
        },
    )
    assert "| DFARD* |" in tables and "reconstructed from the paper's abstract" in tables


def test_dfard_ita_sets_the_temperature_once_per_epoch_as_its_v1_abstract_says(
    experts, val_data, monkeypatch
):
    """arXiv 2303.11611v1's abstract: the interactive strategy finds "more suitable training objectives at
    each epoch": the student's distillation temperature is fixed within an epoch and moves only between
    epochs (the rule that moves it, ``end_epoch``, is this project's: tests/test_losses.py)."""
    import derd.methods.dfard as dfard

    run = tiny_run("dfard", experts, val_data)
    m, used = run.method, []
    real = dfard.rslad
    monkeypatch.setattr(dfard, "rslad", lambda ctx, x, tau: used.append(tau) or real(ctx, x, tau=tau))
    assert m.tau == run.cfg.dfard.tau_max  # tau_0 = tau_max
    for step in range(3):
        m.iteration(run.phases[0], step)
    assert used == [run.cfg.dfard.tau_max] * 3 and m.tau == run.cfg.dfard.tau_max
    logged = m.end_epoch(run.phases[0], {"kd/adv_agreement": 0.5})
    assert logged == {"dfard/tau": run.cfg.dfard.tau_max} and m.tau != run.cfg.dfard.tau_max
    m.iteration(run.phases[0], 3)
    assert used[-1] == m.tau
    run.close()


# ---- GDFQ ---------------------------------------------------------------------------------------


def test_gdfq_trains_its_conditional_generator_on_ce_of_the_drawn_labels_plus_weighted_bn(experts, val_data):
    """trainer.py: loss_G = CE(T(G(z, y)), y) + 0.1 * BNS; here L_bn's weight is lambda_bn on this project's scale;
    G: Adam, lr 1e-3, betas (0.5, 0.999), noise of 100 dimensions, conditional on y."""
    from derd.models import ConditionalGenerator

    run = tiny_run("gdfq", experts, val_data, **{"gdfq.lambda_bn": 0.5})
    synth = run.method.synth
    assert isinstance(synth.generator, ConditionalGenerator) and synth.latent_dim == 100
    group = synth.optimizer.param_groups[0]
    assert group["lr"] == 1e-3 and group["betas"] == (0.5, 0.999)
    terms = run.method.iteration(run.phases[0], 0)
    assert terms["G"].item() == pytest.approx(terms["cls"].item() + 0.5 * terms["bn"].item(), rel=1e-5)
    run.close()


def test_gdfq_students_step_is_on_the_generators_own_batch_before_its_update(experts, val_data):
    """GDFQ trains the student on images.detach() of the batch that made the generator's loss: no second batch."""
    run = tiny_run("gdfq", experts, val_data)
    seen = []
    import derd.methods.gdfq as gdfq

    original = gdfq.rslad
    gdfq.rslad = lambda ctx, x, **kw: seen.append(x.clone()) or original(ctx, x, **kw)
    try:
        gen = copy.deepcopy(run.method.synth.generator)
        state = run.ctx.rng.get_state()
        run.method.iteration(run.phases[0], 0)
        run.ctx.rng.set_state(state)
        z = run.method.synth.noise(8)
        y = torch.randint(0, 10, (8,), generator=run.ctx.rng)
        gen.train()
        with torch.no_grad():
            expected = gen(z, y)
    finally:
        gdfq.rslad = original
    assert torch.allclose(seen[0], expected, atol=1e-6)
    run.close()


def test_gdfq_keeps_its_lr_constant_and_its_published_generator_settings_on_every_dataset():
    """GDFQ's x0.1 steps are not kept (the shared budget); both hocon files agree on every generator setting."""
    for dataset in ("digits", "cifar10", "cifar100"):
        cfg = preset(dataset, "gdfq")
        assert (cfg.gdfq.lr_g, cfg.gdfq.latent_dim, cfg.gdfq.lambda_bn) == (1e-3, 100, 1e-3)


# ---- DFHL-RS ------------------------------------------------------------------------------------


def test_dfhl_rs_generation_loss_is_smoothed_kl_plus_lam_times_log10_batch_entropy():
    """losses.py: KLDivLoss(batchmean)(log_softmax(S), smooth_one_hot(y, s)) + lam * sum pbar log10 pbar."""
    from derd.methods.dfhl_rs import generation_loss, smooth_labels

    torch.manual_seed(0)
    logits, y = torch.randn(4, 10), torch.tensor([0, 3, 3, 9])
    targets = smooth_labels(y, 10, 0.2)
    assert targets[1, 3].item() == pytest.approx(0.8) and targets[1, 0].item() == pytest.approx(0.2 / 9)
    log_p = F.log_softmax(logits, 1)
    kl = (targets * (targets.log() - log_p)).sum() / 4
    pbar = F.softmax(logits, 1).mean(0)
    reference = kl + 3 * (pbar * torch.log10(pbar)).sum()
    assert generation_loss(logits, targets, 3.0).item() == pytest.approx(reference.item(), rel=1e-5)


def test_dfhl_rs_high_entropy_examples_ascend_the_students_entropy_with_signed_steps_and_no_eps_ball():
    """query_sample.generate_hee: x + 0.001 N, 10 steps x <- clamp(x + 0.03 sign(grad H), 0, 1), eval mode."""
    from derd.methods.dfhl_rs import entropy, high_entropy_examples

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10), torch.nn.BatchNorm1d(10)).train()
    x = torch.rand(6, 1, 8, 8)
    rng = torch.Generator().manual_seed(3)
    out = high_entropy_examples(model, x, 10, 0.03, rng)
    assert model.training  # back in train mode
    ref = x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    model.eval()
    for _ in range(10):
        ref.requires_grad_(True)
        (g,) = torch.autograd.grad(entropy(model(ref)), [ref])
        ref = (ref.detach() + 0.03 * g.sign()).clamp(0, 1)
    assert torch.allclose(out, ref, atol=1e-6)
    assert (out - x).abs().max() > 0.2  # 10 x 0.03 away: no eps-ball
    assert entropy(model(out)) > entropy(model(x))


def test_dfhl_rs_student_reads_only_the_teachers_hard_labels_by_default(experts, val_data):
    """train_clone_model (HEE): CE(S(x_hee), argmax T(x_hee)); scaling T's logits changes nothing."""
    from derd.methods.dfhl_rs import DFHLRSConfig

    assert DFHLRSConfig().teacher_access == "hard_labels"
    losses_by_scale = []
    for scale in (1.0, 7.0):
        scaled = Experts(experts.natural, torch.nn.Sequential(experts.robust, _Scale(scale)))
        torch.manual_seed(0)
        run = tiny_run("dfhl_rs", scaled, val_data)
        losses_by_scale.append(run.method.iteration(run.phases[0], 0)["dfhl/student"].item())
        run.close()
    assert losses_by_scale[0] == pytest.approx(losses_by_scale[1], rel=1e-6)
    soft = []
    for scale in (1.0, 7.0):
        scaled = Experts(experts.natural, torch.nn.Sequential(experts.robust, _Scale(scale)))
        run = tiny_run("dfhl_rs", scaled, val_data, **{"dfhl_rs.teacher_access": "logits"})
        soft.append(run.method.iteration(run.phases[0], 0)["dfhl/student"].item())
        run.close()
    assert soft[0] != pytest.approx(
        soft[1], rel=1e-3
    )  # the logit-reading variant (not the paper's) does see them


class _Scale(torch.nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.k


def test_dfhl_rs_keeps_the_lowest_loss_batch_of_each_round_in_a_memory_it_never_drops(experts, val_data):
    """data_generation keeps best_fake (lowest loss, measured before each step); save_batch_fake appends; a fresh
    Adam (generator lr_G 2e-3, z lr_z 1e-2, betas (0.5, 0.999)) each round; a round every N_C student steps."""
    run = tiny_run("dfhl_rs", experts, val_data, **{"dfhl_rs.student_steps": 2, "dfhl_rs.generator_steps": 3})
    m = run.method
    seen = []
    original = torch.optim.Adam.__init__

    def spy(self, params, **kw):
        params = list(params)
        seen.append(([g.get("lr") if isinstance(g, dict) else None for g in params], kw))
        original(self, params, **kw)

    torch.optim.Adam.__init__ = spy
    try:
        for step in range(4):
            run.method.iteration(run.phases[0], step)
    finally:
        torch.optim.Adam.__init__ = original
    assert len(seen) == 2 and seen[0][0] == [None, 1e-2] and seen[0][1] == {"lr": 2e-3, "betas": (0.5, 0.999)}
    assert m.memory.images.shape == (16, 1, 8, 8)  # two rounds of 8
    first = m.memory.images[:8].clone()
    m.generate(8)
    assert torch.equal(m.memory.images[:8], first) and len(m.memory) == 24
    run.close()


def test_dfhl_rs_round_keeps_the_batch_whose_loss_was_lowest(experts, val_data, monkeypatch):
    import derd.methods.dfhl_rs as dfhl

    run = tiny_run("dfhl_rs", experts, val_data, **{"dfhl_rs.generator_steps": 4})
    values = iter([3.0, 1.0, 2.0, 1.0])
    rendered = []
    real = dfhl.generation_loss
    monkeypatch.setattr(
        dfhl, "generation_loss", lambda logits, t, lam: real(logits, t, lam) * 0 + next(values)
    )
    original_forward = run.method.generator.forward

    def record(z):
        x = original_forward(z)
        rendered.append(x.detach().clone())
        return x

    monkeypatch.setattr(run.method.generator, "forward", record)
    terms = run.method.generate(8)
    assert terms["dfhl/G"].item() == 1.0 and torch.equal(
        run.method.memory.images[-8:], rendered[1]
    )  # the first of equals
    run.close()


def test_dfhl_rs_memory_is_drawn_in_shuffled_passes_with_a_partial_last_batch(experts, val_data):
    run = tiny_run("dfhl_rs", experts, val_data)
    memory = run.method.memory
    memory.images = memory.images[:0]
    memory.append(torch.arange(10.0).view(10, 1, 1, 1).expand(10, 1, 8, 8))
    batches = [memory.next_batch(4) for _ in range(3)]
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches)[:, 0, 0, 0].tolist()) == list(map(float, range(10)))
    assert len(memory.next_batch(4)) == 4  # a new pass
    run.close()


def test_dfhl_rs_optimisers_schedules_and_published_settings(experts, val_data):
    """train.py: SGD lr 0.1, momentum 0.9, wd 1e-4, cosine; N_C 500, N_G 10, lam 3, nz 256, HEE 10 x 0.03; label
    smoothing 0.2 on CIFAR-10 (digits: its 10 classes), 0.02 on CIFAR-100."""
    run = tiny_run("dfhl_rs", experts, val_data)
    group = run.ctx.trainer.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 1e-4)
    assert isinstance(
        run.ctx.trainer.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR
    )  # to 0: the harness's
    d = preset("digits", "dfhl_rs").dfhl_rs
    assert (
        d.student_steps,
        d.generator_steps,
        d.lam,
        d.latent_dim,
        d.hee_steps,
        d.hee_step,
        d.label_smoothing,
    ) == (500, 10, 3.0, 256, 10, 0.03, 0.2)
    assert preset("cifar10", "dfhl_rs").dfhl_rs.label_smoothing == 0.2
    assert preset("cifar100", "dfhl_rs").dfhl_rs.label_smoothing == 0.02
    assert "robust" not in run.method.sections and run.method.teachers == ("robust",)
    run.close()


def test_dfhl_rs_strong_augmentation_is_the_identity_at_no_crop_flip_or_rotation():
    """strong_aug's affine map: the resampling grid is the identity when crop = side, no flip, angle 0."""
    from derd.methods import dfhl_rs

    x = torch.rand(2, 1, 8, 8)

    rng = torch.Generator().manual_seed(0)
    original = torch.rand
    try:
        torch.rand = lambda *a, **k: torch.tensor([1.0, 1.0, 0.0, 0.0, 0.5])  # crop 8 px, no flips, 0 degrees
        out = dfhl_rs.strong_augment(x, rng)
    finally:
        torch.rand = original
    noise = 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, (x + noise).clamp(0, 1), atol=1e-5)
    flipped = dfhl_rs.strong_augment(x, torch.Generator().manual_seed(1))
    assert flipped.shape == x.shape and 0 <= flipped.min() and flipped.max() <= 1


# ---- FERD ---------------------------------------------------------------------------------------

FERD_TINY = {
    "ferd.generator_steps": 2,
    "ferd.ifd_steps": 2,
}  # TINY's 4 updates at N_S 400: 1 round, 1 warm-up


def test_ferd_decoupled_kl_is_its_pairwise_mse_plus_soft_ce_and_the_one_hot_prior_zeroes_the_pairs():
    """losses.dkl_loss: 0.25 sum w (dt - ds)^2 / sum w + CE(softmax t, s), w = s_n s_n^T, s_n = softmax(t / 100) or the
    class prior (GI); with a one-hot prior only w_yy = 1, where both differences are 0."""
    from derd.methods.ferd import decoupled_kl

    torch.manual_seed(0)
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    w = torch.einsum("bi,bj->bij", F.softmax(t / 100, 1), F.softmax(t / 100, 1))
    dt, ds = t[:, :, None] - t[:, None, :], s[:, :, None] - s[:, None, :]
    sce = -(F.softmax(t, 1) * F.log_softmax(s, 1)).sum(1).mean()
    reference = 0.25 * ((dt - ds) ** 2 * w).sum() / w.sum() + sce
    assert decoupled_kl(s, t).item() == pytest.approx(reference.item(), rel=1e-5)
    prior = F.one_hot(torch.tensor([0, 2, 3]), 4).float()
    assert decoupled_kl(s, t, prior).item() == pytest.approx(sce.item(), rel=1e-6)


def test_ferd_class_probabilities_follow_the_teachers_robust_risk_per_class():
    """test.py: p = minmax(risk) * (0.2 - 0.05) + 0.05, normalised; risk: mean over a class's images of
    max_{j != y} z_j - z_y (is_fooled always true); 0 for a class not drawn."""
    from derd.methods.ferd import class_probabilities, class_risk

    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [2.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    risk = class_risk(logits, labels, 3)
    assert risk.tolist() == pytest.approx([((1 - 3) + (2 - 0)) / 2, ((2 - 1) + (1 - 0)) / 2, 0.0])
    p = class_probabilities(torch.tensor([0.0, 2.0, 1.0]), 0.05, 0.2)
    raw = torch.tensor([0.05, 0.2, 0.125])
    assert torch.allclose(p, raw / raw.sum())


def test_ferd_resets_its_generator_each_round_as_reset_model_does():
    from derd.methods.ferd import reset_generator
    from derd.models import Generator

    g = Generator((1, 8, 8), 100, 64)
    reset_generator(g, torch.Generator().manual_seed(0))
    assert abs(g.fc.weight.std().item() - 0.02) < 2e-3 and g.fc.bias.abs().max() == 0
    bn = g.blocks[0]
    assert abs(bn.weight.mean().item() - 1.0) < 0.01 and bn.bias.abs().max() == 0


def test_ferd_feature_splice_is_the_last_2d_batchnorm_and_its_tail_reproduces_the_teacher(experts):
    from derd.methods.ferd import FeatureSplice

    teacher = experts.robust
    splice = FeatureSplice(teacher)
    x = torch.rand(4, 1, 8, 8)
    f, logits = splice.features(x)
    assert f.shape == (4, 32, 4, 4)  # digits_cnn_small's last conv block, before its ReLU and pooling
    assert torch.allclose(splice.tail(x, f), logits, atol=1e-5)
    assert not torch.allclose(splice.tail(x, torch.zeros_like(f)), logits)
    splice.remove()


def test_ferd_robust_channels_are_those_whose_learnt_noise_variance_exceeds_every_channels_spatial_variance(
    experts,
):
    """IFP.sample_robust_and_non_robust_latent: softplus(l)^2 > max var_hw(f); l starts at 0 (softplus 0 = ln 2)."""
    from derd.methods.ferd import FeatureSplice, robust_channels

    splice = FeatureSplice(experts.robust)
    x = torch.rand(2, 1, 8, 8)
    f, _ = splice.features(x)
    labels = torch.tensor([1, 2])
    small = f / f.var(dim=(2, 3)).max().sqrt() * 0.5  # every spatial variance <= 0.25 < ln(2)^2 = 0.48
    assert robust_channels(splice, x, small, labels, 0, 0.1, 0.3, torch.Generator()).min() == 1
    large = small * 4  # the largest variance 4 > 0.48
    assert robust_channels(splice, x, large, labels, 0, 0.1, 0.3, torch.Generator()).max() == 0
    splice.remove()


def test_ferd_warms_up_its_memory_before_the_first_student_update_and_keeps_every_rounds_best_batch(
    experts, val_data
):
    run = tiny_run("ferd", experts, val_data, **FERD_TINY, **{"ferd.student_steps": 2})
    m, seen = run.method, []
    original = torch.optim.Adam.__init__

    def spy(self, params, **kw):
        params = list(params)
        seen.append(([g.get("lr") if isinstance(g, dict) else None for g in params], kw))
        original(self, params, **kw)

    torch.optim.Adam.__init__ = spy
    try:
        updates = []
        real = run.ctx.trainer.update
        run.ctx.trainer.update = lambda loss: updates.append(len(m.memory)) or real(loss)
        for step in range(3):
            m.iteration(run.phases[0], step)
    finally:
        torch.optim.Adam.__init__ = original
    assert updates == [16, 16, 24]  # warm-up round + first round before the first update; a round every 2
    generator_adams = [s for s in seen if s[0] == [None, 0.015]]
    assert len(generator_adams) == 3 and generator_adams[0][1] == {"lr": 2e-3, "betas": (0.5, 0.999)}
    assert torch.isclose(m.probs.sum(), torch.tensor(1.0)) and m.probs.min() >= 0.05 / (0.2 * 10) - 1e-6
    run.close()


def test_ferd_warm_up_is_a_tenth_of_the_budgets_rounds_rounded_up():
    """test.py: 20 warm-up epochs per 200 that train the student; here per round of the shared budget."""
    from derd.methods.ferd import warmup_rounds

    f = preset("digits", "ferd").ferd
    digits = preset("digits", "ferd").budget
    assert (
        warmup_rounds(f, Phase(2, digits.epochs, digits.iters_per_epoch, 128, 0.1)) == 1
    )  # 900 updates: 3 rounds
    assert warmup_rounds(f, Phase(2, 200, 50, 512, 0.1)) == 3  # CIFAR's 10,000 updates: 25 rounds
    assert warmup_rounds(f, Phase(2, 200, 400, 512, 0.1)) == 20  # FERD's own 200 x 400


def test_ferd_student_loss_is_five_sixths_natural_and_a_sixth_adversarial_with_its_optimiser(
    experts, val_data
):
    """train_model_ds_at: 5/6 DKL(S(x), T(x)) + 1/6 DKL(S(x_adv), T(x)); SGD lr 0.1, momentum 0.9, wd 5e-4."""
    run = tiny_run("ferd", experts, val_data, **FERD_TINY)
    group = run.ctx.trainer.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 5e-4)
    losses_seen = []
    real = run.ctx.trainer.update
    run.ctx.trainer.update = lambda loss: losses_seen.append(loss.item()) or real(loss)
    terms = run.method.iteration(run.phases[0], 0)
    assert losses_seen[0] == pytest.approx(
        5 / 6 * terms["ferd/nat"].item() + 1 / 6 * terms["ferd/rob"].item(), rel=1e-5
    )
    f = preset("digits", "ferd").ferd
    assert (f.student_steps, f.generator_steps, f.warmup_share, f.lr_g, f.lr_z, f.latent_dim) == (
        400,
        200,
        0.1,
        2e-3,
        0.015,
        100,
    )
    assert (f.lambda_bn, f.lambda_adv, f.lambda_oh, f.lambda_uni, f.ifd_steps, f.ifd_beta) == (
        5,
        1,
        1,
        5,
        50,
        0.3,
    )
    run.close()
