"""Pictures of an evaluated split: a 2-D map of the image and text embeddings (paper Fig. 3) and retrieval examples."""

import textwrap

import numpy as np
from matplotlib.figure import Figure

IMAGE_COLOUR, TEXT_COLOUR = "tab:blue", "tab:orange"
HIT_COLOUR, MISS_COLOUR = "tab:green", "tab:red"


def project_2d(points, seed=0):
    """2-D coordinates of `points` (rows) and the method's name: UMAP (cosine, PCA-initialised, which also works
    for a handful of points) when umap-learn is installed and there are at least 4 points, else PCA."""
    try:
        import umap
    except ImportError:
        umap = None
    if umap is None or len(points) < 4:
        centred = points - points.mean(0)
        _, _, components = np.linalg.svd(centred, full_matrices=False)
        return centred @ components[:2].T, "PCA"
    projection = umap.UMAP(
        n_components=2, metric="cosine", n_neighbors=min(15, len(points) - 1), init="pca", random_state=seed
    )
    return projection.fit_transform(points), "UMAP"


def plot_embedding_map(encoded, path, title="", max_images=500, pairs=12, seed=0):
    """Save a map of the embeddings of up to `max_images` images (drawn at random) and their captions, with lines
    joining `pairs` images to one of their captions."""
    rng = np.random.default_rng(seed)
    n_images = len(encoded.image_embeds)
    images = np.sort(rng.choice(n_images, min(max_images, n_images), replace=False))
    caption_index = encoded.caption_image_index.numpy()
    captions = np.flatnonzero(np.isin(caption_index, images))
    points = np.concatenate([encoded.image_embeds[images].numpy(), encoded.text_embeds[captions].numpy()])
    coords, method = project_2d(points.astype(np.float64), seed)
    image_xy, text_xy = coords[: len(images)], coords[len(images) :]

    figure = Figure(figsize=(7, 6))
    axes = figure.subplots()
    axes.scatter(*text_xy.T, s=8, c=TEXT_COLOUR, alpha=0.5, label=f"texts ({len(captions)})")
    axes.scatter(*image_xy.T, s=14, c=IMAGE_COLOUR, alpha=0.7, marker="s", label=f"images ({len(images)})")
    row_of_image = {image: row for row, image in enumerate(images)}
    first_caption = {}
    for row, caption in enumerate(captions):
        first_caption.setdefault(caption_index[caption], row)
    for image in rng.choice(images, min(pairs, len(images)), replace=False):
        (x0, y0), (x1, y1) = image_xy[row_of_image[image]], text_xy[first_caption[image]]
        axes.plot([x0, x1], [y0, y1], c="0.3", lw=0.8)
    axes.plot([], [], c="0.3", lw=0.8, label="an image and its caption")
    axes.set_title(f"{title}\nimage and text embeddings ({method})".strip())
    axes.set_xlabel(f"{method} 1")
    axes.set_ylabel(f"{method} 2")
    axes.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_retrieval_examples(encoded, dataset, path, title="", examples=4, k=5, seed=0):
    """Save `examples` captions (drawn at random), each with its top-`k` images by cosine similarity; the correct
    image is outlined in green, the others in red."""
    captions = [caption for row in dataset.select_columns(["captions"])["captions"] for caption in row]
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(captions), min(examples, len(captions)), replace=False))
    scores = encoded.text_embeds[chosen].float() @ encoded.image_embeds.float().T
    k = min(k, scores.shape[1])
    top_scores, top_images = scores.topk(k, dim=1)
    correct_images = encoded.caption_image_index[chosen]
    ranks = (scores >= scores.gather(1, correct_images[:, None])).sum(1)  # ties count against the query

    figure = Figure(figsize=(2.2 * k, 2.6 * len(chosen) + 0.6), layout="constrained")
    figure.suptitle(f"{title}\ncaption -> top {k} images (green: correct, red: wrong)".strip(), fontsize=11)
    for row, (caption, panel) in enumerate(zip(chosen, figure.subfigures(len(chosen), 1, squeeze=False)[:, 0])):
        wrapped = textwrap.fill(f"“{captions[caption]}”  (correct image: rank {int(ranks[row])})", width=24 * k)
        panel.suptitle(wrapped, x=0.01, ha="left", fontsize=9)
        for column, axes in enumerate(panel.subplots(1, k, squeeze=False)[0]):
            image = int(top_images[row, column])
            axes.imshow(dataset[image]["image"])
            axes.set_xticks([])
            axes.set_yticks([])
            for spine in axes.spines.values():
                spine.set_edgecolor(HIT_COLOUR if image == int(correct_images[row]) else MISS_COLOUR)
                spine.set_linewidth(4)
            axes.set_xlabel(f"{column + 1}. cosine {float(top_scores[row, column]):.3f}", fontsize=8)
    figure.savefig(path, dpi=110)
