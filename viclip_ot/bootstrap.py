"""Bootstrap intervals of the retrieval metrics: resample the images with replacement, each with all its captions.

Every query's rank is computed once against the whole gallery (with `viclip_ot.retrieval`' ranking: ties count
against the query); a resample reweights the queries. Image i drawn w_i times counts w_i times as an image->text
query and brings its captions w_i times as text->image queries, so every metric of a resample is a weighted sum of
per-image statistics and a thousand resamples take one matrix product.
"""

import numpy as np
import torch

from .retrieval import check_embeddings, retrieval_ranks


def per_image_statistics(image_embeds, text_embeds, caption_image_index, ks=(1, 5, 10)) -> dict[str, np.ndarray]:
    """Per-image sums the metrics are made of: caption counts, image->text hits and ranks, text->image hits and
    rank sums over the image's captions, and the alignment and modality-gap terms."""
    x, y, idx = check_embeddings(image_embeds, text_embeds, caption_image_index)
    ranks = retrieval_ranks(x, y, idx)
    i2t, t2i = ranks.image_to_text.double(), ranks.text_to_image.double()
    n_images = x.shape[0]

    def per_image(values):
        return torch.zeros(n_images, dtype=torch.float64, device=x.device).index_add_(0, idx, values)

    count = per_image(torch.ones_like(t2i))
    caption_sum = torch.zeros_like(x).index_add_(0, idx, y).double()
    x = x.double()
    alignment = (x * caption_sum).sum(1)
    stats = {
        "count": count,
        "i2t_rank": i2t,
        "t2i_rank_sum": per_image(t2i),
        "alignment_sum": alignment,
        "gap_sum": caption_sum - count[:, None] * x,
        "alignment_mean": alignment / count,
        "gap_mean": caption_sum / count[:, None] - x,
    }
    for k in ks:
        stats[f"i2t_hit@{k}"] = (i2t <= k).double()
        stats[f"t2i_hits@{k}"] = per_image((t2i <= k).double())
    return {key: value.cpu().numpy() for key, value in stats.items()}


def weighted_metrics(stats, weights, ks=(1, 5, 10)) -> dict[str, np.ndarray]:
    """The metrics (as `retrieval_metrics` names them, medians left out) when image i counts `weights[b, i]` times,
    for each row b of `weights` (samples x images): one value per row."""
    weights = np.asarray(weights, dtype=np.float64)
    images = weights.sum(1)
    captions = weights @ stats["count"]
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = 100 * (weights @ stats[f"i2t_hit@{k}"]) / images
    for k in ks:
        out[f"t2i_R@{k}"] = 100 * (weights @ stats[f"t2i_hits@{k}"]) / captions
    out["avg_R"] = np.mean(list(out.values()), axis=0)
    out["i2t_mean_rank"] = (weights @ stats["i2t_rank"]) / images
    out["t2i_mean_rank"] = (weights @ stats["t2i_rank_sum"]) / captions
    out["alignment"] = (weights @ stats["alignment_sum"]) / captions
    out["modality_gap"] = np.linalg.norm(weights @ stats["gap_sum"], axis=1) / captions
    out["alignment_per_image"] = (weights @ stats["alignment_mean"]) / images
    out["modality_gap_per_image"] = np.linalg.norm(weights @ stats["gap_mean"], axis=1) / images
    return out


def bootstrap_intervals(
    image_embeds, text_embeds, caption_image_index, samples=1000, seed=0, ks=(1, 5, 10), chunk=250
) -> dict[str, list[float]]:
    """95 % percentile intervals over `samples` resamples of the images (with replacement, with all their
    captions): `{"<metric>_ci95": [low, high]}` for every metric of `weighted_metrics`. `chunk` resamples are
    drawn and scored at a time."""
    if samples < 1:
        raise ValueError(f"bootstrap samples must be positive, got {samples}")
    stats = per_image_statistics(image_embeds, text_embeds, caption_image_index, ks)
    n_images = len(stats["count"])
    rng = np.random.default_rng(seed)
    parts = []
    for start in range(0, samples, chunk):
        weights = rng.multinomial(n_images, np.full(n_images, 1 / n_images), size=min(chunk, samples - start))
        parts.append(weighted_metrics(stats, weights, ks))
    return {
        f"{key}_ci95": np.percentile(np.concatenate([part[key] for part in parts]), [2.5, 97.5]).tolist()
        for key in parts[0]
    }
