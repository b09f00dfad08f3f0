"""SIGROT: the teacher's similarity graph over caption rows, and the generalised KL from its prior to a plan."""

import math

import torch
import torch.nn.functional as F

from modeling_viclip_ot import full_precision

GRAPH_STRATEGIES = ("cross_modality", "arithmetic_mean", "harmonic_mean", "caption_only", "image_only")


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


def rows_summing_to_one(matrix):
    """Each row of `matrix` divided by its sum (an empty row stays zero)."""
    return matrix / matrix.sum(dim=1, keepdim=True).clamp_min(torch.finfo(matrix.dtype).tiny)


def _generalised_kl(target, log_prior):
    """(1/N) sum_ij [T_ij (log T_ij - log G_ij - 1) + G_ij] for N x N T and log G, both logs clamped at the smallest
    normal float (so T log T -> 0 as T -> 0, and nothing is inf or NaN)."""
    tiny = torch.finfo(target.dtype).tiny
    log_prior = log_prior.clamp_min(math.log(tiny))
    terms = target * (target.clamp_min(tiny).log() - log_prior - 1) + log_prior.exp()
    return terms.sum() / target.shape[0]


@full_precision
def sigrot_divergence(plan, graph, prior_scale, normalise_plan=False):
    """L_SIGROT of an N x N plan T = N P* (`transport_plan`) and teacher graph S (`similarity_graph`), both directions:

        image->text: KL(T || row-softmax(s S)),   text->image: KL(T^T || row-softmax(s S^T)),
        KL(T || G) = (1/N) sum_ij [T_ij (log T_ij - log G_ij - 1) + G_ij];   loss = their mean,

    s = `prior_scale` (the model's scale in the paper, or 1 / a fixed temperature).

    `normalise_plan=True` divides each row of T (of T^T) by its sum first: the KL between the plan's row
    distributions and the prior's. The paper's generalised KL also prices the plan's mass, m log m - m + 1 per row of
    mass m times the row's shape mismatch: an empty plan costs only 1, so a plan that cannot match G's shape sheds mass
    (all costs up: anti-aligned modalities), and a full row needs every cost near 0 (all pairs similar). Normalised,
    the loss depends only on where each row's mass goes.

    The text->image plan is P*^T: the problem with cost C^T and equal uniform marginals is solved by P*^T, so one
    Sinkhorn run serves both. The five graphs are symmetric, so both directions share the prior G and differ only in
    T versus T^T; the terms coincide when the plan is symmetric (the authors' two terms are numerically identical).
    """
    image_to_text, text_to_image = (rows_summing_to_one(t) if normalise_plan else t for t in (plan, plan.T))
    image_to_text = _generalised_kl(image_to_text, F.log_softmax(prior_scale * graph, dim=1))
    text_to_image = _generalised_kl(text_to_image, F.log_softmax(prior_scale * graph.T, dim=1))
    return (image_to_text + text_to_image) / 2
