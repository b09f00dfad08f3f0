"""Teacher embeddings (`dataset_scripts.teacher_embeddings`): the script on one and two processes, the
sentence-transformers and Qwen3-VL-Embedding teachers against hand computations, the file's corpus checks."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import CAPTIONS, two_process_launch
from replicas import sbert_reference
from sentence_transformers import SentenceTransformer
from transformers import AutoProcessor

from dataset_scripts import load_corpus


def datasets_from(images, captions):
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("string"),
            "captions": datasets.List(datasets.Value("string")),
        }
    )
    return datasets.Dataset.from_dict(
        {"image": images, "image_id": [str(i) for i in range(len(images))], "captions": captions}, features=features
    )


@pytest.mark.slow
def test_teacher_script_on_one_and_two_processes_with_a_text_only_teacher(sbert_dir, tmp_path):
    """`python -m dataset_scripts.teacher_embeddings` with the vietnamese-sbert replica (text only: an image is the
    normalised mean of its captions); two processes split the images and give the same file."""
    from dataset_scripts.teacher_embeddings import TeacherEmbeddings

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "cache"),
    }
    corpus = [
        "--corpus",
        "demo",
        "--split",
        "train",
        "--teacher",
        str(sbert_dir),
        "--batch-size",
        "3",
        "--option",
        "train_size=7",
        "--option",
        "validation_size=1",
        "--option",
        "test_size=1",
        "--option",
        "image_size=16",
    ]
    launches = {
        "one": [sys.executable, "-m", "dataset_scripts.teacher_embeddings"],
        "two": [
            *two_process_launch(29533),
            "-m",
            "dataset_scripts.teacher_embeddings",
        ],
    }
    files = {}
    for name, launch in launches.items():
        files[name] = tmp_path / f"{name}.safetensors"
        result = subprocess.run(
            [*launch, *corpus, "--output", str(files[name])],
            cwd=root,
            env=env,
            check=False,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]

    dataset = load_corpus(
        "demo",
        split="train",
        cache_dir=str(tmp_path / "cache"),
        train_size=7,
        validation_size=1,
        test_size=1,
        image_size=16,
    )
    captions = list(dataset["captions"])
    reference = SentenceTransformer(str(sbert_dir), device="cpu")
    expected_texts = torch.from_numpy(reference.encode([c for cs in captions for c in cs], normalize_embeddings=True))
    expected_images = F.normalize(
        torch.stack([rows.mean(0) for rows in expected_texts.split([len(cs) for cs in captions])]), dim=-1
    )
    for name, path in files.items():
        embeddings = TeacherEmbeddings.load(path)
        embeddings.check_corpus(dataset)
        images, texts = embeddings.lookup(list(dataset["image_id"]))
        torch.testing.assert_close(texts, expected_texts, atol=1e-5, rtol=0, msg=name)
        torch.testing.assert_close(images, expected_images, atol=1e-5, rtol=0, msg=name)


def test_sentence_transformers_teacher_reads_captions_in_nfc(sbert_dir):
    """A sentence-transformers teacher embeds NFD captions as their NFC form, and keeps the tone marks where they
    were typed ("hòa" and "hoà" stay apart: that placement rule belongs to a ViCLIP-OT text tower)."""
    import unicodedata

    from PIL import Image

    from dataset_scripts.teacher_embeddings import compute_teacher_embeddings, load_teacher

    typed = ["hòa bình trên đường phố Hà Nội", "thuỷ triều và bầu trời xanh"]
    decomposed = [unicodedata.normalize("NFD", text) for text in typed]
    assert decomposed != typed
    dataset = datasets_from([Image.new("RGB", (8, 8))], [decomposed + typed])
    rows = compute_teacher_embeddings(dataset, load_teacher(sbert_dir), batch_size=4)
    expected = sbert_reference(sbert_dir, typed)
    torch.testing.assert_close(rows.text_embeds, torch.cat([expected, expected]), atol=1e-6, rtol=0)
    assert not torch.allclose(sbert_reference(sbert_dir, decomposed), expected, atol=1e-3)  # the model alone differs
    moved = sbert_reference(sbert_dir, ["hoà bình trên đường phố Hà Nội", "thủy triều và bầu trời xanh"])
    assert (F.cosine_similarity(moved, expected) < 0.9999).all()  # the placements are told apart, as typed


def test_qwen3_vl_embedding_teacher_through_sentence_transformers(tmp_path):
    """The Qwen3-VL-Embedding replica in its sentence-transformers layout gives the rows of the paper's recipe,
    computed here by hand: the chat (system: the instruction; user: the image or text; generation prompt), left
    padded, the last token's hidden state, L2-normalised."""
    from PIL import Image
    from replicas import qwen3_vl_embedding
    from transformers import AutoModel as Auto

    from dataset_scripts.teacher_embeddings import QWEN3_VL_INSTRUCTION, compute_teacher_embeddings, load_teacher

    folder = qwen3_vl_embedding(tmp_path / "Qwen3-VL-Embedding-2B")
    images = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (24, 36), (10, 90, 200))]
    dataset = datasets_from(images, [CAPTIONS[:2], CAPTIONS[2:3]])
    rows = compute_teacher_embeddings(dataset, load_teacher(folder), batch_size=2)

    model, processor = Auto.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    processor.tokenizer.padding_side = "left"
    system = {"role": "system", "content": [{"type": "text", "text": QWEN3_VL_INSTRUCTION}]}

    def by_hand(contents):
        chats = [[system, {"role": "user", "content": [content]}] for content in contents]
        inputs = processor.apply_chat_template(
            chats, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt", padding=True
        )
        with torch.no_grad():
            return F.normalize(model(**inputs).last_hidden_state[:, -1], dim=-1)

    expected_images = by_hand([{"type": "image", "image": image} for image in images])
    expected_texts = by_hand([{"type": "text", "text": text} for text in CAPTIONS[:3]])
    torch.testing.assert_close(rows.image_embeds, expected_images, atol=1e-5, rtol=0)
    torch.testing.assert_close(rows.text_embeds, expected_texts, atol=1e-5, rtol=0)


def test_teacher_file_is_checked_on_a_subset_of_the_images(tmp_path):
    """With --max_train_images, a teacher file made from other captions (same ids and counts) is refused."""
    from dataset_scripts.teacher_embeddings import (
        Teacher,
        TeacherEmbeddings,
        TeacherMismatchError,
        compute_teacher_embeddings,
    )

    def encode_texts(texts, batch_size=32):  # a deterministic text-only teacher: character counts
        rows = torch.tensor([[text.count(c) for c in "aeiouhnt"] for text in texts], dtype=torch.float32)
        return F.normalize(rows + 1e-3, dim=-1)

    corpus = load_corpus(
        "demo",
        split="train",
        cache_dir=str(tmp_path / "cache"),
        train_size=6,
        validation_size=1,
        test_size=1,
        image_size=16,
    )
    teacher = Teacher("counts", None, encode_texts, images_from_captions=True)
    compute_teacher_embeddings(corpus, teacher, batch_size=4).save(tmp_path / "teacher.safetensors")
    embeddings = TeacherEmbeddings.load(tmp_path / "teacher.safetensors")
    subset = corpus.select(range(3))
    embeddings.check_corpus(subset)  # the same captions: accepted
    other = subset.map(
        lambda row: {
            "captions": [c.upper() for c in row["captions"]]
            if row["image_id"] == subset[1]["image_id"]
            else row["captions"]
        }
    )
    with pytest.raises(TeacherMismatchError, match=rf"1 images have other captions .*{subset[1]['image_id']}"):
        embeddings.check_corpus(other)
