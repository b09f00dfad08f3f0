"""Tests of viclip_ot.retrieval and the `evaluate` module metrics/retrieval_recall."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from viclip_ot import retrieval
from viclip_ot.retrieval import retrieval_metrics

METRIC_DIR = Path(__file__).resolve().parents[1] / "metrics" / "retrieval_recall"
KS = (1, 2, 5, 10)


def brute_force(x, y, idx, ks):
    """Independent oracle: float64 full matrix, one sort per query, ties against the query."""
    x, y, idx = np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(idx)
    scores = x @ y.T  # (images, captions)

    def rank(row, correct):
        # Sort by score descending; among equal scores wrong candidates come first.
        order = sorted(range(len(row)), key=lambda j: (-row[j], correct[j]))
        return 1 + min(pos for pos, j in enumerate(order) if correct[j])

    i2t = [rank(scores[i], idx == i) for i in range(len(x))]
    t2i = [rank(scores[:, k], np.arange(len(x)) == idx[k]) for k in range(len(y))]
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_R@{k}"] = 100.0 * sum(r <= k for r in ranks) / len(ranks)
    out["avg_R"] = sum(out.values()) / len(out)
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        out[f"{name}_mean_rank"] = sum(ranks) / len(ranks)
        out[f"{name}_median_rank"] = float(np.median(ranks))
    pair = [x[idx[k]] @ y[k] for k in range(len(y))]
    per_image = [[k for k in range(len(y)) if idx[k] == i] for i in range(len(x))]
    caption_means = np.stack([y[ks_].mean(0) for ks_ in per_image])
    out["alignment"] = sum(pair) / len(pair)
    out["modality_gap"] = np.linalg.norm(y.mean(0) - x[idx].mean(0))
    out["alignment_per_image"] = np.mean([np.mean([pair[k] for k in ks_]) for ks_ in per_image])
    out["modality_gap_per_image"] = np.linalg.norm(caption_means.mean(0) - x.mean(0))
    return out


def random_gallery(seed, n_images=23, dim=6):
    """1-7 captions per image; coarse quantisation gives many exactly tied scores."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (n_images, dim)) / 4
    x[1] = x[0]  # a duplicated image: its captions tie between images 0 and 1
    idx = np.repeat(np.arange(n_images), rng.integers(1, 8, n_images))
    rng.shuffle(idx)
    y = x[idx] + rng.integers(-2, 3, (len(idx), dim)) / 4
    y[:3] = y[3]  # duplicated captions
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), idx


def assert_same(got, expected):
    assert list(got) == list(expected)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-5), key


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_with_ties(seed):
    x, y, idx = random_gallery(seed)
    assert_same(retrieval_metrics(x, y, idx, KS), brute_force(x, y, idx, KS))


def test_matches_brute_force_continuous_normalised():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 16))
    idx = np.repeat(np.arange(40), rng.integers(1, 8, 40))
    y = x[idx] + 1.5 * rng.standard_normal((len(idx), 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    x, y = x.astype(np.float32), y.astype(np.float32)
    assert_same(retrieval_metrics(x, y, idx), brute_force(x, y, idx, (1, 5, 10)))


@pytest.mark.parametrize("seed", range(3))
def test_chunked_equals_unchunked(seed):
    x, y, idx = random_gallery(seed, n_images=31)
    whole = retrieval_metrics(x, y, idx, KS, chunk_size=10**6)
    for size in (1, 2, 7, 50):
        assert retrieval_metrics(x, y, idx, KS, chunk_size=size) == whole


@pytest.mark.parametrize("seed", range(4))
def test_one_pass_ranks_match_brute_force(seed, monkeypatch):
    """The ranks themselves, with small blocks so that one image's captions span several blocks and chunks."""
    monkeypatch.setattr(retrieval, "BLOCK_SIZE", 5)
    x, y, idx = random_gallery(seed, n_images=37)
    scores = x.double() @ y.double().T
    correct = torch.as_tensor(idx)[None, :] == torch.arange(len(x))[:, None]
    best = torch.where(correct, scores, -torch.inf).amax(1, keepdim=True)
    i2t = 1 + ((scores >= best) & ~correct).sum(1)
    positive = scores.gather(0, torch.as_tensor(idx)[None, :])
    t2i = (scores >= positive).sum(0)
    ranks = retrieval.retrieval_ranks(x, y, idx, chunk_size=11)
    assert torch.equal(ranks.image_to_text, i2t) and torch.equal(ranks.text_to_image, t2i)


def test_best_scores_that_disagree_with_the_pass_are_reranked(monkeypatch):
    """An image whose best caption score from the blocks differs from the pass's value (float rounding of a
    differently shaped product: the blocks' batched `torch.bmm`) is ranked again from its row: same metrics as with
    exact block values."""
    x, y, idx = random_gallery(3, n_images=29)
    expected = retrieval_metrics(x, y, idx, KS, chunk_size=13)
    exact = torch.bmm
    nudged = []

    def rounded_differently(captions, images):
        scores = exact(captions, images)
        # The scores of half the images of each block (its columns) off by one unit in the last place, up or down:
        # the counts against them go wrong.
        column = torch.arange(scores.shape[2])
        shifted = torch.where(column % 4 == 0, scores.nextafter(scores + 1), scores.nextafter(scores - 1))
        nudged.append(True)
        return torch.where(column % 2 == 0, shifted, scores)

    monkeypatch.setattr(torch, "bmm", rounded_differently)
    assert retrieval_metrics(x, y, idx, KS, chunk_size=13) == expected
    assert nudged


def test_hand_made_example():
    # Image 1 ties with caption 1 (of image 0); ties count against the query.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    got = retrieval_metrics(x, y, [0, 0, 1], ks=(1, 2))
    expected = {
        "i2t_R@1": 50.0,  # image ranks [1, 2]
        "i2t_R@2": 100.0,
        "t2i_R@1": 200 / 3,  # caption ranks [1, 2, 1]
        "t2i_R@2": 100.0,
        "avg_R": (50 + 100 + 200 / 3 + 100) / 4,
        "i2t_mean_rank": 1.5,
        "i2t_median_rank": 1.5,
        "t2i_mean_rank": 4 / 3,
        "t2i_median_rank": 1.0,
        "alignment": 2 / 3,
        "modality_gap": math.sqrt(2) / 3,
        "alignment_per_image": 0.75,
        "modality_gap_per_image": math.sqrt(2) / 4,
    }
    assert_same(got, expected)


def test_collapsed_model_gets_worst_ranks():
    # All scores equal: an image ranks behind every other image's caption.
    idx = [0, 1, 1, 2, 2, 2]
    got = retrieval_metrics(torch.ones(3, 4), torch.ones(6, 4), idx, ks=(1,))
    assert got["i2t_R@1"] == got["t2i_R@1"] == got["avg_R"] == 0.0
    assert got["i2t_mean_rank"] == (6 + 5 + 4) / 3
    assert got["t2i_mean_rank"] == got["t2i_median_rank"] == 3.0


def test_matching_embeddings_score_100():
    x = torch.nn.functional.normalize(torch.randn(50, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    idx = torch.arange(50).repeat_interleave(torch.arange(50) % 5 + 1)
    got = retrieval_metrics(x, x[idx], idx)
    assert got["avg_R"] == 100.0
    assert got["i2t_mean_rank"] == got["t2i_mean_rank"] == 1.0
    assert got["alignment"] == pytest.approx(1.0)
    assert got["alignment_per_image"] == pytest.approx(1.0)
    assert got["modality_gap"] == pytest.approx(0.0, abs=1e-6)
    assert got["modality_gap_per_image"] == pytest.approx(0.0, abs=1e-6)


def test_bfloat16_inputs_are_upcast():
    x, y, idx = random_gallery(0)  # quarter steps: exact in bfloat16
    assert retrieval_metrics(x.bfloat16(), y.bfloat16(), idx) == retrieval_metrics(x, y, idx)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y, idx = random_gallery(1)
    assert_same(retrieval_metrics(x.cuda(), y.cuda(), torch.as_tensor(idx).cuda()), retrieval_metrics(x, y, idx))


def test_evaluate_module_loads_offline_and_matches(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(str(METRIC_DIR), cache_dir=str(tmp_path))
    x, y, idx = random_gallery(2)
    image_ids = 1000 + 3 * idx  # any integer ids; rows of one image repeat its embedding
    half = len(idx) // 2
    metric.add_batch(text_embeds=y[:half], image_embeds=x[idx[:half]], caption_image_index=image_ids[:half])
    got = metric.compute(text_embeds=y[half:], image_embeds=x[idx[half:]], caption_image_index=image_ids[half:], ks=KS)
    assert got == retrieval_metrics(x, y, idx, KS)
    with pytest.raises(ValueError, match="different image_embeds"):
        metric.compute(text_embeds=y, image_embeds=x[idx] + torch.rand(len(idx), 1), caption_image_index=idx)


@pytest.mark.slow
def test_evaluate_module_loads_without_the_repository(tmp_path):
    """A copy of the module folder (links resolved, as an upload makes it) loads where `viclip_ot` cannot be
    imported, and scores as `retrieval_metrics` does."""
    pytest.importorskip("evaluate")
    folder = tmp_path / "retrieval_recall"
    shutil.copytree(METRIC_DIR, folder)  # follows the link to viclip_ot/retrieval.py
    x, y, idx = random_gallery(4)
    np.savez(tmp_path / "gallery.npz", x=x.numpy(), y=y.numpy(), idx=idx)
    script = f"""
import json, sys
import numpy as np
sys.modules["viclip_ot"] = None  # importing it fails
import evaluate
gallery = np.load({str(tmp_path / "gallery.npz")!r})
metric = evaluate.load({str(folder)!r}, cache_dir={str(tmp_path / "cache")!r})
x, y, idx = gallery["x"], gallery["y"], gallery["idx"]
print(json.dumps(metric.compute(text_embeds=y, image_embeds=x[idx], caption_image_index=idx, ks={KS!r})))
"""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == retrieval_metrics(x, y, idx, KS)


@pytest.mark.parametrize(
    ("images", "texts", "index", "kwargs", "message"),
    [
        ((3, 4), (4, 5), [0, 1, 2, 2], {}, "dims differ"),
        ((3, 4), (4, 4), [0, 1, 2], {}, "one entry per caption"),
        ((3, 4), (4, 4), [0, 1, 2, 3], {}, r"in \[0, 3\)"),
        ((3, 4), (4, 4), [0, 1, 2, -1], {}, r"in \[0, 3\)"),
        ((6, 4), (4, 4), [0, 0, 2, 4], {}, r"3 of 6 images have no caption, e\.g\. images \[1, 3, 5\]"),
        ((3, 4), (4, 4), [0.0, 1.0, 2.0, 2.0], {}, "integers"),
        ((3, 4), (4,), [0, 1, 2, 2], {}, "2-D"),
        ((3, 4), (4, 4), [0, 1, 2, 2], {"ks": (0, 5)}, "ks"),
        ((3, 4), (4, 4), [0, 1, 2, 2], {"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_input_raises(images, texts, index, kwargs, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(torch.zeros(images), torch.zeros(texts), index, **kwargs)


def test_non_finite_embeddings_raise():
    x = torch.zeros(2, 3)
    x[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(x, torch.zeros(2, 3), [0, 1])
