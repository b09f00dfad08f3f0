"""A small but real training setup (demo corpus, teacher file, small towers, trainer) for tests and the DDP worker."""

from pathlib import Path

import torch
import torch.nn.functional as F

from dataset_scripts import load_corpus
from dataset_scripts.teacher_embeddings import TeacherEmbeddings, corpus_fingerprint
from viclip_ot import small_towers
from viclip_ot.arguments import ViCLIPOTTrainingArguments
from viclip_ot.data import ContrastiveCollator
from viclip_ot.losses import ContrastiveOTLoss, LossSettings
from viclip_ot.small_towers import save_small_text_tower
from viclip_ot.trainer import ViCLIPOTTrainer


def demo_split(cache_dir, split="train", images=8):
    sizes = {"train_size": images, "validation_size": images, "test_size": images}
    return load_corpus("demo", split=split, cache_dir=str(cache_dir), image_size=32, **sizes)


def random_teacher(dataset, dimension=24, seed=0):
    """Teacher embeddings for `dataset` with random unit vectors (the file format and join are what is tested)."""
    generator = torch.Generator().manual_seed(seed)
    ids, captions = list(dataset["image_id"]), list(dataset["captions"])
    counts = torch.tensor([len(c) for c in captions])
    return TeacherEmbeddings(
        F.normalize(torch.randn(len(ids), dimension, generator=generator), dim=-1),
        F.normalize(torch.randn(int(counts.sum()), dimension, generator=generator), dim=-1),
        ids,
        counts,
        {"teacher": "random", "corpus_fingerprint": corpus_fingerprint(ids, captions)},
    )


def small_model(folder, captions, dropout=0.0, seed=0):
    """A small model whose text tower (and tokenizer) is saved in `folder/text`."""
    text_folder = Path(folder) / "text"
    if not text_folder.exists():
        save_small_text_tower(text_folder, captions, dropout=dropout)
    torch.manual_seed(seed)
    return small_towers.small_model(text_folder, vision_head_dropout=dropout)


def make_trainer(model, output_dir, train_dataset=None, teacher=None, loss_type="clip_sigrot", **training_args):
    args = ViCLIPOTTrainingArguments(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to="none",
        remove_unused_columns=False,
        per_device_train_batch_size=4,
        dataloader_num_workers=0,
        **training_args,
    )
    # The eval transform keeps batches identical however they are split (augmentation is not under test here).
    collator = ContrastiveCollator(model.processor, model.processor.image_processor.transform, teacher)
    trainer = ViCLIPOTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=collator,
        loss_fn=ContrastiveOTLoss(LossSettings(loss_type)),
    )
    trainer.current_gradient_accumulation_steps = 1
    return trainer, collator


def batch_loss(trainer, image_embeds, text_embeds, batch, scale, bias=None):
    """The loss the trainer is configured with (`trainer.loss_fn`) on these embeddings of `batch` and its teacher
    rows, with the logit `scale` and `bias`."""
    return trainer.loss_fn(
        image_embeds,
        text_embeds,
        batch["caption_image_index"],
        scale,
        bias,
        teacher_image_embeds=batch.get("teacher_image_embeds"),
        teacher_text_embeds=batch.get("teacher_text_embeds"),
    ).loss


def gradients(model):
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def tiny_demo_config(path, extra=""):
    """Write `configs/demo.yaml` shrunk to tiny towers and 16 test images (no validation) at `path`, plus the YAML
    lines `extra`; returns `path`."""
    repo = Path(__file__).resolve().parents[1]
    path.write_text(
        f"base: {repo / 'configs' / 'demo.yaml'}\ncorpus_options: {{test_size: 16, validation_size: 0}}\n"
        "image_size: 32\nvision_model_kwargs: {embed_dim: 32, depth: 1, num_heads: 2, patch_size: 8}\n"
        "small_text_tower_kwargs: {hidden_size: 32, num_heads: 2}\nper_device_train_batch_size: 8\n"
        "eval_split: null\n" + extra
    )
    return path
