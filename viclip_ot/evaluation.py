"""Retrieval evaluation shared by the trainer's validation and `eval.py`: encoding a corpus split, scoring it
(with bootstrap intervals) and the paper's evaluation sets."""

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from dataset_scripts import CorpusError, load_corpus

from .bootstrap import bootstrap_intervals
from .retrieval import retrieval_metrics


@dataclass
class EncodedCorpus:
    """L2-normalised embeddings of every image and caption of a split, in row order."""

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    caption_image_index: torch.Tensor


def encode_corpus(encoder, dataset, batch_size=64, accelerator=None, show_progress_bar=True, desc="encoding"):
    """Embed a split (rows of `image`, `image_id`, `captions`) with anything that has `encode_image(images)` and
    `encode_text(texts)` returning normalised rows.

    With an `accelerate.Accelerator` of several processes, each encodes its share of the batches
    (`split_between_processes`) and all processes get the whole result.
    """
    show = show_progress_bar and (accelerator is None or accelerator.is_local_main_process)
    starts = list(range(0, len(dataset), batch_size))
    with accelerator.split_between_processes(starts) if accelerator else nullcontext(starts) as mine:
        parts = []
        for start in tqdm(mine, desc=desc, disable=not show, unit="batch"):
            rows = dataset[start : start + batch_size]
            captions = [caption for row_captions in rows["captions"] for caption in row_captions]
            parts.append(
                (
                    encoder.encode_image(rows["image"], batch_size=batch_size),
                    encoder.encode_text(captions, batch_size=batch_size),
                )
            )
    if accelerator is not None and accelerator.num_processes > 1:
        parts = gather_object(parts)  # the processes' shares are consecutive: this is batch order
    counts = torch.tensor([len(captions) for captions in dataset.select_columns(["captions"])["captions"]])
    dim = parts[0][0].shape[1] if parts else 0
    return EncodedCorpus(
        image_embeds=torch.cat([images for images, _ in parts]) if parts else torch.empty(0, dim),
        text_embeds=torch.cat([texts for _, texts in parts]) if parts else torch.empty(0, dim),
        caption_image_index=torch.repeat_interleave(torch.arange(len(counts)), counts),
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
        *(
            EvalSet(f"KTVIC {split} (dedup)", "ktvic", str(root / "ktvic"), split, str(report))
            for split, report in reports.items()
        ),
        EvalSet("Crossmodal-3600 vi", "crossmodal3600", str(root / "crossmodal3600"), options={"language": "vi"}),
    ]
