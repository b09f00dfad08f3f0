"""`evaluate` wrapper around `retrieval_metrics` (image-text retrieval)."""

# `retrieval_scoring.py` next to this file is a link to `viclip_ot/retrieval.py`, which needs only torch and numpy: the
# module loads without the repository (upload the folder with `huggingface-cli upload`, which follows the link).

import datasets
import evaluate
import numpy as np

from .retrieval_scoring import retrieval_metrics

_DESCRIPTION = """\
Image-text retrieval metrics: image->text and text->image Recall@K (percent), their average,
mean and median ranks, alignment and modality gap, per caption row and per image. Ties count
against the query. See `retrieval_scoring.retrieval_metrics` for the exact definitions.
"""

_KWARGS_DESCRIPTION = """\
Inputs hold one row per caption:
    text_embeds: the caption's embedding (list of floats).
    image_embeds: the embedding of the caption's image; rows of the same image repeat it
        (they must agree to within 1e-3; the first row of each image is used).
    caption_image_index: an integer id of the caption's image (any integers; rows with the
        same id share one image).
    Embeddings should be L2-normalised; scores are plain dot products.
Keyword arguments: ks (default (1, 5, 10)), chunk_size (captions scored at once).
Returns: a dict of floats, e.g. {"i2t_R@1": ..., "t2i_R@1": ..., "avg_R": ..., "alignment": ...}.
Example:
    >>> metric = evaluate.load("/path/to/viclip-ot/metrics/retrieval_recall")
    >>> metric.compute(text_embeds=y, image_embeds=x_per_caption, caption_image_index=ids)
"""


class RetrievalRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="arXiv:2602.22678 (ViCLIP-OT)",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "text_embeds": datasets.List(datasets.Value("float32")),
                    "image_embeds": datasets.List(datasets.Value("float32")),
                    "caption_image_index": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, text_embeds, image_embeds, caption_image_index, **kwargs):
        image_embeds = np.asarray(image_embeds, dtype=np.float32)
        _, first_row, index = np.unique(np.asarray(caption_image_index), return_index=True, return_inverse=True)
        unique_images = image_embeds[first_row]
        if not np.allclose(image_embeds, unique_images[index], rtol=0, atol=1e-3):
            raise ValueError("rows with the same caption_image_index carry different image_embeds")
        return retrieval_metrics(unique_images, np.asarray(text_embeds, dtype=np.float32), index, **kwargs)
