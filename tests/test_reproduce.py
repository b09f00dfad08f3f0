"""reproduce.py and its study (`viclip_ot.study`): control teachers, paired statistics, the pairing check, the ablation
driver and the paper suite end to end."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus_fixtures import Thumbnail, write_crossmodal, write_ktvic, write_uit
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


def test_scene_factor_teacher_matches_the_demo_corpus(tmp_path):
    """The perfect teacher's row of an image is the normalised one-hot code of the factors its first caption states
    (template "{count} {shape} {colour} {position}, nền {background}"), its captions carry that row, and the file
    passes train.py's corpus check; the noisy one stays close to it."""
    from dataset_scripts import demo, load_corpus
    from viclip_ot.study.teachers import scene_factor_teacher

    teacher = scene_factor_teacher()
    train = load_corpus("demo", split="train", cache_dir=str(tmp_path / "cache"))
    teacher.check_corpus(train)
    tables = [
        {str(k): v for k, v in demo.COUNTS.items()},
        demo.SHAPES,
        {name: phrases for name, (_, phrases) in demo.COLOURS.items()},
        {name: phrases for name, (_, phrases) in demo.POSITIONS.items()},
    ]
    backgrounds = {phrase: name for name, (_, phrases) in demo.BACKGROUNDS.items() for phrase in phrases}
    for row, captions in enumerate(train["captions"][:40]):
        stated, rest = [], captions[0]
        for table in tables:  # the longest phrase that starts what is left of the caption
            value, phrase = max(
                ((v, p) for v, ps in table.items() for p in ps if rest.startswith(p)), key=lambda pair: len(pair[1])
            )
            stated.append(value)
            rest = rest[len(phrase) :].lstrip()
        stated.append(backgrounds[rest.removeprefix(", nền ")])
        code = torch.zeros(teacher.dimension)
        offsets = [0, 3, 6, 10, 15]
        for offset, table, value in zip(offsets, [*tables, demo.BACKGROUNDS], stated):
            code[offset + list(table).index(value)] = 5**-0.5
        torch.testing.assert_close(teacher.image_embeds[row], code)
        torch.testing.assert_close(teacher.text_embeds[5 * row : 5 * row + 5], code.expand(5, -1))
    noisy = scene_factor_teacher(noise=0.15)
    assert 0.7 < (noisy.image_embeds * teacher.image_embeds).sum(1).mean() < 0.95


@pytest.mark.slow
def test_ablation_driver_resumes_and_reports(tmp_path, monkeypatch):
    """Two quick runs of the demo study (a few steps): one JSON per finished run, a rerun trains nothing, the
    table and figure hold every run with its interval over seeds."""
    import reproduce
    from viclip_ot.study import runs
    from viclip_ot.study.statistics import interval

    trained = []
    original = runs.train_run
    monkeypatch.setattr(runs, "train_run", lambda *a: trained.append(a) or original(*a))
    small = tiny_demo_config(tmp_path / "small.yaml")
    args = [
        "--config",
        str(small),
        "--rows",
        "CLIP",
        "ViCLIP-OT, normalised plan",
        "--teachers",
        "perfect",
        "--seeds",
        "0",
        "1",
        "--epochs",
        "1",
        "--train-images",
        "16",
        "--runs",
        str(tmp_path / "runs"),
        "--work-dir",
        str(tmp_path / "work"),
        "--output",
        str(tmp_path / "ablation.md"),
    ]
    reproduce.main(args)
    assert len(trained) == 4 and len(list((tmp_path / "runs").glob("*.json"))) == 4
    reproduce.main(args)
    assert len(trained) == 4
    table = (tmp_path / "ablation.md").read_text()
    records = [json.loads(path.read_text()) for path in (tmp_path / "runs").glob("*normalised*.json")]
    values = [record["metrics"]["avg_R"] for record in records]
    mean, half = interval(values)
    assert f"| ViCLIP-OT, normalised plan | perfect | 2 | {mean:.1f} ± {half:.1f} |" in table
    assert half == pytest.approx(12.706 * abs(values[0] - values[1]) / 2, rel=1e-3)  # t(0.975, 1) s / sqrt(2)
    assert (tmp_path / "ablation.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_reproduce_paper_suite_end_to_end_on_fixture_corpora(tmp_path, monkeypatch):
    """`reproduce.py --suite paper` on the fixture corpora with tiny towers and one step per config: dedupe reports,
    teacher file, the seven configs trained and evaluated on the paper's suite, the table beside the paper's
    numbers; a second call reuses everything."""
    import reproduce
    import train
    from viclip_ot.small_towers import save_small_text_tower
    from viclip_ot.study.design import PAPER_AVG_R, PAPER_CONFIGS

    root = tmp_path / "data"
    write_uit(root / "uit-openviic", truncate=None)
    write_ktvic(root / "ktvic")
    write_crossmodal(root / "crossmodal3600")
    sscd = tmp_path / "sscd.torchscript.pt"
    torch.jit.script(Thumbnail()).save(str(sscd))
    teacher = save_small_text_tower(tmp_path / "teacher", ["một con mèo", "hai chiếc xe", "bầu trời xanh"])
    tiny = {
        "small_towers": "true",
        "image_size": "32",
        "projection_dim": "16",
        "vision_model_kwargs": '{"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 8}',
        "small_text_tower_kwargs": '{"hidden_size": 32, "num_heads": 2}',
        "max_steps": "1",
        "per_device_train_batch_size": "2",
        "use_cpu": "true",
        "bf16": "false",
        "eval_strategy": "no",
        "save_strategy": "no",
        "load_best_model_at_end": "false",
        "report_to": "none",
        "dataloader_num_workers": "0",
        "logging_steps": "1",
    }
    args = [
        "--suite",
        "paper",
        "--data-root",
        str(root),
        "--work-dir",
        str(tmp_path / "work"),
        "--sscd",
        str(sscd),
        "--teacher",
        str(teacher),
        "--output",
        str(tmp_path / "paper.md"),
    ]
    for name, value in tiny.items():
        args += ["--train-option", name, value]
    trained = []
    original = train.main
    monkeypatch.setattr(train, "main", lambda argv: trained.append(argv) or original(argv))
    results = reproduce.main(args)

    assert (root / "dedup" / "ktvic-train.json").is_file() and (root / "dedup" / "ktvic-test.json").is_file()
    assert (tmp_path / "work" / "teachers" / "uit-openviic-train.safetensors").is_file()
    assert [argv[0].rsplit("/", 1)[-1] for argv in trained] == [f"{name}.yaml" for name in PAPER_CONFIGS.values()]
    with_teacher = [argv[0].rsplit("/", 1)[-1] for argv in trained if "--teacher_embeddings" in argv]
    assert with_teacher == ["sigrot.yaml", "viclip_ot.yaml", "visiglip_ot.yaml"]
    table = (tmp_path / "paper.md").read_text()
    assert list(results) == list(PAPER_CONFIGS)
    for row, evaluations in results.items():
        assert list(evaluations) == [
            "UIT-OpenViIC test",
            "KTVIC train (dedup)",
            "KTVIC test (dedup)",
            "Crossmodal-3600 vi",
        ]
        uit = evaluations["UIT-OpenViIC test"]["metrics"]["avg_R"]
        published = PAPER_AVG_R["UIT-OpenViIC test"].get(row)
        assert f"| {row} | {uit:.2f}" + (f" ({published:.2f})" if published else " |") in table
    assert "(67.34)" in table and "(56.17)" in table
    reproduce.main(args)
    assert len(trained) == 7
