"""Encoding a corpus split for retrieval evaluation, shared by the trainer's validation and `eval.py`."""

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass
class EncodedCorpus:
    """L2-normalised embeddings of every image and caption of a split, in row order."""

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    caption_image_index: torch.Tensor
    image_ids: list


def encode_corpus(encoder, dataset, batch_size=64, accelerator=None, show_progress_bar=True, desc="encoding"):
    """Embed a split (rows of `image`, `image_id`, `captions`) with anything that has `encode_image(images)` and
    `encode_text(texts)` returning normalised rows.

    With an `accelerate.Accelerator` of several processes, each encodes every k-th batch and all processes get
    the whole result.
    """
    world, rank = (accelerator.num_processes, accelerator.process_index) if accelerator else (1, 0)
    show = show_progress_bar and (accelerator is None or accelerator.is_local_main_process)
    starts = list(range(0, len(dataset), batch_size))
    mine = starts[rank::world]
    image_parts, text_parts = [], []
    for start in tqdm(mine, desc=desc, disable=not show, unit="batch"):
        rows = dataset[start : start + batch_size]
        image_parts.append(encoder.encode_image(rows["image"], batch_size=batch_size))
        text_parts.append(encoder.encode_text([c for captions in rows["captions"] for c in captions], batch_size=batch_size))
    if world > 1:
        from accelerate.utils import gather_object

        by_start = dict(gather_object(list(zip(mine, zip(image_parts, text_parts)))))
        image_parts = [by_start[start][0] for start in starts]
        text_parts = [by_start[start][1] for start in starts]
    columns = dataset.select_columns(["image_id", "captions"])
    counts = torch.tensor([len(captions) for captions in columns["captions"]])
    dim = image_parts[0].shape[1] if image_parts else 0
    return EncodedCorpus(
        image_embeds=torch.cat(image_parts) if image_parts else torch.empty(0, dim),
        text_embeds=torch.cat(text_parts) if text_parts else torch.empty(0, dim),
        caption_image_index=torch.repeat_interleave(torch.arange(len(counts)), counts),
        image_ids=list(columns["image_id"]),
    )


TABLE_COLUMNS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "avg_R", "alignment", "modality_gap")


def format_metrics_table(rows):
    """A Markdown table laid out like the paper's: one row per `{name: retrieval_metrics dict}` entry, recalls in
    percent (image->text, text->image, their average), then alignment and modality gap."""
    header = "| | " + " | ".join(TABLE_COLUMNS) + " |\n|---|" + "---:|" * len(TABLE_COLUMNS)
    lines = [header]
    for name, metrics in rows.items():
        cells = [f"{metrics[key]:.4f}" if key in ("alignment", "modality_gap") else f"{metrics[key]:.2f}" for key in TABLE_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
