"""The loss settings: what each `loss_type` combines, and one dataclass of every option with its default (the paper's
loss), read by `train.py`'s command line and YAML configs, by the ablation rows and by `ContrastiveOTLoss`."""

import inspect
from dataclasses import dataclass, field

from .sigrot import GRAPH_STRATEGIES
from .sinkhorn import unbalanced_sinkhorn


@dataclass(frozen=True)
class LossType:
    """What a `loss_type` combines: `logit_loss` "clip" (softmax), "siglip" (sigmoid, with the model's logit bias) or
    None; `transport` "sigrot" (needs a teacher), "uot" (the student's own plan as soft targets of the logit loss, in
    place of the multi-positive ones) or None."""

    logit_loss: str | None
    transport: str | None
    description: str

    @property
    def needs_teacher(self) -> bool:
        return self.transport == "sigrot"

    @property
    def needs_bias(self) -> bool:
        return self.logit_loss == "siglip"


LOSS_TYPES = {
    "clip": LossType("clip", None, "multi-positive CLIP loss"),
    "siglip": LossType("siglip", None, "multi-positive SigLIP loss"),
    "clip_sigrot": LossType("clip", "sigrot", "ViCLIP-OT: L_SIGROT + lambda L_CLIP"),
    "siglip_sigrot": LossType("siglip", "sigrot", "ViSigLIP-OT: L_SIGROT + lambda L_SigLIP"),
    "sigrot": LossType(None, "sigrot", "L_SIGROT alone"),
    "clip_uot": LossType("clip", "uot", "CLIP with the student's UOT plan as soft targets"),
    "siglip_uot": LossType("siglip", "uot", "SigLIP with the student's UOT plan as soft targets"),
}
# the solver's own defaults are the training's
_SOLVER_DEFAULTS = {
    name: parameter.default for name, parameter in inspect.signature(unbalanced_sinkhorn).parameters.items()
}


@dataclass(frozen=True)
class LossSettings:
    """The options of the training loss; the defaults are the paper's ViCLIP-OT loss (see `ContrastiveOTLoss`)."""

    loss_type: str = field(
        default="clip_sigrot",
        metadata={
            "help": "; ".join(f"{name}: {kind.description}" for name, kind in LOSS_TYPES.items()),
            "choices": list(LOSS_TYPES),
        },
    )
    contrastive_weight: float = field(default=0.1, metadata={"help": "lambda in L_SIGROT + lambda * L_contrastive."})
    ot_reg: float = field(default=0.05, metadata={"help": "Entropic regularisation eps."})
    ot_reg_m: float = field(default=0.5, metadata={"help": "Marginal relaxation tau (inf: balanced OT)."})
    ot_max_iter: int = field(
        default=_SOLVER_DEFAULTS["max_iter"],
        metadata={"help": "Sinkhorn iterations at most (a run stopping here unconverged is logged)."},
    )
    ot_tol: float | None = field(
        default=_SOLVER_DEFAULTS["tol"], metadata={"help": "Sinkhorn tolerance (POT's criterion)."}
    )
    ot_check_every: int = field(
        default=_SOLVER_DEFAULTS["check_every"], metadata={"help": "Sinkhorn iterations between convergence checks."}
    )
    graph_strategy: str = field(
        default="cross_modality", metadata={"help": "Teacher similarity graph.", "choices": list(GRAPH_STRATEGIES)}
    )
    prior_temperature: float | None = field(
        default=None, metadata={"help": "Fixed temperature of the prior (default: the model's learnable scale)."}
    )
    detach_prior_scale: bool = field(
        default=False, metadata={"help": "The prior uses the model's scale without passing SIGROT's gradient to it."}
    )
    normalise_plan: bool = field(
        default=False,
        metadata={
            "help": "KL between the row-normalised plan and the prior (default: the paper's generalised KL of "
            "the plan itself, which an empty or full plan can game)."
        },
    )
    detach_plan: bool = field(default=False, metadata={"help": "Stop gradients through the Sinkhorn iterations."})

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {self.loss_type!r}; choose one of {list(LOSS_TYPES)}")
        if self.graph_strategy not in GRAPH_STRATEGIES:
            raise ValueError(f"unknown graph_strategy {self.graph_strategy!r}; choose one of {GRAPH_STRATEGIES}")

    @property
    def kind(self) -> LossType:
        return LOSS_TYPES[self.loss_type]

    def check_model(self, config):
        """Raise unless the model suits the loss: a SigLIP loss trains a model with a logit bias, a CLIP loss one
        without, so that `model(return_loss=True)` (SigLIP exactly when the model has a logit bias) computes the
        training's contrastive loss."""
        has_bias = config.logit_bias_init_value is not None
        if self.kind.logit_loss is not None and self.kind.needs_bias != has_bias:
            raise ValueError(
                f"loss_type {self.loss_type!r} trains a {'SigLIP' if self.kind.needs_bias else 'CLIP'} model, but the "
                f"model {'has' if has_bias else 'has no'} logit bias: "
                + (
                    "set logit_bias_init_value (e.g. -10)"
                    if self.kind.needs_bias
                    else "leave logit_bias_init_value unset"
                )
            )
