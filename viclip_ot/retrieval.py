"""Image-text retrieval metrics: Recall@K, mean/median rank, alignment and modality gap.

This module imports only torch and numpy: the `evaluate` module `metrics/retrieval_recall` ships it as is.

Conventions (see `retrieval_metrics`):

* Scores are plain dot products of the embeddings as given, computed in float32 on the device of `image_embeds`.
  The embeddings are **not** normalised here: pass L2-normalised vectors (the model returns them) to rank by cosine
  similarity.
* Ranks are 1-based and **ties count against the query**: the rank of a correct item is 1 + the number of wrong
  candidates scoring greater than *or equal to* it. A collapsed model that gives every pair the same score
  therefore gets rank = number of candidates, not a perfect score.
* image->text: every image is a query; its rank is the rank of its best-scoring caption, i.e. 1 + the number of
  other images' captions scoring >= that caption. A hit at K means any of its captions is in the top K.
  text->image: every caption is a query with one correct image. Recalls are percentages; `avg_R` is the mean of
  all the recalls.
* Both directions are read off **one pass** over the captions x images score matrix, `chunk_size` captions at a
  time, so the full matrix never exists: a caption's text->image rank counts the images in its row scoring at
  least its image; an image's image->text rank counts, down its column, the captions scoring at least its best
  caption. Every comparison is between entries of that one matrix product: each image's best caption score is
  taken beforehand from small blocks of the same product, and an image whose block value differs from its entry
  in the pass (in the last bits: a different matrix shape can round differently) is re-ranked against its own row
  of scores, so ties are judged on the pass's own numbers either way.
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

CHUNK_SIZE = 1024  # captions scored against all images at once
BLOCK_SIZE = 64  # captions per block when reading each image's best caption score beforehand


class Ranks(NamedTuple):
    """1-based ranks (int64): `image_to_text` one per image, `text_to_image` one per caption; and
    `positive_scores`, each caption's score with its own image (float32)."""

    image_to_text: torch.Tensor
    text_to_image: torch.Tensor
    positive_scores: torch.Tensor


def check_embeddings(image_embeds, text_embeds, caption_image_index) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate a gallery and return it as float32 image and text embeddings and int64 caption -> image indices, all
    on the device of `image_embeds`; raises `ValueError` naming the problem."""
    x = torch.as_tensor(image_embeds)
    y = torch.as_tensor(text_embeds)
    idx = torch.as_tensor(caption_image_index)
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (rows, dim); got image {tuple(x.shape)}, text {tuple(y.shape)}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"embedding dims differ: image {x.shape[1]}, text {y.shape[1]}")
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("need at least one image and one caption")
    if idx.ndim != 1 or idx.shape[0] != y.shape[0]:
        raise ValueError(
            f"caption_image_index must have one entry per caption ({y.shape[0]}); got shape {tuple(idx.shape)}"
        )
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise ValueError(f"caption_image_index must hold integers, got {idx.dtype}")

    device = x.device
    x = x.to(device, torch.float32)
    y = y.to(device, torch.float32)
    idx = idx.to(device, torch.int64)
    n_images = x.shape[0]
    if idx.min() < 0 or idx.max() >= n_images:
        raise ValueError(
            f"caption_image_index values must lie in [0, {n_images}); got min {int(idx.min())}, max {int(idx.max())}"
        )
    captionless = (torch.bincount(idx, minlength=n_images) == 0).nonzero().squeeze(1)
    if len(captionless):
        raise ValueError(
            f"{len(captionless)} of {n_images} images have no caption, e.g. images {captionless[:10].tolist()}"
        )
    if not (torch.isfinite(x.sum()) and torch.isfinite(y.sum())):  # without a full-size mask
        raise ValueError("embeddings contain NaN or infinite values")
    return x, y, idx


def retrieval_ranks(image_embeds, text_embeds, caption_image_index, chunk_size: int = CHUNK_SIZE) -> Ranks:
    """Image->text and text->image ranks of a gallery (arguments as in `retrieval_metrics`), in one chunked pass
    over the captions x images score matrix; about 8 bytes x `chunk_size` x images of extra memory."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    x, y, idx = check_embeddings(image_embeds, text_embeds, caption_image_index)
    best = _best_caption_scores(x, y, idx, chunk_size)
    best_in_pass = torch.full_like(best, -torch.inf)
    at_or_above_best = torch.zeros_like(best)  # per image: captions scoring >= its best caption, its own included
    positives, text_to_image = [], []
    scores_buffer = y.new_empty(min(chunk_size, len(y)), len(x))  # reused: no allocator churn
    mask_buffer = torch.empty_like(scores_buffer)
    ones = scores_buffer.new_ones(len(scores_buffer))
    for start in range(0, len(y), chunk_size):
        stop = min(start + chunk_size, len(y))
        scores = torch.matmul(y[start:stop], x.T, out=scores_buffer[: stop - start])
        positive = scores.gather(1, idx[start:stop, None])
        best_in_pass.scatter_reduce_(0, idx[start:stop], positive[:, 0], "amax")
        # Comparing into a float buffer (1.0 / 0.0) and summing in float32 is exact below 2**24 rows or columns and
        # avoids the int64 copy that summing a bool mask makes; the column sums are a matrix-vector product.
        at_or_above_best.addmv_(torch.ge(scores, best, out=mask_buffer[: stop - start]).T, ones[: stop - start])
        text_to_image.append(scores.ge_(positive).sum(1).long())  # counts the correct image itself
        positives.append(positive[:, 0])
    positives = torch.cat(positives)
    own_at_best = torch.zeros_like(best).index_add_(0, idx, (positives >= best[idx]).float())
    image_to_text = 1 + (at_or_above_best - own_at_best).long()
    stale = (best_in_pass != best).nonzero().squeeze(1)
    if len(stale):
        image_to_text[stale] = _image_to_text_ranks(x, y, idx, stale, chunk_size)
    return Ranks(image_to_text, torch.cat(text_to_image), positives)


def retrieval_metrics(
    image_embeds, text_embeds, caption_image_index, ks: Sequence[int] = (1, 5, 10), *, chunk_size: int = CHUNK_SIZE
) -> dict[str, float]:
    """Retrieval metrics of a gallery of images and their captions.

    Args:
        image_embeds: (n_images, dim) tensor or array, one row per unique image.
        text_embeds: (n_captions, dim) tensor or array, one row per caption.
        caption_image_index: (n_captions,) integers; caption k describes image `caption_image_index[k]`. Every
            image needs at least one caption.
        ks: the K of Recall@K.
        chunk_size: captions scored against all images at once; scoring needs about 8 bytes x chunk size x images
            of extra memory.

    Returns:
        `i2t_R@K` and `t2i_R@K` for each K (percent), `avg_R`, `i2t_mean_rank`, `i2t_median_rank`,
        `t2i_mean_rank`, `t2i_median_rank` (the median of an even number of ranks is the mean of the middle two),
        and

        * `alignment`: mean over captions of x_i . y_k (i the caption's image);
        * `modality_gap`: || mean_k y_k - mean_k x_i ||, both means over caption rows (an image counts once per
          caption), as in the paper;
        * `alignment_per_image`: mean over images of the image's mean x_i . y_k over its captions (every image
          weighs the same);
        * `modality_gap_per_image`: || mean_i ybar_i - mean_i x_i ||, with ybar_i the mean embedding of image i's
          captions.
    """
    if not ks or any(not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    x, y, idx = check_embeddings(image_embeds, text_embeds, caption_image_index)
    ranks = retrieval_ranks(x, y, idx, chunk_size)
    directions = {"i2t": ranks.image_to_text.cpu().numpy(), "t2i": ranks.text_to_image.cpu().numpy()}
    out = {}
    for name, values in directions.items():
        for k in ks:
            out[f"{name}_R@{k}"] = 100.0 * float(np.mean(values <= k))
    out["avg_R"] = float(np.mean(list(out.values())))
    for name, values in directions.items():
        out[f"{name}_mean_rank"] = float(np.mean(values))
        out[f"{name}_median_rank"] = float(np.median(values))
    out.update(_alignment_and_gap(x, y, idx, ranks.positive_scores))
    return out


def _best_caption_scores(x, y, idx, chunk_size):
    """Each image's best caption score, from blocks of `BLOCK_SIZE` captions (grouped by image) against the few
    images they describe, in batched products no larger than a chunk of the pass: a small fraction of its work."""
    order = torch.argsort(idx, stable=True)
    sorted_idx = idx[order]
    grouped = y if torch.equal(sorted_idx, idx) else y[order]  # captions as `encode_corpus` lays them out: no copy
    best = torch.full((len(x),), -torch.inf, device=x.device)
    step = max(BLOCK_SIZE, chunk_size * len(x) // y.shape[1] // BLOCK_SIZE * BLOCK_SIZE)  # images gathered <= chunk
    for start in range(0, len(y), step):
        stop = min(start + step, len(y))
        full = start + (stop - start) // BLOCK_SIZE * BLOCK_SIZE
        for first_row, last_row, rows in ((start, full, BLOCK_SIZE), (full, stop, stop - full)):
            if last_row == first_row:
                continue
            images = sorted_idx[first_row:last_row].view(-1, rows)
            first = images[:, :1]
            window = (first + torch.arange(int((images[:, -1:] - first).max()) + 1, device=x.device)).clamp(
                max=len(x) - 1
            )
            scores = torch.bmm(grouped[first_row:last_row].view(-1, rows, y.shape[1]), x[window].transpose(1, 2))
            positive = scores.gather(2, (images - first)[:, :, None]).flatten()
            best.scatter_reduce_(0, images.flatten(), positive, "amax")
    return best


def _image_to_text_ranks(x, y, idx, images, chunk_size):
    """Image->text ranks of `images` from their rows of scores: 1 + #other images' captions scoring >= the best."""
    rows = max(1, chunk_size * len(x) // len(y))  # as much memory as a chunk of the pass
    position = torch.full((len(x),), -1, device=x.device)
    ranks = []
    for start in range(0, len(images), rows):
        chunk = images[start : start + rows]
        position[chunk] = torch.arange(len(chunk), device=x.device)
        captions = (position[idx] >= 0).nonzero().squeeze(1)
        row = position[idx[captions]]
        position[chunk] = -1
        scores = torch.matmul(x[chunk], y.T)
        positive = scores[row, captions]
        best = torch.full((len(chunk),), -torch.inf, device=x.device).scatter_reduce_(0, row, positive, "amax")
        own_at_best = torch.zeros(len(chunk), device=x.device).index_add_(0, row, (positive >= best[row]).float())
        ranks.append(1 + (scores.ge_(best[:, None]).sum(1) - own_at_best).long())
    return torch.cat(ranks)


def _alignment_and_gap(x, y, idx, positive_scores):
    """Alignment and modality gap, per caption row and per image (see `retrieval_metrics`), from the captions'
    scores with their images and two weighted sums of the caption embeddings."""
    n_captions = torch.bincount(idx, minlength=x.shape[0]).to(torch.float32)
    per_caption_weight = 1 / n_captions[idx]  # image i's captions share weight 1
    return {
        "alignment": float(positive_scores.mean()),
        "modality_gap": float(torch.linalg.vector_norm(y.mean(0) - (n_captions @ x) / len(idx))),
        "alignment_per_image": float((per_caption_weight * positive_scores).sum() / len(x)),
        "modality_gap_per_image": float(torch.linalg.vector_norm((per_caption_weight @ y) / len(x) - x.mean(0))),
    }


TABLE_COLUMNS = (
    "i2t_R@1",
    "i2t_R@5",
    "i2t_R@10",
    "t2i_R@1",
    "t2i_R@5",
    "t2i_R@10",
    "avg_R",
    "alignment",
    "modality_gap",
)


def format_metrics_table(rows: dict[str, dict]) -> str:
    """A Markdown table laid out like the paper's: one row per `{name: retrieval_metrics dict}` entry, recalls in
    percent (image->text, text->image, their average), then alignment and modality gap; a metric with a
    `<metric>_ci95` interval shows it as `value [low, high]`, a metric not measured as `-`."""
    header = "| | " + " | ".join(TABLE_COLUMNS) + " |\n|---|" + "---:|" * len(TABLE_COLUMNS)
    lines = [header]
    for name, metrics in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(metrics, key) for key in TABLE_COLUMNS) + " |")
    return "\n".join(lines)


def _cell(metrics, key):
    if key not in metrics:
        return "-"
    digits = 4 if key in ("alignment", "modality_gap") else 2
    cell = f"{metrics[key]:.{digits}f}"
    if f"{key}_ci95" in metrics:
        low, high = metrics[f"{key}_ci95"]
        cell += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return cell
