"""Retrieval evaluation shared by the trainer's validation and `eval.py`: encoding a corpus split, scoring it
(with bootstrap intervals), the paper's evaluation sets and its table layout."""

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dataset_scripts import CorpusError, load_corpus

from .bootstrap import bootstrap_intervals
from .metrics import retrieval_metrics


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


def evaluate_encoder(encoder, dataset, batch_size=64, accelerator=None, bootstrap=0, seed=0, desc="encoding"):
    """Encode `dataset` (in the accelerator's mixed precision) and score it: the `EncodedCorpus` and the
    `retrieval_metrics`, plus `<metric>_ci95` intervals from `bootstrap` resamples of the images."""
    with accelerator.autocast() if accelerator else nullcontext():
        encoded = encode_corpus(encoder, dataset, batch_size, accelerator, desc=desc)
    embeddings = (encoded.image_embeds, encoded.text_embeds, encoded.caption_image_index)
    metrics = retrieval_metrics(*embeddings)
    if bootstrap:
        metrics.update(bootstrap_intervals(*embeddings, samples=bootstrap, seed=seed))
    return encoded, metrics


@dataclass
class EvalSet:
    """A split to evaluate, as `load_corpus` reads it, and its row name in the results table."""

    name: str
    corpus: str
    data_dir: str | None = None
    split: str = "test"
    dedup_report: str | None = None
    options: dict = field(default_factory=dict)

    def load(self, cache_dir=None):
        return load_corpus(
            self.corpus, self.data_dir, self.split, cache_dir=cache_dir, dedup_report=self.dedup_report, **self.options
        )


def paper_suite(data_root, ktvic_train_dedup=None, ktvic_test_dedup=None) -> list[EvalSet]:
    """The paper's evaluation sets: UIT-OpenViIC test, KTVIC train and test without the near-duplicates of
    UIT-OpenViIC train, Crossmodal-3600 in Vietnamese. `data_root` holds the corpora as downloaded in
    `uit-openviic/`, `ktvic/` and `crossmodal3600/`, and the KTVIC reports of `python -m dataset_scripts.dedupe`
    in `dedup/ktvic-train.json` and `dedup/ktvic-test.json` unless given."""
    root = Path(data_root)
    reports = {
        "train": ktvic_train_dedup or root / "dedup" / "ktvic-train.json",
        "test": ktvic_test_dedup or root / "dedup" / "ktvic-test.json",
    }
    for split, report in reports.items():
        if not Path(report).is_file():
            raise CorpusError(
                f"the paper evaluates KTVIC {split} without the near-duplicates of UIT-OpenViIC train, but the report "
                f"{report} does not exist: make it with `python -m dataset_scripts.dedupe --reference-dir "
                f"{root / 'uit-openviic'} --target-corpus ktvic --target-dir {root / 'ktvic'} --target-split {split} "
                f"--model sscd_disc_mixup.torchscript.pt --output {report}`"
            )
    return [
        EvalSet("UIT-OpenViIC test", "uit-openviic", str(root / "uit-openviic")),
        *(EvalSet(f"KTVIC {split} (dedup)", "ktvic", str(root / "ktvic"), split, str(report))
          for split, report in reports.items()),
        EvalSet("Crossmodal-3600 vi", "crossmodal3600", str(root / "crossmodal3600"), options={"language": "vi"}),
    ]


TABLE_COLUMNS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "avg_R", "alignment", "modality_gap")


def format_metrics_table(rows):
    """A Markdown table laid out like the paper's: one row per `{name: retrieval_metrics dict}` entry, recalls in
    percent (image->text, text->image, their average), then alignment and modality gap; a metric with a
    `<metric>_ci95` interval shows it as `value [low, high]`."""
    header = "| | " + " | ".join(TABLE_COLUMNS) + " |\n|---|" + "---:|" * len(TABLE_COLUMNS)
    lines = [header]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(metrics, key) for key in TABLE_COLUMNS) + " |")
    return "\n".join(lines)


def _cell(metrics, key):
    digits = 4 if key in ("alignment", "modality_gap") else 2
    cell = f"{metrics[key]:.{digits}f}"
    if f"{key}_ci95" in metrics:
        low, high = metrics[f"{key}_ci95"]
        cell += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return cell
