"""viclip_ot.losses against POT and against direct evaluations of the formulas (loops in numpy)."""

import functools
import math

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from configuration_viclip_ot import ViCLIPOTConfig
from modeling_viclip_ot import contrastive_loss
from viclip_ot.losses import (
    GRAPH_STRATEGIES,
    LOSS_TYPES,
    ContrastiveOTLoss,
    LossSettings,
    plan_diagnostics,
    sigrot_divergence,
    similarity_graph,
    sinkhorn,
    transport_plan,
    unbalanced_sinkhorn,
    uot_soft_target_loss,
)

REGS, REG_MS, SHAPES = (0.01, 0.05, 0.1), (0.1, 0.5, 1.0, math.inf), ((12, 12), (12, 20))
CONVERGED = {"max_iter": 100_000, "tol": 1e-12, "check_every": 1}  # POT's criterion, checked every iteration


def unit_rows(*shape, seed=0, dtype=torch.float64):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1)


def cosine_cost(rows, columns, seed=0, dim=256, dtype=torch.float64):
    """1 - x . y of random unit vectors. (Low-dimensional ones give near-degenerate problems: balanced OT at reg 0.01
    can then take more than 10^5 iterations to converge, for POT and for us alike.)"""
    return 1 - unit_rows(rows, dim, seed=seed, dtype=dtype) @ unit_rows(columns, dim, seed=seed + 1, dtype=dtype).T


def pot_plan(cost, reg, reg_m, a=None, b=None):
    """POT's plan run to convergence (checked), in float64 numpy."""
    cost = np.asarray(cost, dtype=np.float64)
    a = np.full(cost.shape[0], 1 / cost.shape[0]) if a is None else np.asarray(a, dtype=np.float64)
    b = np.full(cost.shape[1], 1 / cost.shape[1]) if b is None else np.asarray(b, dtype=np.float64)
    plan, log = ot.unbalanced.sinkhorn_unbalanced(
        a, b, cost, reg, reg_m, reg_type="kl", numItermax=100_000, stopThr=CONVERGED["tol"], log=True
    )
    assert log["err"][-1] < CONVERGED["tol"]
    return plan


# --------------------------------------------------------------------------------------------------------------
# Sinkhorn
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reg_m", REG_MS)
@pytest.mark.parametrize("reg", REGS)
def test_plan_equals_pot(reg, reg_m, shape):
    cost = cosine_cost(*shape)
    expected = pot_plan(cost, reg, reg_m)
    plan64 = unbalanced_sinkhorn(cost, reg, reg_m, **CONVERGED)
    assert plan64.dtype == torch.float64
    assert np.abs(plan64.numpy() - expected).max() < 1e-8
    plan32 = unbalanced_sinkhorn(cost.float(), reg, reg_m, max_iter=100_000, tol=1e-7)
    assert plan32.dtype == torch.float32
    assert np.abs(plan32.double().numpy() - expected).max() / expected.max() < 1e-5


def test_plan_equals_pot_with_weights():
    cost = cosine_cost(9, 14, seed=3)
    generator = torch.Generator().manual_seed(4)
    a = torch.rand(9, generator=generator, dtype=torch.float64) + 0.1
    b = 2 * torch.rand(14, generator=generator, dtype=torch.float64) + 0.1
    plan = unbalanced_sinkhorn(cost, 0.05, 0.3, a=a, b=b, **CONVERGED)
    assert np.abs(plan.numpy() - pot_plan(cost, 0.05, 0.3, a, b)).max() < 1e-8


@pytest.mark.parametrize("reg_m", [0.5, math.inf])
def test_fixed_iterations_are_pots(reg_m):
    """`tol=None` runs exactly `max_iter` of POT's iterations."""
    cost = cosine_cost(7, 11, seed=5)
    for iterations in (1, 2, 25):
        plan = unbalanced_sinkhorn(cost, 0.05, reg_m, max_iter=iterations, tol=None)
        expected = ot.unbalanced.sinkhorn_unbalanced(
            np.full(7, 1 / 7),
            np.full(11, 1 / 11),
            cost.numpy(),
            0.05,
            reg_m,
            reg_type="kl",
            numItermax=iterations,
            stopThr=0.0,
        )
        assert np.abs(plan.numpy() - expected).max() < 1e-14


def log_domain_reference(cost, reg, reg_m, iterations):
    """POT's iterations written on log u, log v with logsumexp, in float64 (no underflow at any reg)."""
    cost = cost.double()
    log_a, log_b = -math.log(cost.shape[0]), -math.log(cost.shape[1])
    fi = 1.0 if math.isinf(reg_m) else reg_m / (reg_m + reg)
    log_kernel = log_a + log_b - cost / reg
    log_v = torch.zeros(cost.shape[1], dtype=torch.float64)
    for _ in range(iterations):
        log_u = fi * (log_a - torch.logsumexp(log_kernel + log_v, dim=1))
        log_v = fi * (log_b - torch.logsumexp(log_kernel + log_u[:, None], dim=0))
    return torch.exp(log_kernel + log_u[:, None] + log_v)


@pytest.mark.parametrize("reg_m", [0.5, math.inf])
def test_small_reg_is_finite_and_right(reg_m):
    """reg = 1e-3: exp(-C / reg) underflows even in float64, yet the plan follows the log-domain iterations (the
    scalings are re-absorbed along the way) and stays finite in float32, gradient included."""
    cost = cosine_cost(16, 16, seed=6)
    expected = log_domain_reference(cost, 1e-3, reg_m, 300)
    options = {"max_iter": 300, "tol": 0.0, "check_every": 5}
    plan64 = unbalanced_sinkhorn(cost, 1e-3, reg_m, **options)
    assert (plan64 - expected).abs().max() / expected.max() < 1e-10
    cost32 = cost.float().requires_grad_()
    plan32 = unbalanced_sinkhorn(cost32, 1e-3, reg_m, **options)
    assert (plan32.double() - expected).abs().max() / expected.max() < 1e-4
    (plan32 * torch.randn(16, 16)).sum().backward()
    assert torch.isfinite(cost32.grad).all()


def test_sinkhorn_gradcheck():
    cost = cosine_cost(5, 6, seed=7).requires_grad_()
    for reg, reg_m in ((0.05, 0.5), (0.1, math.inf), (0.01, 1.0)):
        assert torch.autograd.gradcheck(
            functools.partial(unbalanced_sinkhorn, reg=reg, reg_m=reg_m, max_iter=30, tol=None), (cost,)
        )


def test_gradient_through_reabsorption_equals_autograd_of_the_log_domain_iterations():
    """reg = 5e-4 in float64: the scalings drift past exp(B / 2) (B = 351) twice in 300 iterations and are re-absorbed;
    the gradient of the plan still equals autograd's through POT's iterations written in the log domain."""
    weights = torch.randn(5, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ours, theirs = (cosine_cost(5, 6, seed=8).requires_grad_() for _ in range(2))
    plan = unbalanced_sinkhorn(ours, 5e-4, 0.5, max_iter=300, tol=0.0, check_every=5)
    expected = log_domain_reference(theirs, 5e-4, 0.5, 300)
    assert (plan - expected).abs().max() / expected.max() < 1e-10
    (plan * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-9, atol=1e-9 * theirs.grad.abs().max().item())


def test_gradient_equals_pots_autograd():
    """Unrolled backward = autograd through POT's own iterations."""
    weights = torch.randn(8, 10, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ours, theirs = (cosine_cost(8, 10, seed=10).requires_grad_() for _ in range(2))
    (unbalanced_sinkhorn(ours, 0.05, 0.5, max_iter=60, tol=None) * weights).sum().backward()
    uniform = torch.tensor([], dtype=torch.float64)
    plan = ot.unbalanced.sinkhorn_unbalanced(
        uniform, uniform, theirs, 0.05, 0.5, reg_type="kl", numItermax=60, stopThr=0
    )
    (plan * weights).sum().backward()
    assert (ours.grad - theirs.grad).abs().max() < 1e-12


def test_sinkhorn_in_float32_under_bf16_autocast():
    cost = cosine_cost(6, 9, seed=12, dtype=torch.float32)
    expected = unbalanced_sinkhorn(cost, 0.05, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(unbalanced_sinkhorn(cost, 0.05, 0.5), expected)
        from_bf16 = unbalanced_sinkhorn(cost.bfloat16(), 0.05, 0.5)
    assert from_bf16.dtype == torch.float32
    assert torch.equal(from_bf16, unbalanced_sinkhorn(cost.bfloat16().float(), 0.05, 0.5))


def test_detach_plan():
    cost = cosine_cost(6, 6, seed=11).requires_grad_()
    plan = unbalanced_sinkhorn(cost, 0.05, 0.5, detach_plan=True)
    assert not plan.requires_grad
    assert torch.equal(plan, unbalanced_sinkhorn(cost, 0.05, 0.5).detach())


# --------------------------------------------------------------------------------------------------------------
# Direct evaluations on a hand-made batch: 3 images with 3, 1 and 2 captions
# --------------------------------------------------------------------------------------------------------------

INDEX = [0, 1, 0, 2, 0, 2]  # image 1 has a single caption; rows are not grouped by image


def batch(seed=0, dim=4, teacher_dim=5):
    index = torch.tensor(INDEX)
    return {
        "image_embeds": unit_rows(3, dim, seed=seed),
        "text_embeds": unit_rows(len(INDEX), dim, seed=seed + 1),
        "caption_image_index": index,
        "teacher_image_embeds": 3 * unit_rows(3, teacher_dim, seed=seed + 2),  # normalised inside
        "teacher_text_embeds": unit_rows(len(INDEX), teacher_dim, seed=seed + 3),
    }


def teachers(inputs):
    return inputs["teacher_image_embeds"], inputs["teacher_text_embeds"], inputs["caption_image_index"]


def numpy_of(inputs):
    return {name: value.detach().numpy() for name, value in inputs.items()}


def direct_graph(inputs, strategy):
    n = len(INDEX)
    image = inputs["teacher_image_embeds"] / np.linalg.norm(inputs["teacher_image_embeds"], axis=1, keepdims=True)
    text = inputs["teacher_text_embeds"]
    graph = np.zeros((n, n))
    for k in range(n):
        for m in range(n):
            tt = text[k] @ text[m]
            ii = image[INDEX[k]] @ image[INDEX[m]]
            ti, it = text[k] @ image[INDEX[m]], image[INDEX[k]] @ text[m]
            graph[k, m] = {
                "cross_modality": (tt + ii + ti + it) / 4,
                "arithmetic_mean": (tt + ii) / 2,
                "harmonic_mean": 2 * tt * ii / (tt + ii + 1e-8),
                "caption_only": tt,
                "image_only": ii,
            }[strategy]
    return graph


def direct_logits(inputs, scale, bias=0.0):
    n = len(INDEX)
    return np.array(
        [
            [scale * inputs["image_embeds"][INDEX[i]] @ inputs["text_embeds"][j] + bias for j in range(n)]
            for i in range(n)
        ]
    )


def direct_plan(inputs, reg=0.05, reg_m=0.5):
    """T = N P* of C_ij = 1 - x_i . y_j, P* from POT."""
    cost = 1 - direct_logits(inputs, 1.0)
    return len(INDEX) * pot_plan(cost, reg, reg_m)


def row_softmax(matrix):
    exps = np.exp(matrix - matrix.max(axis=1, keepdims=True))
    return exps / exps.sum(axis=1, keepdims=True)


def direct_kl(target, prior):
    n = len(target)
    return (
        sum(
            (target[i, j] * (math.log(target[i, j]) - math.log(prior[i, j]) - 1) if target[i, j] > 0 else 0)
            + prior[i, j]
            for i in range(n)
            for j in range(n)
        )
        / n
    )


def direct_sigrot(inputs, scale, strategy="cross_modality", reg=0.05, reg_m=0.5, normalise_plan=False):
    target, graph = direct_plan(inputs, reg, reg_m), direct_graph(inputs, strategy)
    forward, backward = target, target.T
    if normalise_plan:  # each row a distribution
        forward, backward = (t / t.sum(axis=1, keepdims=True) for t in (forward, backward))
    return (direct_kl(forward, row_softmax(scale * graph)) + direct_kl(backward, row_softmax(scale * graph.T))) / 2


def soft_cross_entropy(logits, targets):
    """-(1/N) sum_ij q_ij log softmax_j(l_i)."""
    log_probabilities = np.log(row_softmax(logits))
    n = len(logits)
    return -sum(targets[i, j] * log_probabilities[i, j] for i in range(n) for j in range(n)) / n


def same_image_targets():
    n = len(INDEX)
    positives = np.array([[float(INDEX[i] == INDEX[j]) for j in range(n)] for i in range(n)])
    return positives / positives.sum(axis=1, keepdims=True)


def direct_clip(inputs, scale):
    logits, targets = direct_logits(inputs, scale), same_image_targets()
    return (soft_cross_entropy(logits, targets) + soft_cross_entropy(logits.T, targets)) / 2


def softplus(value):
    return math.log1p(math.exp(value))


def direct_siglip(inputs, scale, bias):
    logits, n = direct_logits(inputs, scale, bias), len(INDEX)
    total = 0.0
    for i in range(n):
        positives = sum(INDEX[i] == INDEX[j] for j in range(n))
        for j in range(n):
            same = INDEX[i] == INDEX[j]
            total += (1 / positives if same else 1.0) * softplus(-(1 if same else -1) * logits[i, j])
    return total / n


def direct_clip_uot(inputs, scale):
    logits, target = direct_logits(inputs, scale), direct_plan(inputs)
    rows, columns = target / target.sum(axis=1, keepdims=True), target.T / target.T.sum(axis=1, keepdims=True)
    return (soft_cross_entropy(logits, rows) + soft_cross_entropy(logits.T, columns)) / 2


def direct_siglip_uot(inputs, scale, bias):
    logits, labels, n = direct_logits(inputs, scale, bias), np.clip(direct_plan(inputs), 0, 1), len(INDEX)
    return (
        sum(
            labels[i, j] * softplus(-logits[i, j]) + (1 - labels[i, j]) * softplus(logits[i, j])
            for i in range(n)
            for j in range(n)
        )
        / n
    )


@pytest.mark.parametrize("strategy", GRAPH_STRATEGIES)
def test_similarity_graph(strategy):
    inputs = batch()
    graph = similarity_graph(*teachers(inputs), strategy)
    np.testing.assert_allclose(graph.numpy(), direct_graph(numpy_of(inputs), strategy), rtol=0, atol=1e-12)
    torch.testing.assert_close(graph, graph.T, rtol=0, atol=1e-15)


def student_plan(inputs, reg=0.05, reg_m=0.5):
    """T = N P* of the batch's student embeddings, to convergence."""
    return transport_plan(
        inputs["image_embeds"], inputs["text_embeds"], inputs["caption_image_index"], reg, reg_m, **CONVERGED
    )


def test_transport_plan():
    inputs = batch(seed=2)
    np.testing.assert_allclose(student_plan(inputs).numpy(), direct_plan(numpy_of(inputs)), rtol=0, atol=1e-9)
    plan, converged = transport_plan(
        inputs["image_embeds"], inputs["text_embeds"], inputs["caption_image_index"], 0.05, 0.5, return_converged=True
    )
    assert converged is True and torch.allclose(plan, student_plan(inputs), rtol=0, atol=1e-5)


@pytest.mark.parametrize("strategy", GRAPH_STRATEGIES)
def test_sigrot_loss(strategy):
    inputs, scale = batch(), 7.0
    graph = similarity_graph(*teachers(inputs), strategy)
    loss = sigrot_divergence(student_plan(inputs), graph, torch.tensor(scale, dtype=torch.float64))
    assert loss.item() == pytest.approx(direct_sigrot(numpy_of(inputs), scale, strategy), rel=1e-10)


@pytest.mark.parametrize("strategy", ["cross_modality", "caption_only"])
def test_sigrot_loss_with_normalised_plan(strategy):
    inputs, scale = batch(seed=3), 7.0
    graph = similarity_graph(*teachers(inputs), strategy)
    loss = sigrot_divergence(student_plan(inputs), graph, torch.tensor(scale, dtype=torch.float64), normalise_plan=True)
    expected = direct_sigrot(numpy_of(inputs), scale, strategy, normalise_plan=True)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert expected != pytest.approx(direct_sigrot(numpy_of(inputs), scale, strategy), rel=1e-3)


def test_sigrot_with_an_asymmetric_graph():
    """text->image uses row-softmax(s S^T): checked with a graph that is not symmetric."""
    inputs = batch(seed=20)
    graph = torch.randn(6, 6, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    loss = sigrot_divergence(student_plan(inputs), graph, 3.0)
    target, g = direct_plan(numpy_of(inputs)), graph.numpy()
    expected = (direct_kl(target, row_softmax(3 * g)) + direct_kl(target.T, row_softmax(3 * g.T))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_uot_soft_target_losses():
    inputs, scale, bias = batch(seed=30), 5.0, -2.0
    arguments = (inputs["image_embeds"], inputs["text_embeds"], inputs["caption_image_index"], student_plan(inputs))
    clip = uot_soft_target_loss(*arguments, scale)
    siglip = uot_soft_target_loss(*arguments, scale, bias)
    assert clip.item() == pytest.approx(direct_clip_uot(numpy_of(inputs), scale), rel=1e-10)
    assert siglip.item() == pytest.approx(direct_siglip_uot(numpy_of(inputs), scale, bias), rel=1e-10)


def module_loss(loss_type, inputs, scale=6.0, bias=-3.0, **options):
    module = ContrastiveOTLoss(
        LossSettings(loss_type, ot_max_iter=CONVERGED["max_iter"], ot_tol=CONVERGED["tol"], ot_check_every=1, **options)
    )
    return module(
        inputs["image_embeds"],
        inputs["text_embeds"],
        inputs["caption_image_index"],
        torch.tensor(scale, dtype=torch.float64),
        torch.tensor(bias, dtype=torch.float64),
        inputs["teacher_image_embeds"],
        inputs["teacher_text_embeds"],
    )


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_loss_type(loss_type):
    inputs, scale, bias = batch(seed=40), 6.0, -3.0
    direct = numpy_of(inputs)
    contrastive = {
        "clip": direct_clip(direct, scale),
        "siglip": direct_siglip(direct, scale, bias),
        "clip_uot": direct_clip_uot(direct, scale),
        "siglip_uot": direct_siglip_uot(direct, scale, bias),
    }
    contrastive.update(clip_sigrot=contrastive["clip"], siglip_sigrot=contrastive["siglip"])
    sigrot = direct_sigrot(direct, scale)
    expected = {
        "clip": contrastive["clip"],
        "siglip": contrastive["siglip"],
        "sigrot": sigrot,
        "clip_sigrot": sigrot + 0.1 * contrastive["clip"],
        "siglip_sigrot": sigrot + 0.1 * contrastive["siglip"],
        "clip_uot": contrastive["clip_uot"],
        "siglip_uot": contrastive["siglip_uot"],
    }[loss_type]
    output = module_loss(loss_type, inputs, scale, bias)
    assert output.loss.item() == pytest.approx(expected, rel=1e-10)
    if loss_type in contrastive:
        assert output.contrastive.item() == pytest.approx(contrastive[loss_type], rel=1e-10)
    if "sigrot" in loss_type:
        assert output.sigrot.item() == pytest.approx(sigrot, rel=1e-10)


@pytest.mark.parametrize("loss_type", ["clip_sigrot", "sigrot"])
def test_normalised_plan_option(loss_type):
    inputs, scale = batch(seed=41), 6.0
    direct = numpy_of(inputs)
    sigrot = direct_sigrot(direct, scale, normalise_plan=True)
    expected = sigrot + (0.1 * direct_clip(direct, scale) if loss_type == "clip_sigrot" else 0)
    output = module_loss(loss_type, inputs, scale, normalise_plan=True)
    assert output.loss.item() == pytest.approx(expected, rel=1e-10)
    assert output.sigrot.item() == pytest.approx(sigrot, rel=1e-10)


def test_detach_prior_scale_keeps_the_value_and_drops_sigrots_scale_gradient():
    """Same loss; the scale's gradient is then the contrastive term's alone (lambda times the gradient of the
    multi-positive CLIP loss, from modeling_viclip_ot); the embeddings' gradients do not change."""
    from modeling_viclip_ot import contrastive_loss

    inputs = batch(seed=42)
    image, text = inputs["image_embeds"].requires_grad_(), inputs["text_embeds"].requires_grad_()
    results = {}
    for detach in (False, True):
        scale = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
        loss = ContrastiveOTLoss(LossSettings("clip_sigrot", detach_prior_scale=detach))(
            image,
            text,
            inputs["caption_image_index"],
            scale,
            None,
            inputs["teacher_image_embeds"],
            inputs["teacher_text_embeds"],
        ).loss
        results[detach] = (loss, *torch.autograd.grad(loss, (image, text, scale)))
    scale = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
    (clip_gradient,) = torch.autograd.grad(
        0.1 * contrastive_loss(image, text, inputs["caption_image_index"], scale), scale
    )
    assert results[True][0].item() == pytest.approx(results[False][0].item(), rel=1e-12)
    for ours, plain in zip(results[True][1:3], results[False][1:3]):
        torch.testing.assert_close(ours, plain, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(results[True][3], clip_gradient, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(results[False][3], clip_gradient)


def test_an_empty_plan_is_the_papers_escape_not_the_normalised_ones():
    """Raising every cost by c makes the plan lose mass (through the embeddings: the modalities drift apart). The
    paper's generalised KL of a plan of the wrong shape (random embeddings) falls on the way, has its minimum at a
    fraction of the mass, and tends to sum(G) / N = 1 whatever the teacher says, which is below its value at the
    original costs: an emptier plan is a better solution. The KL of the row-normalised plan does not change with c at
    all, so shedding mass gains nothing."""
    inputs, scale = batch(seed=43), 20.0
    graph = similarity_graph(*teachers(inputs))
    cost = 1 - torch.as_tensor(direct_logits(numpy_of(inputs), 1.0))
    paper, normalised, masses = [], [], []
    for shift in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0):
        plan = len(INDEX) * unbalanced_sinkhorn(cost + shift, 0.05, 0.5, **CONVERGED)
        masses.append(plan.sum(1).mean().item())
        paper.append(sigrot_divergence(plan, graph, scale).item())
        normalised.append(sigrot_divergence(plan, graph, scale, normalise_plan=True).item())
    assert masses[-1] < 1e-3 and all(np.diff(masses) < 0)
    best = int(np.argmin(paper))
    assert best > 0 and masses[best] < masses[0] / 2 and paper[best] < paper[0] - 0.2
    assert paper[-1] == pytest.approx(1.0, abs=1e-2) and paper[0] > paper[-1]
    np.testing.assert_allclose(normalised, normalised[0], rtol=1e-9)


def test_plan_diagnostics():
    inputs = batch(seed=45)
    direct = numpy_of(inputs)
    cosine, plan = direct_logits(direct, 1.0), direct_plan(direct)
    same = np.equal.outer(INDEX, INDEX)
    diagnostics = plan_diagnostics(
        inputs["image_embeds"], inputs["text_embeds"], inputs["caption_image_index"], torch.as_tensor(plan)
    )
    assert diagnostics["plan_row_mass"].item() == pytest.approx(plan.sum(1).mean(), rel=1e-12)
    assert diagnostics["matched_cosine"].item() == pytest.approx(cosine[same].mean(), rel=1e-12)
    assert diagnostics["unmatched_cosine"].item() == pytest.approx(cosine[~same].mean(), rel=1e-12)
    for loss_type in LOSS_TYPES:  # every loss reports the cosines; those with a plan its mass too
        output = module_loss(loss_type, inputs)
        assert all(torch.is_tensor(value) and value.ndim == 0 for value in output.diagnostics.values())
        assert output.diagnostics["matched_cosine"].item() == pytest.approx(cosine[same].mean(), rel=1e-9)
        assert output.diagnostics["unmatched_cosine"].item() == pytest.approx(cosine[~same].mean(), rel=1e-9)
        if LOSS_TYPES[loss_type].transport is None:
            assert "plan_row_mass" not in output.diagnostics and "sinkhorn_unconverged" not in output.diagnostics
        else:
            assert output.diagnostics["plan_row_mass"].item() == pytest.approx(plan.sum(1).mean(), rel=1e-9)
            assert output.diagnostics["sinkhorn_unconverged"].item() == 0.0
    single = {
        **inputs,
        "image_embeds": inputs["image_embeds"][:1],
        "caption_image_index": torch.zeros(len(INDEX), dtype=torch.long),
    }
    assert "unmatched_cosine" not in module_loss("clip", single).diagnostics  # one image: no unmatched pair


@pytest.mark.parametrize("loss_type", ["clip", "siglip", "clip_sigrot"])
def test_only_transport_losses_solve_a_transport_problem(loss_type, monkeypatch):
    """`clip` and `siglip` call no Sinkhorn solver, and their loss and gradients are the plain contrastive loss's
    (autograd through `modeling_viclip_ot.contrastive_loss`); a SIGROT loss still solves once."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return unbalanced_sinkhorn(*args, **kwargs)

    monkeypatch.setattr(sinkhorn, "unbalanced_sinkhorn", counted)
    inputs = batch(seed=47)
    leaves = {name: inputs[name].clone().requires_grad_() for name in ("image_embeds", "text_embeds")}
    scale, bias = torch.tensor(6.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
    output = module_loss(loss_type, {**inputs, **leaves})
    assert len(calls) == (0 if LOSS_TYPES[loss_type].transport is None else 1)
    if LOSS_TYPES[loss_type].transport is None:
        reference = {name: inputs[name].clone().requires_grad_() for name in leaves}
        expected = contrastive_loss(
            reference["image_embeds"],
            reference["text_embeds"],
            inputs["caption_image_index"],
            scale,
            bias if loss_type == "siglip" else None,
        )
        torch.testing.assert_close(output.loss, expected, rtol=1e-12, atol=0)
        output.loss.backward()
        expected.backward()
        for name in leaves:
            torch.testing.assert_close(leaves[name].grad, reference[name].grad, rtol=1e-12, atol=1e-15)


def test_unconverged_sinkhorn_is_reported():
    cost = cosine_cost(12, 12)
    assert unbalanced_sinkhorn(cost, 0.01, 0.5, max_iter=20, return_converged=True)[1] is False
    plan, converged = unbalanced_sinkhorn(cost, 0.01, 0.5, return_converged=True, **CONVERGED)
    assert converged is True and torch.equal(plan, unbalanced_sinkhorn(cost, 0.01, 0.5, **CONVERGED))
    assert unbalanced_sinkhorn(cost, 0.01, 0.5, max_iter=20, tol=None, return_converged=True)[1] is None
    inputs = batch(seed=46)
    output = ContrastiveOTLoss(LossSettings("clip_sigrot", ot_reg=0.01, ot_max_iter=3))(
        inputs["image_embeds"],
        inputs["text_embeds"],
        inputs["caption_image_index"],
        torch.tensor(6.0),
        None,
        inputs["teacher_image_embeds"],
        inputs["teacher_text_embeds"],
    )
    assert output.diagnostics["sinkhorn_unconverged"] == 1.0


def test_fixed_prior_temperature():
    inputs = batch(seed=50)
    output = module_loss("sigrot", inputs, scale=6.0, prior_temperature=0.05)
    assert output.loss.item() == pytest.approx(direct_sigrot(numpy_of(inputs), 1 / 0.05), rel=1e-10)


GRADCHECK_CASES = [(name, {}) for name in LOSS_TYPES if not name.endswith("uot")] + [
    ("clip_sigrot", {"normalise_plan": True}),
    ("sigrot", {"normalise_plan": True}),
    ("sigrot", {"normalise_plan": True, "ot_reg_m": math.inf}),
]


@pytest.mark.parametrize(("loss_type", "options"), GRADCHECK_CASES)
def test_gradcheck(loss_type, options):
    inputs = batch(seed=60)
    image, text = inputs["image_embeds"].requires_grad_(), inputs["text_embeds"].requires_grad_()
    scale = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    module = ContrastiveOTLoss(LossSettings(loss_type, ot_max_iter=30, ot_tol=None, **options))

    def loss(image, text, scale, bias):
        return module(
            image,
            text,
            inputs["caption_image_index"],
            scale,
            bias,
            inputs["teacher_image_embeds"],
            inputs["teacher_text_embeds"],
        ).loss

    assert torch.autograd.gradcheck(loss, (image, text, scale, bias))


@pytest.mark.parametrize("loss_type", ["clip_uot", "siglip_uot"])
def test_uot_gradient_holds_the_plan_constant(loss_type):
    """The soft targets carry no gradient: the embeddings' gradient is that of the loss with T fixed (torch autograd
    through the explicit formula), and gradcheck holds for the scale and bias, on which T does not depend."""
    inputs = batch(seed=61)
    image, text = inputs["image_embeds"].requires_grad_(), inputs["text_embeds"].requires_grad_()
    scale = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)

    def loss(image, text, scale, bias):
        return ContrastiveOTLoss(LossSettings(loss_type, ot_max_iter=30, ot_tol=None))(
            image, text, inputs["caption_image_index"], scale, bias
        ).loss

    assert torch.autograd.gradcheck(lambda s, b: loss(image.detach(), text.detach(), s, b), (scale, bias))
    target = torch.as_tensor(
        len(INDEX)
        * ot.unbalanced.sinkhorn_unbalanced(
            np.full(6, 1 / 6),
            np.full(6, 1 / 6),
            1 - direct_logits(numpy_of(inputs), 1.0),
            0.05,
            0.5,
            reg_type="kl",
            numItermax=30,
            stopThr=0.0,
        )
    )
    logits = scale * image[inputs["caption_image_index"]] @ text.T
    if loss_type == "clip_uot":
        rows, columns = target / target.sum(1, keepdim=True), target.T / target.T.sum(1, keepdim=True)
        expected = -((rows * logits.log_softmax(1)).sum() + (columns * logits.T.log_softmax(1)).sum()) / 12
    else:
        logits, labels = logits + bias, target.clamp(0, 1)
        expected = (labels * F.softplus(-logits) + (1 - labels) * F.softplus(logits)).sum() / 6
    wanted = torch.autograd.grad(expected, (image, text))
    got = torch.autograd.grad(loss(image, text, scale, bias), (image, text))
    for ours, theirs in zip(got, wanted):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------------------------
# Robustness, precision, options
# --------------------------------------------------------------------------------------------------------------


def degenerate_batches():
    orthogonal, same, index = torch.eye(6), F.normalize(torch.ones(6, 8), dim=-1), torch.tensor(INDEX)
    images, texts = unit_rows(3, 4, dtype=torch.float32), unit_rows(6, 4, seed=1, dtype=torch.float32)
    return {
        "identical": (same[:3], same, index, {}),
        "orthogonal": (orthogonal[:3], orthogonal, index, {}),
        "reg 1e-3": (images, texts, index, {"ot_reg": 1e-3}),
        "one image, three captions": (images[:1], texts[:3], torch.zeros(3, dtype=torch.long), {}),
        "one image, one caption": (images[:1], texts[:1], torch.zeros(1, dtype=torch.long), {}),
    }


@pytest.mark.parametrize("case", list(degenerate_batches()))
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_no_nan_or_inf(loss_type, case):
    image, text, index, options = degenerate_batches()[case]
    image, text = image.clone().requires_grad_(), text.clone().requires_grad_()
    scale, bias = torch.tensor(100.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    output = ContrastiveOTLoss(LossSettings(loss_type, **options))(
        image, text, index, scale, bias, image.detach(), text.detach()
    )
    output.loss.backward()
    assert torch.isfinite(output.loss)
    for tensor in (image.grad, text.grad, scale.grad, bias.grad):
        assert tensor is None or torch.isfinite(tensor).all()


@pytest.mark.parametrize("loss_type", ["clip_sigrot", "siglip_sigrot", "clip_uot", "siglip_uot"])
def test_bf16_autocast_gives_the_fp32_loss(loss_type):
    inputs = {name: value.float() if value.is_floating_point() else value for name, value in batch(seed=70).items()}
    scale, bias = torch.tensor(6.0), torch.tensor(-3.0)

    def loss(image, text):
        return ContrastiveOTLoss(LossSettings(loss_type))(
            image,
            text,
            inputs["caption_image_index"],
            scale,
            bias,
            inputs["teacher_image_embeds"],
            inputs["teacher_text_embeds"],
        ).loss

    expected = loss(inputs["image_embeds"], inputs["text_embeds"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = loss(inputs["image_embeds"], inputs["text_embeds"])
        from_bf16 = loss(inputs["image_embeds"].bfloat16(), inputs["text_embeds"].bfloat16())
    assert inside.dtype == torch.float32 and torch.equal(inside, expected)
    rounded = loss(inputs["image_embeds"].bfloat16().float(), inputs["text_embeds"].bfloat16().float())
    assert from_bf16.dtype == torch.float32 and torch.equal(from_bf16, rounded)


def test_detach_plan_keeps_only_the_prior_gradient():
    inputs = batch(seed=80)
    leaves = [inputs["image_embeds"].requires_grad_(), torch.tensor(6.0, dtype=torch.float64, requires_grad=True)]
    gradients = {}
    for detach in (False, True):
        output = ContrastiveOTLoss(LossSettings("sigrot", detach_plan=detach))(
            inputs["image_embeds"],
            inputs["text_embeds"],
            inputs["caption_image_index"],
            leaves[1],
            None,
            inputs["teacher_image_embeds"],
            inputs["teacher_text_embeds"],
        )
        gradients[detach] = torch.autograd.grad(output.loss, leaves, allow_unused=True)
    assert gradients[True][0] is None and gradients[False][0].abs().sum() > 0
    assert torch.allclose(gradients[True][1], gradients[False][1])


def test_bad_options_and_inputs():
    with pytest.raises(ValueError, match="loss_type"):
        LossSettings("ot")
    with pytest.raises(ValueError, match="graph_strategy"):
        LossSettings(graph_strategy="geometric_mean")
    inputs = batch()
    arguments = (inputs["image_embeds"], inputs["text_embeds"], inputs["caption_image_index"], torch.tensor(6.0))
    with pytest.raises(ValueError, match="teacher"):
        ContrastiveOTLoss(LossSettings("clip_sigrot"))(*arguments)
    with pytest.raises(ValueError, match="needs a bias"):
        ContrastiveOTLoss(LossSettings("siglip"))(*arguments)
    with pytest.raises(ValueError, match="caption_image_index"):
        ContrastiveOTLoss(LossSettings("clip"))(inputs["image_embeds"][:2], *arguments[1:])


def test_the_model_decides_clip_or_siglip():
    """A SigLIP loss needs a model with a logit bias and a CLIP loss one without (`model(return_loss=True)` computes
    SigLIP's loss exactly when there is a bias); SIGROT alone suits both."""
    clip_model, siglip_model = ViCLIPOTConfig(), ViCLIPOTConfig(logit_bias_init_value=-10.0)
    for loss_type, kind in LOSS_TYPES.items():
        for config in (clip_model, siglip_model):
            if kind.logit_loss is None or kind.needs_bias == (config is siglip_model):
                LossSettings(loss_type).check_model(config)
            else:
                with pytest.raises(ValueError, match="logit bias"):
                    LossSettings(loss_type).check_model(config)
