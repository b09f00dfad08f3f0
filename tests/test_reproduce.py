"""The full-length study of reproduce.py (`viclip_ot.study`): control teachers, paired statistics, pairing check."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from training_setup import tiny_demo_config

import reproduce
from dataset_scripts import load_corpus
from dataset_scripts.teacher_embeddings import TeacherEmbeddings, TeacherMismatchError
from viclip_ot.study import design, runs
from viclip_ot.study.statistics import paired_difference, pairing_problems
from viclip_ot.study.teachers import RANDOM_TEACHER_DIMENSION, identity_teacher, random_teacher


@pytest.fixture(scope="module")
def demo_train(tmp_path_factory):
    return load_corpus("demo", split="train", cache_dir=str(tmp_path_factory.mktemp("cache")))


def test_identity_teacher_rows_are_one_hot_per_image_and_pass_the_teacher_checks(tmp_path, demo_train):
    """Image i's row is e_i, each of its captions carries it (rows in the corpus's order, five captions an image),
    the saved file passes the corpus checks, and the checks still catch a changed caption."""
    path = tmp_path / "identity.safetensors"
    identity_teacher().save(path)
    teacher = TeacherEmbeddings.load(path)
    teacher.check_corpus(demo_train)
    teacher.check_corpus(demo_train.select(range(100)))  # a subset, as --max_train_images trains on
    assert teacher.image_ids == list(demo_train["image_id"])
    assert torch.equal(teacher.image_embeds, torch.eye(len(demo_train)))
    counts = [len(captions) for captions in demo_train["captions"]]
    assert teacher.caption_counts.tolist() == counts
    assert torch.equal(teacher.text_embeds, torch.eye(len(demo_train)).repeat_interleave(torch.tensor(counts), 0))
    changed = demo_train.map(
        lambda row, i: {"captions": [row["captions"][0] + "!"] * 5} if i == 3 else row, with_indices=True
    )
    with pytest.raises(TeacherMismatchError, match="other captions"):
        teacher.check_corpus(changed)


def test_random_teacher_rows_are_unit_norm_seeded_and_unrelated(tmp_path, demo_train):
    """Every image and caption row has norm 1; the same seed gives the same rows, another seed others; captions do
    not carry their image's row (their cosine to it is that of independent random vectors, ~ N(0, 1/D)); the file
    passes the corpus checks."""
    teacher = random_teacher(seed=3)
    path = tmp_path / "random.safetensors"
    teacher.save(path)
    TeacherEmbeddings.load(path).check_corpus(demo_train)
    assert teacher.dimension == RANDOM_TEACHER_DIMENSION
    for rows in (teacher.image_embeds, teacher.text_embeds):
        torch.testing.assert_close(rows.norm(dim=1), torch.ones(len(rows)))
    again, other = random_teacher(seed=3), random_teacher(seed=4)
    assert torch.equal(again.image_embeds, teacher.image_embeds) and torch.equal(again.text_embeds, teacher.text_embeds)
    assert not torch.allclose(other.image_embeds, teacher.image_embeds)
    own = (teacher.text_embeds * teacher.image_embeds.repeat_interleave(teacher.caption_counts, 0)).sum(1)
    assert abs(float(own.mean())) < 0.01 and float(own.std()) == pytest.approx(teacher.dimension**-0.5, rel=0.1)


def test_paired_difference_against_a_hand_computation():
    """Only common seeds are paired; the interval is mean(d) ± t(0.975, n-1) sd(d) / sqrt(n) with the tabulated
    t(0.975, 4) = 2.776445; the t-test's p is that of t = mean / (sd / sqrt n) with 4 degrees of freedom (the same as
    scipy's ttest_rel); Wilcoxon's exact two-sided p with all five differences positive is 2 / 2^5."""
    baseline = {0: 10.0, 1: 12.0, 2: 11.0, 3: 9.0, 4: 13.0, 7: 50.0}
    values = {4: 15.5, 3: 13.0, 2: 12.0, 1: 15.5, 0: 12.0, 9: -1.0}  # differences 2, 3.5, 1, 4, 2.5
    d = np.array([2.0, 3.5, 1.0, 4.0, 2.5])
    mean, sd = 2.6, math.sqrt(((d - 2.6) ** 2).sum() / 4)
    result = paired_difference(values, baseline)
    assert result["n"] == 5 and result["mean"] == pytest.approx(mean)
    assert result["high"] - mean == pytest.approx(2.776445 * sd / math.sqrt(5), rel=1e-6)
    assert mean - result["low"] == pytest.approx(2.776445 * sd / math.sqrt(5), rel=1e-6)
    t = mean / (sd / math.sqrt(5))
    assert result["t_p"] == pytest.approx(2 * stats.t.sf(t, 4))
    assert result["t_p"] == pytest.approx(stats.ttest_rel([12, 15.5, 12, 13, 15.5], [10, 12, 11, 9, 13]).pvalue)
    assert result["wilcoxon_p"] == pytest.approx(2 / 2**5)
    one = paired_difference({0: 1.0}, {0: 0.5})
    assert one["mean"] == 0.5 and math.isnan(one["low"]) and math.isnan(one["t_p"])
    same = paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert same["mean"] == 0 and math.isnan(same["t_p"]) and math.isnan(same["wilcoxon_p"])


def test_pairing_problems_names_the_seeds_whose_runs_differ():
    def record(seed, weights, batches):
        return {"seed": seed, "pairing": {"initial_weights": weights, "training_batches": batches}}

    groups = {
        ("CLIP", None): [record(0, "a", "x"), record(1, "b", "y"), record(2, "c", "z")],
        ("SigLIP", None): [record(0, "a", "x"), record(1, "b", "other batches"), record(2, "other weights", "z")],
    }
    assert pairing_problems(groups) == [1, 2]
    groups[("SigLIP", None)] = groups[("CLIP", None)]
    assert pairing_problems(groups) == []


@pytest.mark.slow
def test_full_study_pairs_seeds_records_threads_and_reports_paired_differences(tmp_path, monkeypatch):
    """Two rows (CLIP; the demo default with the identity graph) x two seeds of tiny runs: each result file holds
    the threads and launcher and a pairing fingerprint that is the same across rows for a seed and differs between
    seeds; a rerun trains nothing; the table's difference to CLIP is the paired statistic of the files' values."""
    monkeypatch.setattr(design, "FULL_STUDY", (("CLIP", None), (design.DEMO_DEFAULT, "identity")))
    trained = []
    original = runs.train_run
    monkeypatch.setattr(runs, "train_run", lambda *a: trained.append(a) or original(*a))
    small = tiny_demo_config(tmp_path / "small.yaml", "max_train_images: 16\nnum_train_epochs: 1\n")
    args = ["--study", "full", "--config", str(small), "--seeds", "0", "1", "--runs", str(tmp_path / "runs")]
    args += ["--work-dir", str(tmp_path / "work"), "--output", str(tmp_path / "full.md")]
    reproduce.main(args)
    reproduce.main(args)
    assert len(trained) == 4
    records = {(r["row"], r["seed"]): r for r in map(json.loads, map(Path.read_text, (tmp_path / "runs").glob("*")))}
    assert {r["threads"] for r in records.values()} == {torch.get_num_threads()}
    assert all("--study full --jobs 1" in r["launcher"] and r["steps"] == 2 for r in records.values())
    for seed in (0, 1):
        assert records["CLIP", seed]["pairing"] == records[design.DEMO_DEFAULT, seed]["pairing"]
    assert records["CLIP", 0]["pairing"]["initial_weights"] != records["CLIP", 1]["pairing"]["initial_weights"]
    assert records["CLIP", 0]["pairing"]["training_batches"] != records["CLIP", 1]["pairing"]["training_batches"]
    differences = [
        records[design.DEMO_DEFAULT, s]["metrics"]["avg_R"] - records["CLIP", s]["metrics"]["avg_R"] for s in (0, 1)
    ]
    mean, half = np.mean(differences), 12.706205 * abs(differences[0] - differences[1]) / 2  # t(0.975, 1) s / sqrt 2
    table = (tmp_path / "full.md").read_text()
    assert "| identity | 2 | " in table and f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}]" in table
    assert "Pairing checked: the runs of each seed (2 so far) share" in table and "Partial" not in table
    assert (tmp_path / "full.png").stat().st_size > 0
