"""Image-text retrieval metrics: Recall@K, mean/median rank, alignment and modality gap.

Conventions (see ``retrieval_metrics``):

* Scores are plain dot products of the embeddings as given, computed in float32 on the
  device of ``image_embeds``. The embeddings are **not** normalised here: pass
  L2-normalised vectors (the model already returns them) to rank by cosine similarity.
* Ranks are 1-based and **ties count against the query**: the rank of a correct item is
  1 + the number of wrong candidates scoring greater than *or equal to* it. A collapsed
  model that gives every pair the same score therefore gets rank = number of candidates,
  not a perfect score.
* image->text: every image is a query; its rank is the rank of its best-scoring caption,
  i.e. 1 + the number of other images' captions scoring >= that caption. A hit at K means
  any of its captions is in the top K. text->image: every caption is a query with one
  correct image. Recalls are percentages; ``avg_R`` is the mean of all the recalls.
* Scoring runs in chunks (``image_chunk_size`` images against all captions, then
  ``text_chunk_size`` captions against all images), so the full captions x images matrix
  never exists. A query's scores all come from one row of one matrix product, so ties are
  judged consistently, and chunked and unchunked results agree (bit for bit in the tests and
  in ``benchmarks/eval_scoring.py``).
"""

from collections.abc import Sequence

import numpy as np
import torch


def retrieval_metrics(
    image_embeds,
    text_embeds,
    caption_image_index,
    ks: Sequence[int] = (1, 5, 10),
    *,
    image_chunk_size: int = 256,
    text_chunk_size: int = 1024,
) -> dict[str, float]:
    """Retrieval metrics of a gallery of images and their captions.

    Args:
        image_embeds: (n_images, dim) tensor or array, one row per unique image.
        text_embeds: (n_captions, dim) tensor or array, one row per caption.
        caption_image_index: (n_captions,) integers; caption k describes image
            ``caption_image_index[k]``. Every image needs at least one caption.
        ks: the K of Recall@K.
        image_chunk_size: images scored against all captions at once (image->text).
        text_chunk_size: captions scored against all images at once (text->image).
            Scoring needs about 4 bytes x chunk size x gallery size of extra memory.

    Returns:
        ``i2t_R@K`` and ``t2i_R@K`` for each K (percent), ``avg_R``, ``i2t_mean_rank``,
        ``i2t_median_rank``, ``t2i_mean_rank``, ``t2i_median_rank`` (the median of an even
        number of ranks is the mean of the middle two), and

        * ``alignment``: mean over captions of x_i . y_k (i the caption's image);
        * ``modality_gap``: || mean_k y_k - mean_k x_i ||, both means over caption rows
          (an image counts once per caption), as in the paper;
        * ``alignment_per_image``: mean over images of the image's mean x_i . y_k over its
          captions (every image weighs the same);
        * ``modality_gap_per_image``: || mean_i ybar_i - mean_i x_i ||, with ybar_i the
          mean embedding of image i's captions.
    """
    x, y, idx = _validated(image_embeds, text_embeds, caption_image_index, ks)
    if image_chunk_size < 1 or text_chunk_size < 1:
        raise ValueError("chunk sizes must be positive")
    i2t = _image_to_text_ranks(x, y, idx, image_chunk_size).cpu().numpy()
    t2i = _text_to_image_ranks(x, y, idx, text_chunk_size).cpu().numpy()

    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_R@{k}"] = 100.0 * float(np.mean(ranks <= k))
    out["avg_R"] = float(np.mean(list(out.values())))
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        out[f"{name}_mean_rank"] = float(np.mean(ranks))
        out[f"{name}_median_rank"] = float(np.median(ranks))
    out.update(_alignment_and_gap(x, y, idx))
    return out


def _validated(image_embeds, text_embeds, caption_image_index, ks):
    """Checks the inputs; returns float32 embeddings and int64 indices on one device."""
    x = torch.as_tensor(image_embeds)
    y = torch.as_tensor(text_embeds)
    idx = torch.as_tensor(caption_image_index)
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(
            f"embeddings must be 2-D (rows, dim); got image {tuple(x.shape)}, text {tuple(y.shape)}"
        )
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"embedding dims differ: image {x.shape[1]}, text {y.shape[1]}")
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("need at least one image and one caption")
    if idx.ndim != 1 or idx.shape[0] != y.shape[0]:
        raise ValueError(
            f"caption_image_index must have one entry per caption ({y.shape[0]}); "
            f"got shape {tuple(idx.shape)}"
        )
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise ValueError(f"caption_image_index must hold integers, got {idx.dtype}")
    if not ks or any(not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")

    device = x.device
    x = x.to(device, torch.float32)
    y = y.to(device, torch.float32)
    idx = idx.to(device, torch.int64)
    n_images = x.shape[0]
    if idx.min() < 0 or idx.max() >= n_images:
        raise ValueError(
            f"caption_image_index values must lie in [0, {n_images}); "
            f"got min {int(idx.min())}, max {int(idx.max())}"
        )
    captionless = (torch.bincount(idx, minlength=n_images) == 0).nonzero().squeeze(1)
    if len(captionless):
        raise ValueError(
            f"{len(captionless)} of {n_images} images have no caption, "
            f"e.g. images {captionless[:10].tolist()}"
        )
    if not (torch.isfinite(x.sum()) and torch.isfinite(y.sum())):  # without a full-size mask
        raise ValueError("embeddings contain NaN or infinite values")
    return x, y, idx


def _image_to_text_ranks(x, y, idx, chunk_size):
    """Rank of each image's best caption: 1 + #other images' captions scoring >= it."""
    ranks = []
    buffer = x.new_empty(min(chunk_size, len(x)), len(y))  # reused: no allocator churn
    for start in range(0, len(x), chunk_size):
        stop = min(start + chunk_size, len(x))
        scores = torch.matmul(x[start:stop], y.T, out=buffer[: stop - start])
        captions = ((idx >= start) & (idx < stop)).nonzero().squeeze(1)
        row = idx[captions] - start
        positive = scores[row, captions]
        best = torch.full((stop - start,), -torch.inf, device=x.device)
        best.scatter_reduce_(0, row, positive, "amax")
        n_at_or_above = _count_at_or_above(scores, best[:, None])
        n_positive_at_best = torch.zeros_like(n_at_or_above).scatter_add_(
            0, row, (positive >= best[row]).long()
        )
        ranks.append(1 + n_at_or_above - n_positive_at_best)
    return torch.cat(ranks)


def _text_to_image_ranks(x, y, idx, chunk_size):
    """Rank of each caption's image: 1 + #other images scoring >= it."""
    ranks = []
    buffer = y.new_empty(min(chunk_size, len(y)), len(x))
    for start in range(0, len(y), chunk_size):
        stop = min(start + chunk_size, len(y))
        scores = torch.matmul(y[start:stop], x.T, out=buffer[: stop - start])
        positive = scores.gather(1, idx[start:stop, None])
        ranks.append(_count_at_or_above(scores, positive))  # counts the correct image itself
    return torch.cat(ranks)


def _count_at_or_above(scores, threshold):
    """Per row, how many scores are >= threshold; overwrites ``scores``.

    Comparing in place (1.0 / 0.0) and summing in float32 is exact below 2**24 columns and
    avoids the int64 copy that summing a bool mask makes.
    """
    return scores.ge_(threshold).sum(1).long()


def _alignment_and_gap(x, y, idx):
    """Alignment and modality gap, per caption row and per image (see retrieval_metrics)."""
    n_captions = torch.bincount(idx, minlength=x.shape[0]).to(torch.float32)
    caption_sum = torch.zeros_like(x).index_add_(0, idx, y)  # (images, dim)
    caption_mean = caption_sum / n_captions[:, None]
    return {
        "alignment": float((x * caption_sum).sum() / len(idx)),
        "modality_gap": float(
            torch.linalg.vector_norm(y.mean(0) - (n_captions @ x) / len(idx))
        ),
        "alignment_per_image": float((x * caption_mean).sum(1).mean()),
        "modality_gap_per_image": float(
            torch.linalg.vector_norm(caption_mean.mean(0) - x.mean(0))
        ),
    }
