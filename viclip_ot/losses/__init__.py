"""Training losses of ViCLIP-OT (the paper's equations), in the manner of open_clip's `loss.py`:

- `settings`: `LOSS_TYPES` (what each `loss_type` combines) and `LossSettings` (every option and its default);
- `sinkhorn`: the unbalanced Sinkhorn solver with its hand-written backward, and a batch's `transport_plan`;
- `sigrot`: the teacher's `similarity_graph` and `sigrot_divergence`;
- `contrastive`: the multi-positive CLIP/SigLIP `contrastive_loss` and the "+ UOT" `uot_soft_target_loss`;
- `distributed`: `gather_batch`, one batch from every process's;
- `contrastive_ot`: `ContrastiveOTLoss`, the training loss that composes them, and `plan_diagnostics`.

Conventions: a batch holds B unique images and N captions; `caption_image_index[k]` is the image of caption k, and
caption row k pairs caption k with that image, so every N x N matrix here (logits, costs, plans, graphs) is indexed
by caption rows: rows are the captions' images, columns the captions. Images are encoded once and expanded to rows
here. `scale` is the scale s itself (the model's `logit_scale` is its log), `bias` SigLIP's b. Every loss runs with
autocast off and its inputs upcast to float32 (float64 stays float64).
"""

from .contrastive import contrastive_loss, uot_soft_target_loss
from .contrastive_ot import ContrastiveOTLoss, LossOutput, plan_diagnostics
from .distributed import gather_batch
from .settings import LOSS_TYPES, LossSettings, LossType
from .sigrot import GRAPH_STRATEGIES, sigrot_divergence, similarity_graph
from .sinkhorn import transport_plan, unbalanced_sinkhorn

__all__ = [
    "GRAPH_STRATEGIES",
    "LOSS_TYPES",
    "ContrastiveOTLoss",
    "LossOutput",
    "LossSettings",
    "LossType",
    "contrastive_loss",
    "gather_batch",
    "plan_diagnostics",
    "sigrot_divergence",
    "similarity_graph",
    "transport_plan",
    "unbalanced_sinkhorn",
    "uot_soft_target_loss",
]
