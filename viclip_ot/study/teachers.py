"""Teacher files of the demo's train split for the studies: the scene-factor teacher (perfect, or with noise), the
identity graph and the random graph, in the format of `dataset_scripts.teacher_embeddings`."""

import json
from pathlib import Path

import numpy as np
import torch

TEACHERS = ("MiniLM (shipped)", "perfect", "perfect + noise")
TEACHER_NOISE = 0.15  # standard deviation per dimension of the noisy perfect teacher (rows have norm 1)
CONTROLS = ("identity", "random")  # the full study's control graphs: "same image" only, and no information
RANDOM_TEACHER_DIMENSION = 384  # the shipped MiniLM teacher's


def demo_train_split():
    """The demo's train split as its builder draws it: image ids, captions and each image's scene factors."""
    from dataset_scripts.demo import DemoConfig, make_scene

    config = DemoConfig(name="default")
    rng = np.random.default_rng([config.seed, 0])  # the demo builder's generator of the train split
    image_ids, captions, scenes = [], [], []
    for row in range(config.train_size):
        _, scene_captions, scene = make_scene(rng, config.image_size)
        image_ids.append(f"train-{row:05d}")
        captions.append(scene_captions)
        scenes.append(scene)
    return image_ids, captions, scenes


def _demo_teacher(image_rows, text_rows, image_ids, captions, name):
    """A teacher file of the demo's train split from its rows (normalised here), with the corpus fingerprint and the
    per-image caption fingerprints that `TeacherEmbeddings.check_corpus` checks."""
    from dataset_scripts.teacher_embeddings import TeacherEmbeddings, caption_fingerprints, corpus_fingerprint

    metadata = {
        "teacher": name,
        "corpus": "demo",
        "split": "train",
        "corpus_fingerprint": corpus_fingerprint(image_ids, captions),
        "caption_fingerprints": json.dumps(caption_fingerprints(captions)),
    }
    return TeacherEmbeddings(
        torch.nn.functional.normalize(image_rows, dim=-1),
        torch.nn.functional.normalize(text_rows, dim=-1),
        image_ids,
        torch.tensor([len(texts) for texts in captions]),
        metadata,
    )


def scene_factor_teacher(noise=0.0, seed=0):
    """A teacher file for the demo's train split whose rows are each image's scene factors, one-hot and normalised
    (`noise` > 0: plus N(0, noise^2) per dimension, drawn independently for the image and for each caption, then
    normalised again); every caption carries its image's row."""
    from dataset_scripts.demo import BACKGROUNDS, COLOURS, COUNTS, POSITIONS, SHAPES

    image_ids, captions, scenes = demo_train_split()
    factors = {
        "count": list(COUNTS),
        "shape": list(SHAPES),
        "colour": list(COLOURS),
        "position": list(POSITIONS),
        "background": list(BACKGROUNDS),
    }
    offsets = np.cumsum([0] + [len(values) for values in factors.values()])
    codes = np.zeros((len(scenes), offsets[-1]))
    for row, scene in enumerate(scenes):
        for offset, (name, values) in zip(offsets, factors.items()):
            codes[row, offset + values.index(scene[name])] = 1
    image_rows = torch.nn.functional.normalize(torch.tensor(codes, dtype=torch.float32), dim=-1)
    text_rows = image_rows.repeat_interleave(torch.tensor([len(texts) for texts in captions]), dim=0)
    if noise:
        generator = torch.Generator().manual_seed(seed)
        image_rows = image_rows + noise * torch.randn(image_rows.shape, generator=generator)
        text_rows = text_rows + noise * torch.randn(text_rows.shape, generator=generator)
    return _demo_teacher(image_rows, text_rows, image_ids, captions, f"scene factors, noise {noise}")


def identity_teacher():
    """The identity graph: image i's row is the one-hot vector e_i and its captions carry it, so the teacher
    similarity is 1 between an image and its own captions (and between those captions) and 0 otherwise: the prior
    says only "same image", as the contrastive target does."""
    image_ids, captions, _ = demo_train_split()
    image_rows = torch.eye(len(image_ids))
    text_rows = image_rows.repeat_interleave(torch.tensor([len(texts) for texts in captions]), dim=0)
    return _demo_teacher(image_rows, text_rows, image_ids, captions, "identity graph")


def random_teacher(seed=0, dimension=RANDOM_TEACHER_DIMENSION):
    """The random graph: every image and every caption its own random unit vector (independent Gaussian rows of
    `dimension`, normalised; the same for the same `seed`), so the graph holds no information, not even which
    captions belong to which image."""
    image_ids, captions, _ = demo_train_split()
    generator = torch.Generator().manual_seed(seed)
    image_rows = torch.randn(len(image_ids), dimension, generator=generator)
    text_rows = torch.randn(sum(len(texts) for texts in captions), dimension, generator=generator)
    return _demo_teacher(image_rows, text_rows, image_ids, captions, f"random unit vectors, seed {seed}")


def teacher_files(folder, names, shipped):
    """The files of the teachers `names`: `shipped` for the MiniLM teacher, the others written to `folder` once."""
    builders = {
        TEACHERS[1]: scene_factor_teacher,
        TEACHERS[2]: lambda: scene_factor_teacher(TEACHER_NOISE),
        CONTROLS[0]: identity_teacher,
        CONTROLS[1]: random_teacher,
    }
    files = {}
    for name in names:
        if name == TEACHERS[0]:
            files[name] = Path(shipped)
            continue
        path = Path(folder) / f"teacher-{name.replace(' + ', '-').replace(' ', '-')}.safetensors"
        if not path.is_file():
            builders[name]().save(path)
        files[name] = path
    return files
