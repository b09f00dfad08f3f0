"""`ViCLIPOTTrainer`: transformers' Trainer with the hybrid SIGROT loss, gradient caching, two learning rates,
retrieval validation and Hub checkpoints that load as remote-code models."""

import contextlib
import math
import shutil
from collections import defaultdict
from pathlib import Path

import torch
from timm.models import group_parameters
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SchedulerType
from transformers.utils import logging

from .data import gradcache_chunks
from .evaluation import encode_corpus
from .gradcache import cached_backward
from .model_card import write_model_card
from .retrieval import retrieval_metrics

HEAD_PARAMETERS = ("vision_head.", "text_projection.", "logit_scale", "logit_bias")
# Files of a checkpoint folder that are training state, not part of the model a user loads.
TRAINING_STATE_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin", "rng_state")
# A logging interval after the first epoch is "collapsing" when its matched pairs are anti-aligned, all pairs are
# similar (matched hardly above unmatched, unmatched well above an untrained model's 0), or the transport plan holds
# less mass than an untrained model's (about 0.4 for the paper's eps and tau, all cosines near 0).
COLLAPSE_MIN_MATCHED_COSINE = 0.0
COLLAPSE_MIN_COSINE_MARGIN = 0.05
COLLAPSE_MAX_UNMATCHED_COSINE = 0.3
COLLAPSE_MIN_PLAN_ROW_MASS = 0.3

logger = logging.get_logger(__name__)


def collapse_signs(diagnostics):
    """The collapse criteria that the mean `diagnostics` of a logging interval meet, as readable phrases."""
    signs = []
    matched, unmatched = diagnostics.get("matched_cosine"), diagnostics.get("unmatched_cosine")
    if matched is not None and matched < COLLAPSE_MIN_MATCHED_COSINE:
        signs.append(f"matched pairs are anti-aligned (mean cosine {matched:.2f})")
    if (
        matched is not None
        and unmatched is not None
        and matched - unmatched < COLLAPSE_MIN_COSINE_MARGIN
        and unmatched > COLLAPSE_MAX_UNMATCHED_COSINE
    ):
        signs.append(f"all pairs are about as similar (mean cosines {matched:.2f} matched, {unmatched:.2f} unmatched)")
    mass = diagnostics.get("plan_row_mass")
    if mass is not None and mass < COLLAPSE_MIN_PLAN_ROW_MASS:
        signs.append(f"the transport plan shed its mass (mean row mass {mass:.2f})")
    return signs


class LogitScaleClamp(TrainerCallback):
    """Keep the logit scale within the config's bounds after every optimizer step."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        model.clamp_logit_scale()


class CompleteHubPush(TrainerCallback):
    """Before a checkpoint is pushed, put its whole loadable model (code, processor, card, sentence-transformers
    files) in the pushed folder: transformers copies only the weights and the config there."""

    def on_push_begin(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not state.is_world_process_zero or not checkpoint.is_dir():
            return
        for path in checkpoint.iterdir():
            if path.name.startswith(TRAINING_STATE_FILES):
                continue
            target = Path(args.output_dir) / path.name
            if path.is_dir():
                shutil.copytree(path, target, dirs_exist_ok=True)
            else:
                shutil.copy2(path, target)


class AugmentationEpoch(TrainerCallback):
    """Tell the collator which epoch it is collating, so that every epoch augments differently."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)


def freeze(model, image_blocks=0, text_tower=False):
    """Freeze the image tower's stem and first `image_blocks` layer groups, and/or the whole text tower.

    The groups are timm's `group_matcher` of the tower (as open_clip's `lock`): group 0 is the stem (a ViT's patch
    embedding and prefix tokens), then a ViT's blocks, a ConvNeXt's blocks with their downsampling, and so on, so it
    works for any timm tower.
    """
    if image_blocks:
        vision = model.vision_model
        groups = group_parameters(vision, vision.group_matcher())
        for group in range(min(image_blocks, max(groups)) + 1):
            for name in groups.get(group, ()):
                vision.get_parameter(name).requires_grad_(False)
    if text_tower:
        model.text_model.requires_grad_(False)


class ViCLIPOTTrainer(Trainer):
    """Trains a [`ViCLIPOTModel`] with `loss_fn` (a `viclip_ot.losses.ContrastiveOTLoss`).

    A contrastive batch is `per_device_train_batch_size` images with all their captions on every process, gathered
    into one batch across processes; each gradient-accumulation step is its own contrastive batch. With
    `gradcache_chunk_size`, the batch is encoded in chunks with cached gradients (`viclip_ot.gradcache`).
    """

    def __init__(self, *args, loss_fn, eval_dataset_name=None, training_config=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.eval_dataset_name = eval_dataset_name
        self.training_config = training_config or {}
        self._loss_sums, self._loss_counts = {}, defaultdict(int)
        self.add_callback(LogitScaleClamp())
        self.add_callback(CompleteHubPush())
        if hasattr(self.data_collator, "epoch"):
            self.add_callback(AugmentationEpoch(self.data_collator))

    # ---- loss ------------------------------------------------------------------------------------------------

    def _batch_loss(self, image_embeds, text_embeds, inputs, scale, bias):
        """The configured loss of the contrastive batch spanning all processes, with the `scale` and `bias` of the
        model's forward output; its terms and diagnostics are summed for the next log."""
        result = self.loss_fn(
            image_embeds,
            text_embeds,
            inputs["caption_image_index"],
            scale,
            bias,
            teacher_image_embeds=inputs.get("teacher_image_embeds"),
            teacher_text_embeds=inputs.get("teacher_text_embeds"),
        )
        terms = {f"loss_{name}": getattr(result, name) for name in ("contrastive", "sigrot")}
        for name, value in {**terms, **result.diagnostics}.items():
            if value is not None:  # summed as tensors: read once per log (`log`), not synchronised every step
                self._loss_sums[name] = self._loss_sums.get(name, 0) + value.detach().float()
                self._loss_counts[name] += 1
        return result.loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**self._model_inputs(inputs), return_logits=False)
        loss = self._batch_loss(outputs.image_embeds, outputs.text_embeds, inputs, outputs.scale, outputs.bias)
        return (loss, outputs) if return_outputs else loss

    @staticmethod
    def _model_inputs(inputs):
        return {name: inputs[name] for name in ("pixel_values", "input_ids", "attention_mask")}

    def training_step(self, model, inputs, num_items_in_batch=None):
        chunk_size = self.args.gradcache_chunk_size
        if not chunk_size or chunk_size >= inputs["pixel_values"].shape[0]:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)

        def encode(chunk):
            with self.compute_loss_context_manager():
                outputs = model(**chunk, return_logits=False)
            return outputs.image_embeds, outputs.text_embeds, outputs.scale, outputs.bias

        chunks, caption_order = gradcache_chunks(inputs, chunk_size)

        def loss_fn(cached):
            image_embeds = torch.cat([outputs[0] for outputs in cached])
            text_embeds = torch.cat([outputs[1] for outputs in cached])[caption_order.argsort()]
            scale, bias = cached[-1][2:]  # the last chunk's: its backward is the one DDP synchronises
            loss = self._batch_loss(image_embeds, text_embeds, inputs, scale, bias)
            return loss / self.current_gradient_accumulation_steps, None

        loss, _ = cached_backward(
            encode,
            chunks,
            loss_fn,
            backward=self.accelerator.backward,
            no_sync=model.no_sync if hasattr(model, "no_sync") else contextlib.nullcontext,
        )
        return loss

    def log(self, logs, start_time=None):
        """Training logs also carry, as means since the last log, the loss terms and the batch diagnostics (plan row
        mass, matched and unmatched cosine, the rate of unconverged Sinkhorn runs), and the current scale; a
        collapsing run (`collapse_signs`, after the first epoch) and unconverged Sinkhorn runs get a warning."""
        if "loss" in logs and self._loss_counts:
            totals = torch.stack(list(self._loss_sums.values())).tolist()  # one host synchronisation per log
            means = {name: total / self._loss_counts[name] for name, total in zip(self._loss_sums, totals)}
            self._loss_sums.clear()
            self._loss_counts.clear()
            logs.update(means)
            logs["scale"] = float(self.accelerator.unwrap_model(self.model).logit_scale.detach().exp())
            step = f"step {self.state.global_step}"
            if means.get("sinkhorn_unconverged"):
                logger.warning(
                    f"{step}: Sinkhorn stopped at ot_max_iter={self.loss_fn.ot_options['max_iter']} unconverged in "
                    f"{means['sinkhorn_unconverged']:.0%} of the batches; raise ot_max_iter or ot_reg (see the "
                    "README's safe Sinkhorn settings)"
                )
            signs = collapse_signs(means) if (self.state.epoch or 0) >= 1 else []
            if signs:
                logger.warning(f"{step}: the embedding space looks collapsed: {'; '.join(signs)}")
        super().log(logs, start_time)

    # ---- optimisation ----------------------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        """AdamW-style groups: backbones at `learning_rate`, heads/scale/bias at `head_learning_rate`; no weight
        decay on biases, norms, tokens, the logit scale and bias."""
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        tokens = getattr(model.vision_model, "no_weight_decay", set)()  # timm's list (cls/register tokens, ...)
        no_decay = {f"vision_model.{name}" for name in tokens}
        groups = defaultdict(list)
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            is_head = name.startswith(HEAD_PARAMETERS)
            decays = parameter.ndim >= 2 and name not in no_decay and not name.startswith(("logit_scale", "logit_bias"))
            groups[is_head, decays].append(parameter)
        param_groups = [
            {
                "params": params,
                "lr": self.args.head_learning_rate if is_head else self.args.learning_rate,
                "weight_decay": self.args.weight_decay if decays else 0.0,
            }
            for (is_head, decays), params in groups.items()
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps, optimizer=None):
        """`cosine`: linear warm-up from `warmup_start_factor` of each group's lr, then cosine decay to zero."""
        if self.lr_scheduler is not None or self.args.lr_scheduler_type != SchedulerType.COSINE:
            return super().create_scheduler(num_training_steps, optimizer)
        warmup = self.args.get_warmup_steps(num_training_steps)
        start = self.args.warmup_start_factor

        def factor(step):
            if step < warmup:
                return start + (1 - start) * step / warmup
            progress = min(1.0, (step - warmup) / max(1, num_training_steps - warmup))
            return 0.5 * (1 + math.cos(math.pi * progress))

        # Lives as long as this Trainer: transformers re-creates on a later `train()` only the schedulers it made
        # itself (a private flag, no public hook), which does not matter for train.py's single `train()`.
        self.lr_scheduler = LambdaLR(optimizer or self.optimizer, factor)
        return self.lr_scheduler

    # ---- evaluation ------------------------------------------------------------------------------------------

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """Retrieval metrics (Recall@K both ways, ranks, alignment, modality gap) of the validation split."""
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        model = self.accelerator.unwrap_model(self.model)
        with self.accelerator.autocast():
            encoded = encode_corpus(
                model,
                dataset,
                batch_size=self.args.per_device_eval_batch_size,
                accelerator=self.accelerator,
                desc=f"{metric_key_prefix}: encoding",
            )
        metrics = retrieval_metrics(encoded.image_embeds, encoded.text_embeds, encoded.caption_image_index)
        metrics = {f"{metric_key_prefix}_{key}": float(value) for key, value in metrics.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ---- saving and the Hub ----------------------------------------------------------------------------------

    def save_model(self, output_dir=None, _internal_call=False):
        """Save the model (weights, config, code, processor, sentence-transformers files) and its model card."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            self.write_model_card(output_dir or self.args.output_dir)

    def write_model_card(self, folder):
        model = self.accelerator.unwrap_model(self.model)
        evaluations = [entry for entry in self.state.log_history if "eval_t2i_R@1" in entry]
        results = None
        if evaluations:
            results = {
                key.removeprefix("eval_"): value for key, value in evaluations[-1].items() if key.startswith("eval_")
            }
        write_model_card(
            folder,
            model.config,
            repo_id=self.hub_model_id if self.args.push_to_hub else None,
            model_name=Path(self.hub_model_id if self.args.push_to_hub else self.args.output_dir).name,
            results=results,
            dataset_name=self.eval_dataset_name,
            split="validation",
            training_config=self.training_config,
            base_models=self.training_config.get("base_models", ()),
        )

    def create_model_card(self, *args, **kwargs):
        if self.is_world_process_zero():
            self.write_model_card(self.args.output_dir)
