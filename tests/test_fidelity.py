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
from derd.data import load_split
from derd.experts import Experts
from derd.run import DistillationRun

TINY = {"budget.epochs": 2, "budget.iters_per_epoch": 2, "budget.batch_size": 8, "stage1.epochs": 1,
        "robust.pgd_steps": 1, "cmi.synthesis_steps": 2, "cmi.negatives": 8, "student.latent_dim": 16,
        "student.generator_width": 16, "eval.every": 100, "data.val_batch_size": 16}


@pytest.fixture(scope="module")
def experts():
    return Experts(train_quick(seed=1, epochs=2), train_quick(seed=2, epochs=2))


@pytest.fixture(scope="module")
def val_data():
    return torch.utils.data.Subset(load_split("digits", "val"), range(8))


def tiny_run(method: str, experts, val_data, **overrides) -> DistillationRun:
    run = DistillationRun(apply_overrides(preset("digits", method), {**TINY, **overrides}), experts, val_data=val_data)
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
        reference = (F.softmax(experts.robust(x), 1) * (F.log_softmax(experts.robust(x), 1)
                                                        - F.log_softmax(student(x), 1))).sum() / (8 * 10)
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
    assert losses.information_entropy_loss(logits, base=10).item() == pytest.approx(reference.item(), rel=1e-5)
    run = tiny_run("dafl", experts, val_data)
    terms = run.method.iteration(run.phases[0], 0)
    assert "ie_log10" in terms and "ie" not in terms
    run.close()


def test_dafl_uses_its_published_weights_per_dataset_and_its_generator(experts, val_data):
    """README lines 29 and 35 (CIFAR-10, CIFAR-100); the MNIST defaults (lines 33-42) for digits."""
    c10, c100, digits = preset("cifar10").dafl, preset("cifar100").dafl, preset("digits").dafl
    assert (c10.lambda_oh, c10.lambda_ie, c10.lambda_act, c10.lr_g, c10.latent_dim) == (0.05, 5.0, 0.01, 0.02, 1000)
    assert (c100.lambda_oh, c100.lambda_ie, c100.lambda_act, c100.lr_g, c100.latent_dim) == (0.5, 20.0, 0.1, 0.02, 1000)
    assert (digits.lambda_oh, digits.lambda_ie, digits.lambda_act, digits.lr_g, digits.latent_dim) == (1.0, 5.0, 0.1, 0.2, 100)
    run = tiny_run("dafl", experts, val_data, **{"dafl.latent_dim": 12})
    assert run.method.synth.generator.fc.in_features == 12
    assert run.method.synth.optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    run.close()


# ---- DFAD ---------------------------------------------------------------------------------------

def test_dfad_trains_its_generator_against_the_student_in_train_mode_with_adams_default_betas(experts, val_data):
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

def test_zskt_students_learn_on_the_batch_the_updated_generator_renders_from_the_generators_z(experts, val_data):
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
            norms[_key].append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
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
    handles = [experts.robust.register_forward_pre_hook(lambda m, a: teacher_inputs.append(a[0].detach())),
               run.student.register_forward_pre_hook(lambda m, a: student_inputs.append(a[0].detach()))]
    run.method.synth.synthesize(4)
    for h in handles:
        h.remove()
    # per synthesis step the teacher sees the global then the local view, the student one view
    assert len(student_inputs) == 2 and len(teacher_inputs) == 4
    assert all(torch.equal(s, teacher_inputs[2 * i]) for i, s in enumerate(student_inputs))
    run.close()


def test_cmi_keeps_every_image_draws_without_replacement_and_has_its_scripts_head_bank_and_schedule(experts, val_data):
    run = tiny_run("cmi", experts, val_data)
    cmi, synth = run.cfg.cmi, run.method.synth
    assert (cmi.synthesis_steps, cmi.synthesis_every, cmi.feature_bank, cmi.negatives, cmi.head_dim) == (2, 400, 40960, 8, 256)
    assert preset("cifar10").cmi.synthesis_steps == 200 and preset("digits").cmi.synthesis_every == 400
    dim = synth.features.shape[1] // 2
    assert synth.head.net[0].in_features == synth.head.net[0].out_features == dim and synth.head.net[-1].out_features == 256
    assert synth.head_optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    for _ in range(3):
        synth.synthesize(4)
    assert synth.count == 12 and synth.rows == 12 and synth.images.dtype == torch.uint8  # nothing evicted
    picked = []
    for _ in range(3):  # a pass over the bank's shuffle
        synth.batch(4)
        picked += synth.order[synth.position - 4: synth.position].tolist()
    assert sorted(picked) == list(range(12))  # each image once
    run.close()


# ---- DFARD --------------------------------------------------------------------------------------

def test_dfard_is_marked_as_a_reconstruction_wherever_it_is_shown():
    from analysis.paper_tables import markdown
    from analysis.trials import TrialRecord, best_trials_markdown
    from derd.methods import display_name, get_method

    assert get_method("dfard").label == "DFARD*" and display_name("dfard") == "dfard*" and display_name("dafl") == "dafl"
    record = TrialRecord("r1", "trial-0001", "dfard", {"val/clean_acc": 80.0, "val/aa_acc": 20.0, "val/n_images": 100},
                         {}, {}, [80.0, 20.0])
    table = best_trials_markdown([record], [record], [("val/clean_acc", "max"), ("val/aa_acc", "max")])
    assert "| dfard* |" in table and "dfard*: reconstructed from the paper's abstract" in table
    tables = markdown("digits", [0], {"dfard": [{c: 1.0 for c in ("clean_acc", "fgsm_acc", "pgd_acc", "pgd_t_acc",
                                                                   "cw_acc", "aa_acc", "ave_acc")}]})
    assert "| DFARD* |" in tables and "reconstructed from the paper's abstract" in tables
