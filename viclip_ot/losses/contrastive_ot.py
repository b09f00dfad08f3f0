"""The training loss: the terms that a `loss_type` combines, on the batch of all processes, with the batch's
diagnostics."""

from dataclasses import dataclass, field

import torch
from torch import nn

from modeling_viclip_ot import caption_row_logits, check_caption_image_index, full_precision, same_image_mask

from .contrastive import contrastive_loss, uot_soft_target_loss
from .distributed import gather_batch
from .settings import LossSettings
from .sigrot import sigrot_divergence, similarity_graph
from .sinkhorn import transport_plan


@dataclass
class LossOutput:
    """`loss` to back-propagate; `contrastive` and `sigrot`, the terms it combines (None when unused), detached;
    `diagnostics`, detached 0-d tensors of the batch (`plan_diagnostics`, and, for the losses that solve a transport
    problem, `sinkhorn_unconverged` 1.0 / 0.0 when the plan's Sinkhorn stopped at `ot_max_iter` unconverged)."""

    loss: torch.Tensor
    contrastive: torch.Tensor | None = None
    sigrot: torch.Tensor | None = None
    diagnostics: dict = field(default_factory=dict)


@torch.no_grad()
@full_precision
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


class ContrastiveOTLoss(nn.Module):
    """The training loss of `settings` (a [`LossSettings`]), by its `loss_type`:

    - `clip`, `siglip`: the multi-positive CLIP / SigLIP loss L_con (`contrastive_loss`).
    - `clip_sigrot` (ViCLIP-OT), `siglip_sigrot` (ViSigLIP-OT): L_SIGROT + contrastive_weight * L_con, L_SIGROT the
      `sigrot_divergence` of the student's `transport_plan` (gradient through the iterations unless `detach_plan`)
      and the teacher's `similarity_graph`.
    - `sigrot`: L_SIGROT alone.
    - `clip_uot`, `siglip_uot`: `uot_soft_target_loss` of the student's plan (without gradient), reported as the
      contrastive term.

    SIGROT's prior scale is the model's scale (with its gradient, the paper's choice; `detach_prior_scale` stops that
    gradient) unless `prior_temperature` is set (scale 1 / temperature). With `gather_distributed`, the batches of all
    processes form one contrastive batch and one plan (`gather_batch`, whose gradient contract holds). Every call also
    reports `plan_diagnostics` of the batch, with the loss's own plan (`clip` and `siglip` solve no transport problem:
    their diagnostics are the cosines alone).
    """

    def __init__(self, settings: LossSettings | None = None, gather_distributed=True):
        super().__init__()
        self.settings = settings or LossSettings()
        self.gather_distributed = gather_distributed
        # the keyword arguments of `transport_plan`
        self.ot_options = {
            "reg": self.settings.ot_reg,
            "reg_m": self.settings.ot_reg_m,
            "max_iter": self.settings.ot_max_iter,
            "tol": self.settings.ot_tol,
            "check_every": self.settings.ot_check_every,
        }

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
        (not its log), `bias` b (used by the SigLIP types only), teacher embeddings (B, d_t) and (N, d_t) (SIGROT
        types)."""
        settings, kind = self.settings, self.settings.kind
        if kind.needs_teacher and (teacher_image_embeds is None or teacher_text_embeds is None):
            raise ValueError(f"loss_type {settings.loss_type!r} needs teacher_image_embeds and teacher_text_embeds")
        if kind.needs_bias and bias is None:
            raise ValueError(f"loss_type {settings.loss_type!r} needs a bias")
        if self.gather_distributed:
            image_embeds, text_embeds, caption_image_index, teacher_image_embeds, teacher_text_embeds = gather_batch(
                image_embeds, text_embeds, caption_image_index, teacher_image_embeds, teacher_text_embeds
            )
        check_caption_image_index(caption_image_index, image_embeds.shape[0], text_embeds.shape[0])
        batch, bias = (image_embeds, text_embeds, caption_image_index), bias if kind.needs_bias else None

        plan = converged = None
        if kind.transport is not None:
            plan_gradient = kind.transport == "sigrot" and not settings.detach_plan
            with torch.set_grad_enabled(torch.is_grad_enabled() and plan_gradient):
                plan, converged = transport_plan(*batch, **self.ot_options, return_converged=True)
        contrastive = sigrot = None
        if kind.transport == "uot":
            contrastive = uot_soft_target_loss(*batch, plan, scale, bias)
        elif kind.logit_loss is not None:
            contrastive = contrastive_loss(*batch, scale, bias)
        if kind.transport == "sigrot":
            graph = similarity_graph(
                teacher_image_embeds, teacher_text_embeds, caption_image_index, settings.graph_strategy
            )
            sigrot = sigrot_divergence(plan, graph, self.prior_scale(scale), settings.normalise_plan)

        if sigrot is None:
            loss = contrastive
        elif contrastive is None:
            loss = sigrot
        else:
            loss = sigrot + settings.contrastive_weight * contrastive
        diagnostics = plan_diagnostics(*batch, plan)
        if converged is not None:
            diagnostics["sinkhorn_unconverged"] = loss.new_tensor(float(not converged)).detach()
        detached = [None if term is None else term.detach() for term in (contrastive, sigrot)]
        return LossOutput(loss, *detached, diagnostics=diagnostics)

    def prior_scale(self, scale):
        """s of SIGROT's prior row-softmax(s S): 1 / `prior_temperature`, or the model's `scale` (detached under
        `detach_prior_scale`)."""
        if self.settings.prior_temperature is not None:
            return 1 / self.settings.prior_temperature
        return scale.detach() if self.settings.detach_prior_scale else scale
