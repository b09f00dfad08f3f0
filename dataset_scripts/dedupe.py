"""Near-duplicate removal (paper, Appendix B): drop evaluation images that copy a training image.

Both splits are embedded with an image descriptor: the SSCD TorchScript model the paper used
(`sscd_disc_mixup.torchscript.pt`; Resize([320, 320]), ImageNet mean/std) or any timm model. A
target image whose cosine similarity to some reference image is >= the threshold (default 0.8)
is a near-duplicate. The JSON report lists the removed ids with their best match and similarity;
`load_corpus(..., dedup_report=PATH)` applies it. Embeddings are cached per descriptor and built
split; similarities are computed a chunk of target rows at a time, never as one full matrix.

    python -m dataset_scripts.dedupe --reference-corpus uit-openviic --reference-dir data/uit-openviic \\
        --target-corpus ktvic --target-dir data/ktvic --target-split test \\
        --model sscd_disc_mixup.torchscript.pt --output reports/ktvic-test.json
"""

from __future__ import annotations

import argparse
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms
from tqdm.auto import tqdm

from viclip_ot.files import atomic_write

from ._common import CorpusError
from .loading import CORPORA, add_corpus_option_argument, canonical_split, load_corpus
from .report import FORMAT, ids_fingerprint, write_report

SSCD_IMAGE_SIZE = 320


@dataclass
class Descriptor:
    """An image-embedding model with its input transform; `identity` keys the embedding cache."""

    model: torch.nn.Module
    identity: str
    image_size: tuple[int, int]
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD

    def transform(self):
        return transforms.Compose(
            [transforms.Resize(list(self.image_size)), transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        )


def load_descriptor(model_path=None, timm_model=None, image_size=None, device="cpu", pretrained=True) -> Descriptor:
    """A TorchScript descriptor from `model_path` (ImageNet mean/std, default 320x320 input) or a
    timm model by name (its own mean/std and input size, pooled features: `num_classes=0`)."""
    if (model_path is None) == (timm_model is None):
        raise ValueError("give exactly one of a TorchScript model path and a timm model name")
    size = None if image_size is None else (image_size, image_size)
    if model_path is not None:
        stat = os.stat(model_path)
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format SSCD ships in
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(model_path), map_location=device)
        identity = f"torchscript:{os.path.abspath(model_path)}:{stat.st_size}:{stat.st_mtime_ns}"
        descriptor = Descriptor(model, identity, size or (SSCD_IMAGE_SIZE, SSCD_IMAGE_SIZE))
    else:
        model = timm.create_model(timm_model, pretrained=pretrained, num_classes=0)
        config = timm.data.resolve_model_data_config(model)
        identity = f"timm:{timm_model}:pretrained={pretrained}"
        descriptor = Descriptor(
            model, identity, size or tuple(config["input_size"][1:]), tuple(config["mean"]), tuple(config["std"])
        )
    descriptor.model.eval().to(device)
    return descriptor


class _Images(torch.utils.data.Dataset):
    def __init__(self, dataset: datasets.Dataset, transform):
        self.dataset, self.transform = dataset.select_columns(["image"]), transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.transform(self.dataset[index]["image"])


def embed(
    dataset: datasets.Dataset,
    descriptor: Descriptor,
    cache_dir,
    *,
    batch_size=64,
    num_workers=0,
    device="cpu",
    desc="embedding",
) -> np.ndarray:
    """L2-normalised float32 embeddings of `dataset`'s images, cached under `cache_dir`."""
    key = hashlib.sha256(
        f"{descriptor.identity}\0{descriptor.image_size}\0{dataset._fingerprint}".encode()
    ).hexdigest()[:24]
    cache_file = Path(cache_dir) / f"{key}.npy"
    if cache_file.is_file():
        return np.load(cache_file)
    loader = torch.utils.data.DataLoader(
        _Images(dataset, descriptor.transform()), batch_size=batch_size, num_workers=num_workers
    )
    chunks = []
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, unit="batch"):
            chunks.append(F.normalize(descriptor.model(batch.to(device)).float().flatten(1), dim=1).cpu().numpy())
    embeddings = np.concatenate(chunks)
    with atomic_write(cache_file) as temporary, open(temporary, "wb") as file:
        np.save(file, embeddings)
    return embeddings


def best_matches(
    target: np.ndarray, reference: np.ndarray, chunk_size=4096, device="cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """For each target row: the index of its most similar reference row and that cosine similarity.

    Works `chunk_size` target rows at a time (memory: chunk_size x len(reference) floats).
    """
    reference = torch.from_numpy(reference).to(device)
    indices, similarities = [], []
    for start in tqdm(range(0, len(target), chunk_size), desc="similarity", unit="chunk"):
        chunk = torch.from_numpy(target[start : start + chunk_size]).to(device)
        values, index = (chunk @ reference.T).max(dim=1)
        indices.append(index.cpu().numpy())
        similarities.append(values.cpu().numpy())
    return np.concatenate(indices), np.concatenate(similarities)


def make_report(target: dict, reference: dict, best_index, best_similarity, threshold: float, model: str) -> dict:
    """The report for `target` / `reference` (dicts with `corpus`, `split`, `dataset`)."""
    target_ids, reference_ids = list(target["dataset"]["image_id"]), list(reference["dataset"]["image_id"])
    caption_counts = [len(captions) for captions in target["dataset"]["captions"]]
    removed = np.flatnonzero(best_similarity >= threshold)
    removed_captions = sum(caption_counts[i] for i in removed)
    return {
        "format": FORMAT,
        "target": {
            "corpus": target["corpus"],
            "split": target["split"],
            "images": len(target_ids),
            "captions": sum(caption_counts),
            "ids_fingerprint": ids_fingerprint(target_ids),
        },
        "reference": {"corpus": reference["corpus"], "split": reference["split"], "images": len(reference_ids)},
        "model": model,
        "threshold": threshold,
        "counts": {
            "removed_images": len(removed),
            "removed_captions": removed_captions,
            "kept_images": len(target_ids) - len(removed),
            "kept_captions": sum(caption_counts) - removed_captions,
        },
        "removed": [
            {
                "image_id": target_ids[i],
                "match_id": reference_ids[best_index[i]],
                "similarity": round(float(best_similarity[i]), 6),
            }
            for i in removed
        ],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m dataset_scripts.dedupe", description=__doc__.split("\n\n")[0])
    for side, split in (("reference", "train"), ("target", None)):
        parser.add_argument(
            f"--{side}-corpus",
            choices=list(CORPORA),
            required=side == "target",
            default="uit-openviic" if side == "reference" else None,
        )
        parser.add_argument(f"--{side}-dir", help="the corpus folder as downloaded")
        parser.add_argument(f"--{side}-split", default=split, required=split is None)
        add_corpus_option_argument(parser, f"--{side}-option", "a corpus option, e.g. language=vi")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="TorchScript descriptor, e.g. sscd_disc_mixup.torchscript.pt")
    model.add_argument("--timm-model", help="a timm model name (pretrained weights) to use as the descriptor")
    parser.add_argument(
        "--image-size",
        type=int,
        help=f"square input side (default: {SSCD_IMAGE_SIZE} for TorchScript, the timm model's own)",
    )
    parser.add_argument(
        "--threshold", type=float, default=0.8, help="cosine similarity at or above which an image is removed"
    )
    parser.add_argument("--output", required=True, help="the JSON report to write")
    parser.add_argument("--cache-dir", help="cache for built corpora and embeddings (default: the datasets cache)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=4, help="image-decoding workers")
    parser.add_argument("--chunk-size", type=int, default=4096, help="target rows per similarity chunk")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    descriptor = load_descriptor(args.model, args.timm_model, args.image_size, args.device)
    embedding_cache = Path(args.cache_dir or datasets.config.HF_DATASETS_CACHE) / "viclip_ot_embeddings"
    sides = {}
    for side in ("reference", "target"):
        corpus, split = getattr(args, f"{side}_corpus"), canonical_split(getattr(args, f"{side}_split"))
        dataset = load_corpus(
            corpus,
            getattr(args, f"{side}_dir"),
            split,
            cache_dir=args.cache_dir,
            **dict(getattr(args, f"{side}_option")),
        )
        if len(dataset) == 0:
            raise CorpusError(f"{corpus} {split} has no images to compare")
        sides[side] = {"corpus": corpus, "split": split, "dataset": dataset}
        sides[side]["embeddings"] = embed(
            dataset,
            descriptor,
            embedding_cache,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=args.device,
            desc=f"embedding {corpus} {split}",
        )
    best_index, best_similarity = best_matches(
        sides["target"]["embeddings"], sides["reference"]["embeddings"], args.chunk_size, args.device
    )
    report = make_report(
        sides["target"], sides["reference"], best_index, best_similarity, args.threshold, args.model or args.timm_model
    )
    write_report(report, args.output)
    counts = report["counts"]
    print(
        f"{report['target']['corpus']} {report['target']['split']}: {counts['removed_images']} of "
        f"{report['target']['images']} "
        f"images ({counts['removed_captions']} captions) are near-duplicates of {report['reference']['corpus']} "
        f"{report['reference']['split']}; "
        f"kept {counts['kept_images']} images / {counts['kept_captions']} captions. Report: {args.output}"
    )
    return report


if __name__ == "__main__":
    from viclip_ot.cli import run

    run(main, prog="python -m dataset_scripts.dedupe")
