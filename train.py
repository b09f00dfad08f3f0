"""Train ViCLIP-OT: `accelerate launch train.py configs/<name>.yaml [--field value ...]`.

The YAML gives model, data, loss and `TrainingArguments` fields (see `viclip_ot/arguments.py`); flags override it.
"""

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import set_seed

from dataset_scripts import load_corpus
from dataset_scripts.teacher_embeddings import TeacherEmbeddings
from modeling_viclip_ot import ViCLIPOTModel
from viclip_ot.arguments import parse_arguments
from viclip_ot.cli import run
from viclip_ot.data import ContrastiveCollator, train_transform
from viclip_ot.loading import load_model
from viclip_ot.losses import ContrastiveOTLoss
from viclip_ot.retrieval import format_metrics_table
from viclip_ot.small_towers import save_small_text_tower, small_image_tower_kwargs, small_model
from viclip_ot.trainer import ViCLIPOTTrainer, freeze


def load_split(data, split, limit=None):
    dataset = load_corpus(data.dataset, data.data_dir, split=split, **data.corpus_options)
    return dataset.select(range(min(limit, len(dataset)))) if limit else dataset


def build_model(model_args, train_dataset, output_dir):
    """A saved model to continue from, small random towers (demo), or the pretrained towers of the config."""
    if model_args.model_name_or_path:
        return load_model(model_args.model_name_or_path)
    if not model_args.small_towers:
        return ViCLIPOTModel.from_towers(
            model_args.vision_tower,
            model_args.text_tower,
            crop_size=model_args.image_size,
            word_segmentation=model_args.word_segmentation,
            **model_args.config_kwargs(),
        )
    captions = [caption for captions in train_dataset["captions"] for caption in captions]
    text_folder = save_small_text_tower(
        Path(output_dir) / "small_text_tower", captions, **model_args.small_text_tower_kwargs
    )
    overrides = model_args.config_kwargs()
    overrides["vision_model_kwargs"] = {
        **small_image_tower_kwargs(image_size=model_args.image_size),
        **overrides["vision_model_kwargs"],
    }
    return small_model(text_folder, image_size=model_args.image_size, **overrides)


DIAGNOSTICS = ("plan_row_mass", "matched_cosine", "unmatched_cosine", "sinkhorn_unconverged")


def main(argv, callbacks=()) -> dict:
    """Train, save `final/`, and return the test metrics before and after training (when there is a test split) and
    `last training diagnostics`, the training batches' diagnostics of the last logging interval; `callbacks`: more
    `TrainerCallback`s for the trainer."""
    model_args, data_args, loss_args, training_args = parse_arguments(argv)
    set_seed(training_args.seed)

    train_dataset = load_split(data_args, data_args.train_split, data_args.max_train_images)
    eval_dataset = (
        load_split(data_args, data_args.eval_split, data_args.max_eval_images) if data_args.eval_split else None
    )
    test_dataset = load_split(data_args, data_args.test_split) if data_args.test_split else None

    teacher = None
    if loss_args.kind.needs_teacher:
        if not data_args.teacher_embeddings:
            raise ValueError(
                f"loss_type={loss_args.loss_type} needs --teacher_embeddings (see "
                f"dataset_scripts/teacher_embeddings.py)"
            )
        teacher = TeacherEmbeddings.load(data_args.teacher_embeddings)
        teacher.check_corpus(train_dataset)

    model = build_model(model_args, train_dataset, training_args.output_dir)
    loss_args.check_model(model.config)
    freeze(model, training_args.freeze_image_blocks, training_args.freeze_text_tower)
    augment = train_transform(model.processor.image_processor, data_args.horizontal_flip)
    collator = ContrastiveCollator(model.processor, augment, teacher, seed=training_args.seed)
    training_config = {
        **asdict(model_args),
        **asdict(data_args),
        **asdict(loss_args),
        "base_models": [model_args.vision_tower, model_args.text_tower] if not model_args.small_towers else [],
    }
    trainer = ViCLIPOTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        loss_fn=ContrastiveOTLoss(loss_args),
        eval_dataset_name=data_args.dataset,
        training_config=training_config,
        callbacks=list(callbacks),
    )

    results = {}
    if test_dataset is not None:
        results["before training"] = trainer.evaluate(test_dataset, metric_key_prefix="test")
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    final_dir = Path(training_args.output_dir) / "final"
    trainer.save_model(str(final_dir))
    if test_dataset is not None:
        results["after training"] = trainer.evaluate(test_dataset, metric_key_prefix="test")
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="End of training")
    logged = [entry for entry in trainer.state.log_history if "plan_row_mass" in entry]
    diagnostics = {name: logged[-1][name] for name in DIAGNOSTICS if logged and name in logged[-1]}
    if trainer.is_world_process_zero():
        if diagnostics:
            print("\nlast training diagnostics: " + ", ".join(f"{k} {v:.3f}" for k, v in diagnostics.items()))
        if results:
            table = format_metrics_table(
                {name: {k[5:]: v for k, v in metrics.items()} for name, metrics in results.items()}
            )
            print(f"\n{data_args.dataset} {data_args.test_split} ({len(test_dataset)} images):\n{table}")
            # float reductions depend on the thread count: a run is reproducible for a given one
            threads = {"torch_threads": torch.get_num_threads()}
            print(f"torch threads: {threads['torch_threads']}")
            (final_dir / "results.json").write_text(json.dumps({**results, **threads}, indent=2))
        print(f"\nmodel saved to {final_dir}")
    return {**results, "last training diagnostics": diagnostics}


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    run(main, sys.argv[1:], "train.py")
