"""Contrastive losses on the N x N caption-row logits: the multi-positive CLIP and SigLIP losses (`contrastive_loss`,
defined beside the model so that `model(return_loss=True)` computes them as remote code) and the "+ UOT" baselines,
which take a transport plan as soft targets. Each is SigLIP's sigmoid loss when given a `bias`, CLIP's softmax loss
otherwise."""

import torch.nn.functional as F

from modeling_viclip_ot import caption_row_logits, contrastive_loss, full_precision

from .sigrot import rows_summing_to_one

__all__ = ["contrastive_loss", "uot_soft_target_loss"]


@full_precision
def uot_soft_target_loss(image_embeds, text_embeds, caption_image_index, plan, scale, bias=None):
    """The "CLIP + UOT" (no `bias`) and "SigLIP + UOT" (with it) baselines: an N x N plan T (the student's own
    `transport_plan`, passed without gradient) as soft targets in place of the multi-positive ones, on the logits
    l_ij = s x_i . y_j (+ b) of caption rows.

      - CLIP + UOT: the mean of CE(row-softmax(l), T / row sums of T) and CE(row-softmax(l^T), T^T / row sums of T^T),
        CE(p, q) = -(1/N) sum_ij q_ij log p_ij.
      - SigLIP + UOT: (1/N) sum_ij [q_ij softplus(-l_ij) + (1 - q_ij) softplus(l_ij)], q = T clamped to [0, 1]: the
        sigmoid loss with soft labels (SigLIP's exactly when T is the identity of one caption per image).

    Args:
        image_embeds: (B, d) per unique image. text_embeds: (N, d). caption_image_index: (N,) long. plan: (N, N).
    """
    row_logits = caption_row_logits(image_embeds, text_embeds, caption_image_index, scale, bias)
    if bias is None:
        return (
            F.cross_entropy(row_logits, rows_summing_to_one(plan))
            + F.cross_entropy(row_logits.T, rows_summing_to_one(plan.T))
        ) / 2
    return F.binary_cross_entropy_with_logits(row_logits, plan.clamp(0, 1), reduction="sum") / row_logits.shape[0]
