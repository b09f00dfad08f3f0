"""Training losses of ViCLIP-OT (the paper's Eqs.): SIGROT, the "CLIP/SigLIP + UOT" baselines, their hybrids with the
multi-positive CLIP/SigLIP losses of `modeling_viclip_ot`, the unbalanced Sinkhorn solver they share, and the
cross-process gather.

Conventions: a batch holds B unique images and N captions; `caption_image_index[k]` is the image of caption k, and
caption row k pairs caption k with that image, so every N x N matrix below is indexed by caption rows. Images are
encoded once and expanded to rows here. `scale` is the scale s itself (the model's `logit_scale` is its log), `bias`
SigLIP's b. Every loss runs with autocast off and its inputs upcast to float32 (float64 stays float64).
"""

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from modeling_viclip_ot import (
    caption_row_logits,
    check_caption_image_index,
    contrastive_loss,
    full_precision,
    same_image_mask,
)


@dataclass(frozen=True)
class LossType:
    """What a `loss_type` combines: `contrastive` "clip", "siglip" or None; `transport` "sigrot" (needs a teacher),
    "uot" (the student's own plan as soft targets, in place of the contrastive targets) or None."""

    contrastive: str | None
    transport: str | None
    description: str

    @property
    def needs_teacher(self) -> bool:
        return self.transport == "sigrot"

    @property
    def needs_bias(self) -> bool:
        return self.contrastive == "siglip"


LOSS_TYPES = {
    "clip": LossType("clip", None, "multi-positive CLIP loss"),
    "siglip": LossType("siglip", None, "multi-positive SigLIP loss"),
    "clip_sigrot": LossType("clip", "sigrot", "ViCLIP-OT: L_SIGROT + lambda L_CLIP"),
    "siglip_sigrot": LossType("siglip", "sigrot", "ViSigLIP-OT: L_SIGROT + lambda L_SigLIP"),
    "sigrot": LossType(None, "sigrot", "L_SIGROT alone"),
    "clip_uot": LossType("clip", "uot", "CLIP with the student's UOT plan as soft targets"),
    "siglip_uot": LossType("siglip", "uot", "SigLIP with the student's UOT plan as soft targets"),
}
GRAPH_STRATEGIES = ("cross_modality", "arithmetic_mean", "harmonic_mean", "caption_only", "image_only")


# --------------------------------------------------------------------------------------------------------------
# Unbalanced Sinkhorn
# --------------------------------------------------------------------------------------------------------------


@full_precision
def unbalanced_sinkhorn(
    cost, reg, reg_m, a=None, b=None, max_iter=200, tol=1e-6, check_every=10, detach_plan=False, return_converged=False
):
    """The entropic unbalanced transport plan that `ot.unbalanced.sinkhorn_unbalanced(a, b, cost, reg, reg_m,
    reg_type="kl")` computes:

        argmin_{P >= 0} <P, C> + reg KL(P || a b^T) + reg_m KL(P 1 || a) + reg_m KL(P^T 1 || b),

    KL the generalised one. Same iterations as POT, from u = v = 1: u <- (a / K v)^fi, v <- (b / K^T u)^fi,
    K = exp(-C / reg) a b^T, fi = reg_m / (reg_m + reg) (fi = 1 for reg_m = inf: balanced OT), P = diag(u) K diag(v).

    Stabilised: the first iteration is done in the log domain and its plan becomes the working kernel ("absorption");
    the next iterations rescale that kernel by vectors, two matrix-vector products per iteration like POT. When the
    scalings have drifted past exp(+-B/2) at a check, they are absorbed again (B = ln(largest float) / 2 - 4: 40 in
    float32); they are clamped to exp(+-B) and the products to the smallest normal float, so that no input overflows
    or divides by zero (small `reg` in float32 included).

    Convergence: POT's criterion, (max|u - u'| / max(|u|, |u'|, 1) + the same for v) / 2 < tol over the last
    iteration, evaluated every `check_every` iterations (one host synchronisation each); `tol=None` runs exactly
    `max_iter` iterations with no synchronisation at all and no re-absorption: exact as long as the scalings stay
    within exp(+-B) of the first iteration's, as they do for the paper's reg = 0.05 on cosine costs.

    Gradients flow through every iteration (the paper's choice); `detach_plan=True` returns a constant plan instead.
    The scaling iterations are one autograd node whose backward replays them in reverse (`_ScalingIterations`).

    Args:
        cost: (N, M) cost matrix. a, b: positive (N,), (M,) weights, uniform 1/N, 1/M by default.
        reg: entropic regularisation (eps). reg_m: marginal relaxation (tau), `float("inf")` for balanced OT.
        return_converged: also return whether the criterion was met before `max_iter` (None when `tol` is None).
    Returns:
        The (N, M) plan, float32 (float64 for float64 input); `(plan, converged)` with `return_converged`.
    """
    num_rows, num_cols = cost.shape
    log_a = cost.new_full((num_rows,), -math.log(num_rows)) if a is None else a.log()
    log_b = cost.new_full((num_cols,), -math.log(num_cols)) if b is None else b.log()
    fi = 1.0 if math.isinf(reg_m) else reg_m / (reg_m + reg)
    options = {"fi": fi, "bound": _log_scaling_bound(cost.dtype), "tol": tol, "check_every": check_every}
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_plan):
        log_kernel = log_a[:, None] + log_b - cost / reg
        beta, done = cost.new_zeros(num_cols), 0  # beta = log v of POT's iterations
        while True:
            # absorption: one log-domain iteration, whose plan is the kernel that the scalings u, v act on
            alpha = fi * (log_a - torch.logsumexp(log_kernel + beta, dim=1))
            beta = fi * (log_b - torch.logsumexp(log_kernel + alpha[:, None], dim=0))
            kernel = torch.exp(log_kernel + alpha[:, None] + beta)
            done += 1
            if done >= max_iter:
                plan, converged = kernel, False
                break
            a_term, b_term = fi * log_a - (1 - fi) * alpha, fi * log_b - (1 - fi) * beta
            log_u, log_v, steps, stop = _ScalingIterations.apply(
                kernel, a_term, b_term, alpha.detach(), beta.detach(), max_iter - done, options
            )
            done += steps
            alpha, beta = alpha + log_u, beta + log_v
            if stop != "drifted":  # the plan diag(u) K diag(v), as one exp (which keeps only its result for backward)
                plan, converged = torch.exp(log_kernel + alpha[:, None] + beta), stop == "converged"
                break
    return (plan, None if tol is None else converged) if return_converged else plan


class _ScalingIterations(torch.autograd.Function):
    """Sinkhorn iterations on a fixed kernel K, on log scalings relative to the absorbed potentials (alpha, beta):

        log u <- a_term - fi log(K v),    log v <- b_term - fi log(K^T u),    from log u = log v = 0,

    for at most `max_steps` iterations, stopping at convergence or, to be absorbed again, when the scalings drift too
    far (see `unbalanced_sinkhorn`). Forward returns (log u, log v, iterations run, why it stopped: "converged",
    "drifted" or "max_iter").
    Backward replays the iterations in reverse from the saved vectors; the gradient of K, one outer product per
    matrix-vector product, is summed in one matrix product. Clamped entries pass no gradient.
    """

    @staticmethod
    def forward(ctx, kernel, a_term, b_term, alpha, beta, max_steps, options):
        fi, bound, tol, check_every = options["fi"], options["bound"], options["tol"], options["check_every"]
        tiny, rows, columns = torch.finfo(kernel.dtype).tiny, len(a_term), len(b_term)
        # row t holds the vectors of iteration t + 1, which reads v[t] = exp(log_v[t]); log_v[0] = 0 is the start
        v, kv, u, ktu = (kernel.new_empty(max_steps, size) for size in (columns, rows, rows, columns))
        log_u, log_v = kernel.new_zeros(max_steps + 1, rows), kernel.new_zeros(max_steps + 1, columns)
        stop = "max_iter"
        for t in range(max_steps):
            steps = t + 1
            torch.exp(log_v[t], out=v[t])
            torch.mv(kernel, v[t], out=kv[t])
            torch.sub(a_term, kv[t].clamp_min(tiny).log(), alpha=fi, out=log_u[steps]).clamp_(-bound, bound)
            torch.exp(log_u[steps], out=u[t])
            torch.mv(kernel.T, u[t], out=ktu[t])
            torch.sub(b_term, ktu[t].clamp_min(tiny).log(), alpha=fi, out=log_v[steps]).clamp_(-bound, bound)
            if tol is not None and steps % check_every == 0:
                error = (
                    _pot_error(alpha + log_u[t], alpha + log_u[steps])
                    + _pot_error(beta + log_v[t], beta + log_v[steps])
                ) / 2
                drift = torch.cat([log_u[steps], log_v[steps]]).abs().max()
                error, drift = torch.stack([error, drift]).tolist()  # the one host synchronisation
                if not drift < bound / 2 or error < tol:
                    stop = "drifted" if not drift < bound / 2 else "converged"
                    break
        # d log u_t / d kv_t and d log v_t / d ktu_t; a clamped entry passes no gradient
        live_u, live_v = log_u[1 : steps + 1].abs() < bound, log_v[1 : steps + 1].abs() < bound
        kv_slope = torch.where(live_u & (kv[:steps] > tiny), -fi / kv[:steps], 0)
        ktu_slope = torch.where(live_v & (ktu[:steps] > tiny), -fi / ktu[:steps], 0)
        ctx.save_for_backward(kernel, v[:steps], u[:steps], kv_slope, ktu_slope, live_u, live_v)
        return log_u[steps].clone(), log_v[steps].clone(), steps, stop

    @staticmethod
    def backward(ctx, grad_log_u, grad_log_v, *_):
        kernel, v, u, kv_slope, ktu_slope, live_u, live_v = ctx.saved_tensors
        # row t: gradients with respect to the vectors of iteration t
        grad_u, grad_v = torch.empty_like(u), torch.empty_like(v)
        grad_kv, grad_ktu = torch.empty_like(kv_slope), torch.empty_like(ktu_slope)
        last = len(v) - 1
        grad_v[last] = grad_log_v * live_v[last]
        for t in reversed(range(len(v))):
            torch.mul(grad_v[t], ktu_slope[t], out=grad_ktu[t])
            torch.mul(u[t] * live_u[t], kernel @ grad_ktu[t], out=grad_u[t])
            if t == last:
                grad_u[t] += grad_log_u * live_u[t]
            torch.mul(grad_u[t], kv_slope[t], out=grad_kv[t])
            if t:
                torch.mul(v[t] * live_v[t - 1], kernel.T @ grad_kv[t], out=grad_v[t - 1])
        grad_kernel = torch.cat([grad_kv, u]).T @ torch.cat([v, grad_ktu])
        return grad_kernel, grad_u.sum(0), grad_v.sum(0), None, None, None, None


def _log_scaling_bound(dtype):
    """B: log scalings stay within +-B, so that u K v cannot overflow (40 in float32)."""
    return math.log(torch.finfo(dtype).max) / 2 - 4


def _pot_error(log_previous, log_current):
    """POT's max|x - x'| / max(|x|, |x'|, 1) for x = exp(log_current), x' = exp(log_previous), without overflow."""
    top = torch.cat([log_previous, log_current]).max().clamp_min(0)
    return ((log_current - top).exp() - (log_previous - top).exp()).abs().max()


# --------------------------------------------------------------------------------------------------------------
# Similarity graph, SIGROT, UOT soft targets
# --------------------------------------------------------------------------------------------------------------


@torch.no_grad()
@full_precision
def similarity_graph(teacher_image_embeds, teacher_text_embeds, caption_image_index, strategy="cross_modality"):
    """N x N teacher similarity S over caption rows, without gradient.

    E_I: the teacher embedding of each row's image (given per unique image, (B, d)), E_T: of each caption ((N, d)),
    both L2-normalised here. S_tt = E_T E_T^T, S_ii = E_I E_I^T, S_ti = E_T E_I^T, S_it = S_ti^T; `strategy`:
    `cross_modality` (S_tt + S_ii + S_ti + S_it) / 4, `arithmetic_mean` (S_tt + S_ii) / 2, `harmonic_mean`
    2 S_tt S_ii / (S_tt + S_ii + 1e-8), `caption_only` S_tt, `image_only` S_ii. All five are symmetric.
    """
    image = F.normalize(teacher_image_embeds, dim=-1)
    text = F.normalize(teacher_text_embeds, dim=-1)
    s_tt = text @ text.T
    s_ii = (image @ image.T)[caption_image_index][:, caption_image_index]
    if strategy == "cross_modality":
        s_ti = (text @ image.T)[:, caption_image_index]
        return (s_tt + s_ii + s_ti + s_ti.T) / 4
    if strategy == "arithmetic_mean":
        return (s_tt + s_ii) / 2
    if strategy == "harmonic_mean":
        return 2 * s_tt * s_ii / (s_tt + s_ii + 1e-8)
    if strategy == "caption_only":
        return s_tt
    if strategy == "image_only":
        return s_ii
    raise ValueError(f"unknown graph strategy {strategy!r}; choose one of {GRAPH_STRATEGIES}")


def _caption_row_plan(image_embeds, text_embeds, caption_image_index, reg, reg_m, **sinkhorn_options):
    """T = N P*, P* the unbalanced plan of the cosine cost C_ij = 1 - x_i . y_j between caption rows, a = b = 1/N
    (with `return_converged`, `(T, converged)`)."""
    cost = 1 - caption_row_logits(image_embeds, text_embeds, caption_image_index, 1.0)
    result = unbalanced_sinkhorn(cost, reg, reg_m, **sinkhorn_options)
    if sinkhorn_options.get("return_converged"):
        return cost.shape[0] * result[0], result[1]
    return cost.shape[0] * result


def _generalised_kl(target, log_prior):
    """(1/N) sum_ij [T_ij (log T_ij - log G_ij - 1) + G_ij] for N x N T and log G, both logs clamped at the smallest
    normal float (so T log T -> 0 as T -> 0, and nothing is inf or NaN)."""
    tiny = torch.finfo(target.dtype).tiny
    log_prior = log_prior.clamp_min(math.log(tiny))
    terms = target * (target.clamp_min(tiny).log() - log_prior - 1) + log_prior.exp()
    return terms.sum() / target.shape[0]


def _rows_summing_to_one(matrix):
    return matrix / matrix.sum(dim=1, keepdim=True).clamp_min(torch.finfo(matrix.dtype).tiny)


def sigrot_divergence(plan, graph, prior_scale, normalise_plan=False):
    """The SIGROT loss of a given N x N plan T = N P* and graph S (see `sigrot_loss`): the mean of KL(T || G) and
    KL(T^T || row-softmax(s S^T)), G = row-softmax(s S), with the rows of T (of T^T) normalised first under
    `normalise_plan`."""
    image_to_text, text_to_image = (_rows_summing_to_one(t) if normalise_plan else t for t in (plan, plan.T))
    image_to_text = _generalised_kl(image_to_text, F.log_softmax(prior_scale * graph, dim=1))
    text_to_image = _generalised_kl(text_to_image, F.log_softmax(prior_scale * graph.T, dim=1))
    return (image_to_text + text_to_image) / 2


@full_precision
def sigrot_loss(
    image_embeds,
    text_embeds,
    caption_image_index,
    graph,
    prior_scale,
    reg=0.05,
    reg_m=0.5,
    normalise_plan=False,
    **sinkhorn_options,
):
    """SIGROT: the generalised KL from the similarity-graph prior to the student's transport plan, both directions.

    T = N P*, P* = `unbalanced_sinkhorn(C, reg, reg_m)` of C_ij = 1 - x_i . y_j over caption rows (rows: each row's
    image, columns: the captions), a = b = 1/N, gradient through the iterations. Prior G = row-softmax(s S) with
    S = `graph`, s = `prior_scale` (the model's scale in the paper, not detached, or 1 / a fixed temperature).

        image->text: KL(T || row-softmax(s S)),   text->image: KL(T^T || row-softmax(s S^T)),
        KL(T || G) = (1/N) sum_ij [T_ij (log T_ij - log G_ij - 1) + G_ij];   loss = their mean.

    `normalise_plan=True` divides each row of T (of T^T) by its sum first: the KL between the plan's row
    distributions and the prior's. The paper's generalised KL also prices the plan's mass, m log m - m + 1 per row of
    mass m times the row's shape mismatch: an empty plan costs only 1, so a plan that cannot match G's shape sheds mass
    (all costs up: anti-aligned modalities), and a full row needs every cost near 0 (all pairs similar). Normalised,
    the loss depends only on where each row's mass goes.

    The text->image plan is P*^T: the problem with cost C^T and equal uniform marginals is solved by P*^T, so one
    Sinkhorn run serves both. The five graphs are symmetric, so both directions share the prior G and differ only in
    T versus T^T; the terms coincide when the plan is symmetric (the authors' two terms are numerically identical).

    Args:
        image_embeds: (B, d) per unique image. text_embeds: (N, d). caption_image_index: (N,) long.
        graph: (N, N) from `similarity_graph`. sinkhorn_options: `max_iter`, `tol`, `check_every`, `detach_plan`.
    """
    plan = _caption_row_plan(image_embeds, text_embeds, caption_image_index, reg, reg_m, **sinkhorn_options)
    return sigrot_divergence(plan, graph, prior_scale, normalise_plan)


def _uot_soft_target_of_plan(logits, plan, siglip):
    """The "+ UOT" loss of logits with the constant plan T as soft targets (see `uot_soft_target_loss`)."""
    if not siglip:
        return (
            F.cross_entropy(logits, _rows_summing_to_one(plan))
            + F.cross_entropy(logits.T, _rows_summing_to_one(plan.T))
        ) / 2
    return F.binary_cross_entropy_with_logits(logits, plan.clamp(0, 1), reduction="sum") / logits.shape[0]


@full_precision
def uot_soft_target_loss(
    image_embeds, text_embeds, caption_image_index, scale, bias=None, reg=0.05, reg_m=0.5, **sinkhorn_options
):
    """The "CLIP + UOT" (no `bias`) and "SigLIP + UOT" (with it) baselines: the student's own plan as soft targets in
    place of the multi-positive ones.

    T = N P* of the student's cosine cost as in `sigrot_loss`, computed without gradient and without a graph;
    logits l_ij = s x_i . y_j (+ b) over caption rows.
      - CLIP + UOT: the mean of CE(row-softmax(l), T / row sums of T) and CE(row-softmax(l^T), T^T / row sums of T^T),
        CE(p, q) = -(1/N) sum_ij q_ij log p_ij.
      - SigLIP + UOT: (1/N) sum_ij [q_ij softplus(-l_ij) + (1 - q_ij) softplus(l_ij)], q = T clamped to [0, 1]: the
        sigmoid loss with soft labels (SigLIP's exactly when T is the identity of one caption per image).
    """
    logits = caption_row_logits(image_embeds, text_embeds, caption_image_index, scale, bias)
    with torch.no_grad():
        plan = _caption_row_plan(image_embeds, text_embeds, caption_image_index, reg, reg_m, **sinkhorn_options)
    return _uot_soft_target_of_plan(logits, plan, siglip=bias is not None)


@torch.no_grad()
def plan_diagnostics(image_embeds, text_embeds, caption_image_index, plan=None):
    """What a training batch says about collapse, as 0-d tensors computed without a host synchronisation (read them
    once per logging interval): `matched_cosine`, the mean cosine of an image with its own captions (alignment);
    `unmatched_cosine` (batches of more than one image), with the other images' captions (near `matched_cosine`:
    everything similar; `matched_cosine` < 0: anti-aligned modalities); with a `plan`, `plan_row_mass`, the mean row
    sum of T = N P* (1 for a full plan)."""
    cosine = caption_row_logits(image_embeds, text_embeds, caption_image_index, 1.0)
    matched = same_image_mask(caption_image_index).to(cosine.dtype)
    diagnostics = {"matched_cosine": (cosine * matched).sum() / matched.sum()}
    if image_embeds.shape[0] > 1:
        diagnostics["unmatched_cosine"] = (cosine * (1 - matched)).sum() / (1 - matched).sum()
    if plan is not None:
        diagnostics["plan_row_mass"] = plan.sum(dim=1).mean()
    return diagnostics


# --------------------------------------------------------------------------------------------------------------
# Many processes
# --------------------------------------------------------------------------------------------------------------


class _ScaleGradient(torch.autograd.Function):
    """Identity whose backward multiplies the gradient by `factor`."""

    @staticmethod
    def forward(ctx, tensor, factor):
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def _gather_rows(tensor, sizes):
    """Concatenate every process's `tensor` (dim 0 sizes `sizes`, in rank order); this process's slot stays live
    with its gradient multiplied by the number of processes, the others are constants."""
    world_size, rank = dist.get_world_size(), dist.get_rank()
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    parts = [part[:size] for part, size in zip(parts, sizes)]
    parts[rank] = _ScaleGradient.apply(tensor, world_size) if tensor.requires_grad else tensor
    return torch.cat(parts)


def gather_batch(image_embeds, text_embeds, caption_image_index, teacher_image_embeds=None, teacher_text_embeds=None):
    """One global batch from every process's (differently sized) batch, concatenated in rank order, with
    `caption_image_index` shifted by each process's image offset; unchanged without torch.distributed or with one
    process. None stays None.

    Gradient contract: every process computes the same loss L on the global batch; the gradient of L reaches only
    this process's own rows, multiplied by the world size W. Once DDP (or accelerate) averages the parameter
    gradients over the W processes, every parameter, encoder weights and the logit scale or bias alike, holds
    exactly the gradient of L that one process would get on the union of the batches.
    """
    inputs = (image_embeds, text_embeds, caption_image_index, teacher_image_embeds, teacher_text_embeds)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return inputs
    local_sizes = torch.tensor([image_embeds.shape[0], text_embeds.shape[0]], device=image_embeds.device)
    all_sizes = [torch.empty_like(local_sizes) for _ in range(dist.get_world_size())]
    dist.all_gather(all_sizes, local_sizes)
    image_sizes, caption_sizes = torch.stack(all_sizes).T.tolist()
    image_offset = sum(image_sizes[: dist.get_rank()])
    sizes = (image_sizes, caption_sizes, caption_sizes, image_sizes, caption_sizes)
    shifted = (image_embeds, text_embeds, caption_image_index + image_offset, teacher_image_embeds, teacher_text_embeds)
    return tuple(None if tensor is None else _gather_rows(tensor, size) for tensor, size in zip(shifted, sizes))


# --------------------------------------------------------------------------------------------------------------
# The training loss
# --------------------------------------------------------------------------------------------------------------


@dataclass
class LossOutput:
    """`loss` to back-propagate; `contrastive` and `sigrot`, the terms it combines (None when unused), detached;
    `diagnostics`, detached 0-d tensors of the batch (`plan_diagnostics`, and, for the losses that solve a transport
    problem, `sinkhorn_unconverged` 1.0 / 0.0 when the plan's Sinkhorn stopped at `ot_max_iter` unconverged)."""

    loss: torch.Tensor
    contrastive: torch.Tensor | None = None
    sigrot: torch.Tensor | None = None
    diagnostics: dict = field(default_factory=dict)


class ContrastiveOTLoss(nn.Module):
    """The training loss, chosen by `loss_type` (a key of `LOSS_TYPES`):

    - `clip`, `siglip`: the multi-positive CLIP / SigLIP loss L_con (`modeling_viclip_ot`).
    - `clip_sigrot` (ViCLIP-OT), `siglip_sigrot` (ViSigLIP-OT): L_SIGROT + contrastive_weight * L_con.
    - `sigrot`: L_SIGROT alone.
    - `clip_uot`, `siglip_uot`: `uot_soft_target_loss`, reported as the contrastive term.

    SIGROT's prior scale is the model's scale (with its gradient, the paper's choice; `detach_prior_scale` stops that
    gradient) unless `prior_temperature` is set (scale 1 / temperature); `normalise_plan` compares the row-normalised
    plan with the prior (`sigrot_loss`). The Sinkhorn options go to `unbalanced_sinkhorn`. With
    `gather_distributed`, the batches of all processes form one contrastive batch and one SIGROT plan (`gather_batch`,
    whose gradient contract holds). Every call also reports `plan_diagnostics` of the batch, with the loss's own plan
    (`clip` and `siglip` compute none: their diagnostics are the cosines alone).
    """

    def __init__(
        self,
        loss_type="clip_sigrot",
        contrastive_weight=0.1,
        ot_reg=0.05,
        ot_reg_m=0.5,
        ot_max_iter=200,
        ot_tol=1e-6,
        ot_check_every=10,
        graph_strategy="cross_modality",
        prior_temperature=None,
        detach_prior_scale=False,
        normalise_plan=False,
        detach_plan=False,
        gather_distributed=True,
    ):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {list(LOSS_TYPES)}")
        if graph_strategy not in GRAPH_STRATEGIES:
            raise ValueError(f"unknown graph_strategy {graph_strategy!r}; choose one of {GRAPH_STRATEGIES}")
        self.loss_type, self.kind, self.contrastive_weight = loss_type, LOSS_TYPES[loss_type], contrastive_weight
        self.graph_strategy, self.prior_temperature = graph_strategy, prior_temperature
        self.detach_prior_scale, self.normalise_plan = detach_prior_scale, normalise_plan
        self.gather_distributed = gather_distributed
        self.ot_options = {
            "reg": ot_reg,
            "reg_m": ot_reg_m,
            "max_iter": ot_max_iter,
            "tol": ot_tol,
            "check_every": ot_check_every,
        }
        self.detach_plan = detach_plan

    def forward(
        self,
        image_embeds,
        text_embeds,
        caption_image_index,
        scale,
        bias=None,
        teacher_image_embeds=None,
        teacher_text_embeds=None,
    ) -> LossOutput:
        """image_embeds (B, d) per unique image, text_embeds (N, d), caption_image_index (N,), `scale` the scale s
        (not its log), `bias` b (SigLIP types), teacher embeddings (B, d_t) and (N, d_t) (SIGROT types)."""
        kind = self.kind
        if kind.needs_teacher and (teacher_image_embeds is None or teacher_text_embeds is None):
            raise ValueError(f"loss_type {self.loss_type!r} needs teacher_image_embeds and teacher_text_embeds")
        if kind.needs_bias and bias is None:
            raise ValueError(f"loss_type {self.loss_type!r} needs a bias")
        if self.gather_distributed:
            image_embeds, text_embeds, caption_image_index, teacher_image_embeds, teacher_text_embeds = gather_batch(
                image_embeds, text_embeds, caption_image_index, teacher_image_embeds, teacher_text_embeds
            )
        check_caption_image_index(caption_image_index, image_embeds.shape[0], text_embeds.shape[0])
        return self._combine(
            image_embeds,
            text_embeds,
            caption_image_index,
            scale,
            bias if kind.needs_bias else None,
            teacher_image_embeds,
            teacher_text_embeds,
        )

    @full_precision
    def _combine(
        self, image_embeds, text_embeds, caption_image_index, scale, bias, teacher_image_embeds, teacher_text_embeds
    ):
        kind, batch = self.kind, (image_embeds, text_embeds, caption_image_index)
        plan = converged = None
        if kind.transport is not None:  # `clip` and `siglip` solve no transport problem
            with torch.set_grad_enabled(
                torch.is_grad_enabled() and kind.transport == "sigrot" and not self.detach_plan
            ):
                plan, converged = _caption_row_plan(*batch, **self.ot_options, return_converged=True)
        contrastive = sigrot = None
        if kind.transport == "uot":
            logits = caption_row_logits(*batch, scale, bias)
            contrastive = _uot_soft_target_of_plan(logits, plan, siglip=bias is not None)
        elif kind.contrastive is not None:
            contrastive = contrastive_loss(*batch, scale, bias)
        if kind.transport == "sigrot":
            graph = similarity_graph(teacher_image_embeds, teacher_text_embeds, batch[2], self.graph_strategy)
            if self.prior_temperature is not None:
                prior_scale = 1 / self.prior_temperature
            else:
                prior_scale = scale.detach() if self.detach_prior_scale else scale
            sigrot = sigrot_divergence(plan, graph, prior_scale, self.normalise_plan)

        if sigrot is None:
            loss = contrastive
        elif contrastive is None:
            loss = sigrot
        else:
            loss = sigrot + self.contrastive_weight * contrastive
        diagnostics = plan_diagnostics(*batch, plan)
        if converged is not None:
            diagnostics["sinkhorn_unconverged"] = loss.new_tensor(float(not converged)).detach()
        detached = [None if term is None else term.detach() for term in (contrastive, sigrot)]
        return LossOutput(loss, *detached, diagnostics=diagnostics)
