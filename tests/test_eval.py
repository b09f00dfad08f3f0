"""eval.py end to end (demo corpus, a fixture folder of each corpus format, the paper suite), the baseline encoders
(also in their Hub layouts, tests/replicas.py), bootstrap intervals, the pictures and the clear errors; offline, with
tiny models."""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import VIETNAMESE_TEXTS
from corpus_fixtures import write_crossmodal, write_json_corpus, write_ktvic, write_uit
from PIL import Image
from replicas import TINY_TOWER, TINY_VISION
from transformers import (
    AutoModel,
    AutoProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipProcessor,
)

from dataset_scripts import CorpusError, load_corpus
from dataset_scripts.dedupe import make_report
from dataset_scripts.report import write_report
from viclip_ot.bootstrap import bootstrap_intervals, per_image_statistics, weighted_metrics
from viclip_ot.encoders import (
    EncoderError,
    PairedEncoder,
    SentenceTransformersEncoder,
    TransformersEncoder,
    load_encoder,
)
from viclip_ot.evaluation import paper_suite
from viclip_ot.plots import project_2d
from viclip_ot.retrieval import format_metrics_table, retrieval_metrics
from viclip_ot.small_towers import train_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore::dataset_scripts.CorpusWarning")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("eval_cli", ROOT / "eval.py")
eval_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_cli)

RECALLS = [f"{side}_R@{k}" for side in ("i2t", "t2i") for k in (1, 5, 10)]
METRICS = RECALLS + [
    "avg_R",
    "i2t_mean_rank",
    "i2t_median_rank",
    "t2i_mean_rank",
    "t2i_median_rank",
    "alignment",
    "modality_gap",
    "alignment_per_image",
    "modality_gap_per_image",
]
INTERVALS = [f"{key}_ci95" for key in METRICS if "median" not in key]
ENTRY = ["name", "corpus", "data_dir", "split", "dedup_report", "options", "images", "captions", "metrics"]
SUITE_ROWS = {  # row: (images, captions) of the fixture folders
    "UIT-OpenViIC test": (2, 3),
    "KTVIC train (dedup)": (1, 1),
    "KTVIC test (dedup)": (2, 3),
    "Crossmodal-3600 vi": (3, 4),
}
DEMO = {"train_size": 0, "validation_size": 0, "test_size": 12, "image_size": 32}  # a small demo test split
CAPTIONS = ["một con mèo", "hai chiếc xe máy trên đường", "bầu trời xanh"]


# ---------------------------------------------------------------- helpers and fixtures


def run_eval(*args, tmp_path):
    """`eval.py ARGS` in this process, with a private corpus cache; returns (results, JSON file, Markdown file)."""
    output = tmp_path / "out" / "results.json"
    results = eval_cli.main([*map(str, args), "--cache-dir", str(tmp_path / "cache"), "--output", str(output)])
    return results, json.loads(output.read_text()), output.with_suffix(".md").read_text()


def dedup_report(path, corpus, data_dir, split, removed, cache_dir):
    """A near-duplicate report for `corpus` `split` that removes the images `removed` (ids)."""
    target = load_corpus(corpus, data_dir, split, cache_dir=cache_dir)
    similarity = np.array([0.9 if image_id in removed else 0.1 for image_id in target["image_id"]])
    reference = {"corpus": "uit-openviic", "split": "train", "dataset": {"image_id": ["00000000009.jpg"]}}
    report = make_report(
        {"corpus": corpus, "split": split, "dataset": target},
        reference,
        np.zeros(len(target), int),
        similarity,
        0.8,
        "test",
    )
    write_report(report, path)
    return path


@pytest.fixture
def data_root(tmp_path):
    """The paper suite's layout: the three corpora as downloaded and the KTVIC reports (test loses image 361)."""
    root = tmp_path / "data"
    write_uit(root / "uit-openviic")
    write_ktvic(root / "ktvic")
    write_crossmodal(root / "crossmodal3600")
    for split, removed in (("train", ()), ("test", ("361",))):
        report = root / "dedup" / f"ktvic-{split}.json"
        dedup_report(report, "ktvic", root / "ktvic", split, removed, tmp_path / "cache")
    return root


@pytest.fixture
def model_dir(make_model, tmp_path):
    """A tiny ViCLIP-OT model saved as users get it."""
    make_model().save_pretrained(tmp_path / "model")
    return tmp_path / "model"


class MatchingEncoder:
    """Test double: distinct random unit vectors for images (keyed by their pixels), and each caption mapped to
    its image's vector."""

    def __init__(self, corpora):
        self.image_of = {
            caption: self.key(row["image"]) for corpus in corpora for row in corpus for caption in row["captions"]
        }

    @staticmethod
    def key(image):
        return hashlib.sha256(image.tobytes()).digest()

    @staticmethod
    def vector(key):
        return F.normalize(torch.from_numpy(np.random.default_rng(list(key)).standard_normal(32)).float(), dim=0)

    def encode_image(self, images, batch_size=32):
        return torch.stack([self.vector(self.key(image)) for image in images])

    def encode_text(self, texts, batch_size=32):
        return torch.stack([self.vector(self.image_of[text]) for text in texts])


def tiny_dual_encoder(folder, kind):
    """A randomly initialised transformers CLIP or SigLIP with its processor (tokenizer trained here), saved."""
    tokenizer = train_tokenizer(CAPTIONS * 5, vocab_size=200)
    text = {
        "vocab_size": len(tokenizer),
        **TINY_TOWER,
        "max_position_embeddings": 24,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = TINY_VISION
    torch.manual_seed(0)
    if kind == "clip":
        special = {"bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id}
        config = CLIPConfig(text_config={**text, **special}, vision_config=vision, projection_dim=8, **special)
        model = CLIPModel(config)
        images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        processor = CLIPProcessor(image_processor=images, tokenizer=tokenizer)
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        images = SiglipImageProcessor(size={"height": 32, "width": 32})
        processor = SiglipProcessor(image_processor=images, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_dual_encoder(tmp_path_factory.mktemp("clip"), "clip")


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return tiny_dual_encoder(tmp_path_factory.mktemp("siglip"), "siglip")


def saved_sentence_transformer(folder, *modules):
    from sentence_transformers import SentenceTransformer

    SentenceTransformer(modules=list(modules), device="cpu").save(str(folder))
    return folder


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("corpus", ["demo", "json"])
def test_end_to_end_with_a_tiny_model(corpus, model_dir, tmp_path):
    if corpus == "demo":
        where = [f"--option={option}={value}" for option, value in DEMO.items()]
    else:
        write_json_corpus(tmp_path / "converted")
        where = ["--data-dir", tmp_path / "converted", "--split", "val"]
    _, written, table = run_eval(
        "--model",
        model_dir,
        "--dataset",
        corpus,
        *where,
        "--batch-size",
        5,
        "--bootstrap",
        50,
        "--plots",
        tmp_path / "plots",
        tmp_path=tmp_path,
    )
    assert written["model"] == str(model_dir) and written["encoder"] == "ViCLIPOTModel"
    assert written["precision"] == "fp32" and written["bootstrap"] == {"samples": 50, "seed": 0}
    ((name, entry),) = written["evaluations"].items()
    assert name == f"{corpus} {'test' if corpus == 'demo' else 'val'}"
    # the Markdown table next to the JSON shows the JSON's values, with their intervals, in the paper's order
    cells = []
    for key in [*RECALLS, "avg_R", "alignment", "modality_gap"]:
        digits = 4 if key in ("alignment", "modality_gap") else 2
        low, high = entry["metrics"][f"{key}_ci95"]
        cells.append(f"{entry['metrics'][key]:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]")
    assert f"| {name} | " + " | ".join(cells) + " |" in table.splitlines()
    assert list(entry) == ENTRY and set(entry["metrics"]) == set(METRICS + INTERVALS)

    # the same numbers from embeddings made here, without encode_corpus
    if corpus == "demo":
        dataset = load_corpus("demo", split="test", cache_dir=tmp_path / "cache", **DEMO)
    else:
        dataset = load_corpus("json", tmp_path / "converted", "val", cache_dir=tmp_path / "cache")
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True)
    images = model.encode_image([row["image"] for row in dataset])
    texts = model.encode_text([caption for row in dataset for caption in row["captions"]])
    index = [i for i, row in enumerate(dataset) for _ in row["captions"]]
    expected = retrieval_metrics(images, texts, index)
    assert (entry["images"], entry["captions"]) == (len(dataset), len(index))
    for key, value in expected.items():
        assert entry["metrics"][key] == pytest.approx(value, abs=1e-5), key
    for key in INTERVALS:
        low, high = entry["metrics"][key]
        assert low <= high

    for picture in ("embedding_map.png", "retrieval_examples.png"):
        with Image.open(tmp_path / "plots" / picture) as image:
            assert image.format == "PNG" and min(image.size) >= 200


def test_paper_suite_on_fixture_folders(data_root, model_dir, tmp_path):
    _, written, table = run_eval("--model", model_dir, "--suite", "paper", "--data-root", data_root, tmp_path=tmp_path)
    assert list(written["evaluations"]) == list(SUITE_ROWS)
    for name, (images, captions) in SUITE_ROWS.items():
        entry = written["evaluations"][name]
        assert (entry["images"], entry["captions"]) == (images, captions), name
        assert set(entry["metrics"]) == set(METRICS)
    assert written["evaluations"]["KTVIC test (dedup)"]["dedup_report"] == str(data_root / "dedup" / "ktvic-test.json")
    assert written["evaluations"]["Crossmodal-3600 vi"]["options"] == {"language": "vi"}
    assert [line.split(" | ")[0] for line in table.splitlines()[4:8]] == [f"| {name}" for name in SUITE_ROWS]
    assert "- KTVIC test (dedup): 2 images, 3 captions" in table


def test_matching_embeddings_score_100(data_root, tmp_path, monkeypatch):
    write_json_corpus(tmp_path / "converted")
    corpora = [eval_set.load(tmp_path / "cache") for eval_set in paper_suite(data_root)]
    corpora.append(load_corpus("json", tmp_path / "converted", "test", cache_dir=tmp_path / "cache"))
    monkeypatch.setattr(eval_cli, "load_encoder", lambda *args, **kwargs: MatchingEncoder(corpora))
    _, suite, table = run_eval(
        "--model", "matching", "--suite", "paper", "--data-root", data_root, "--bootstrap", 20, tmp_path=tmp_path
    )
    _, single, _ = run_eval(
        "--model", "matching", "--dataset", "json", "--data-dir", tmp_path / "converted", tmp_path=tmp_path
    )
    entries = [*suite["evaluations"].values(), *single["evaluations"].values()]
    assert len(entries) == 5
    for entry in entries:
        metrics = entry["metrics"]
        assert all(metrics[key] == 100 for key in RECALLS + ["avg_R"])
        assert all(metrics[f"{side}_{kind}_rank"] == 1 for side in ("i2t", "t2i") for kind in ("mean", "median"))
        assert metrics["alignment"] == pytest.approx(1) and metrics["modality_gap"] == pytest.approx(0, abs=1e-6)
    assert all(entry["metrics"]["t2i_R@1_ci95"] == [100, 100] for entry in suite["evaluations"].values())
    assert "| UIT-OpenViIC test | 100.00 [100.00, 100.00] |" in table


# ---------------------------------------------------------------- baselines


def test_clip_baseline_matches_sentence_transformers_and_runs_end_to_end(clip_dir, photos, tmp_path):
    from sentence_transformers import SentenceTransformer

    encoder = load_encoder(clip_dir)
    assert isinstance(encoder, TransformersEncoder) and encoder.text_kwargs["padding"] is True
    reference = SentenceTransformer(str(clip_dir), device="cpu")  # sentence-transformers' own CLIP handling
    for inputs, encode in ((photos, encoder.encode_image), (CAPTIONS, encoder.encode_text)):
        expected = F.normalize(reference.encode(inputs, convert_to_tensor=True))
        torch.testing.assert_close(encode(inputs, batch_size=2), expected)

    write_json_corpus(tmp_path / "converted")
    _, written, _ = run_eval(
        "--model", clip_dir, "--dataset", "json", "--data-dir", tmp_path / "converted", tmp_path=tmp_path
    )
    assert written["encoder"] == "TransformersEncoder"
    assert set(written["evaluations"]["json test"]["metrics"]) == set(METRICS)


def test_siglip_baseline_pads_texts_to_the_full_length(siglip_dir, photos):
    encoder = load_encoder(siglip_dir)
    model, processor = AutoModel.from_pretrained(siglip_dir), AutoProcessor.from_pretrained(siglip_dir)
    with torch.no_grad():
        images = model.get_image_features(**processor(images=photos, return_tensors="pt")).pooler_output
        padded = processor(text=CAPTIONS, padding="max_length", max_length=24, return_tensors="pt")
        assert padded["input_ids"].shape == (3, 24)
        texts = model.get_text_features(**padded).pooler_output
        longest = model.get_text_features(**processor(text=CAPTIONS, padding=True, return_tensors="pt")).pooler_output
    torch.testing.assert_close(encoder.encode_image(photos), F.normalize(images))
    torch.testing.assert_close(encoder.encode_text(CAPTIONS), F.normalize(texts))
    assert not torch.allclose(F.normalize(texts), F.normalize(longest), atol=1e-3)  # the padding matters


def test_sentence_transformers_baseline_and_a_separate_text_model(clip_dir, photos, tmp_path):
    from sentence_transformers.base.modules import Normalize, Transformer

    st_dir = saved_sentence_transformer(tmp_path / "st_clip", Transformer(str(clip_dir)), Normalize())
    encoder = load_encoder(st_dir)
    assert isinstance(encoder, SentenceTransformersEncoder) and encoder.encodes_images()
    clip = load_encoder(clip_dir)
    torch.testing.assert_close(encoder.encode_image(photos), clip.encode_image(photos))
    torch.testing.assert_close(encoder.encode_text(CAPTIONS), clip.encode_text(CAPTIONS))

    paired = load_encoder(clip_dir, text_model=st_dir)
    assert isinstance(paired, PairedEncoder) and isinstance(paired.image_encoder, TransformersEncoder)
    torch.testing.assert_close(paired.encode_text(CAPTIONS), encoder.encode_text(CAPTIONS))


@pytest.fixture(scope="module")
def baseline_dirs(tmp_path_factory):
    from replicas import clip_baseline, siglip_baseline

    root = tmp_path_factory.mktemp("baselines")
    return {"siglip": siglip_baseline(root / "siglip", VIETNAMESE_TEXTS * 5), "clip": clip_baseline(root / "clip")}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_baselines_encode_as_their_models_and_run_in_eval(kind, baseline_dirs, tmp_path):
    from transformers import AutoModel as Auto

    from viclip_ot.encoders import load_encoder

    folder = baseline_dirs[kind]
    encoder = load_encoder(folder)
    model, processor = Auto.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    assert type(processor.tokenizer).__name__ == {"siglip": "SiglipTokenizer", "clip": "CLIPTokenizer"}[kind]
    padding = "max_length" if kind == "siglip" else True  # SigLIP was trained on texts padded to full length
    limit = model.config.text_config.max_position_embeddings
    texts = VIETNAMESE_TEXTS[:3]
    with torch.no_grad():
        inputs = processor.tokenizer(texts, padding=padding, truncation=True, max_length=limit, return_tensors="pt")
        expected = F.normalize(model.get_text_features(**inputs).pooler_output, dim=-1)
    torch.testing.assert_close(encoder.encode_text(texts), expected, atol=1e-6, rtol=0)

    result = subprocess.run(
        [
            sys.executable,
            "eval.py",
            "--model",
            str(folder),
            "--dataset",
            "demo",
            "--option",
            "train_size=0",
            "--option",
            "validation_size=0",
            "--option",
            "test_size=4",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--output",
            str(tmp_path / "results.json"),
        ],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (entry,) = json.loads((tmp_path / "results.json").read_text())["evaluations"].values()
    assert entry["images"] == 4 and 0 <= entry["metrics"]["t2i_R@1"] <= 100


@pytest.mark.slow
def test_a_baseline_missing_a_package_is_one_clear_line(baseline_dirs, tmp_path):
    script = (
        "import runpy, sys; sys.modules['sentencepiece'] = None; sys.argv = sys.argv[1:]\n"
        "runpy.run_path('eval.py', run_name='__main__')\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "eval.py",
            "--model",
            str(baseline_dirs["siglip"]),
            "--dataset",
            "demo",
            "--option",
            "test_size=2",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--output",
            str(tmp_path / "out.json"),
        ],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"eval.py: error: cannot load {baseline_dirs['siglip']}: a package it needs is missing")
    assert "SentencePiece" in line


# ---------------------------------------------------------------- bootstrap, table, pictures


def brute_force_metrics(x, y, index, queries):
    """Metrics with image i and its captions counted queries.count(i) times as queries, against the whole gallery,
    with a dense score matrix and loops (ties count against the query)."""
    scores = x @ y.T
    i2t, t2i, rows = [], [], []
    for i in queries:
        own = [k for k in range(len(y)) if index[k] == i]
        best = max(scores[i, k] for k in own)
        i2t.append(1 + sum(scores[i, k] >= best for k in range(len(y)) if index[k] != i))
        for k in own:
            t2i.append(sum(scores[j, k] >= scores[i, k] for j in range(len(x))))
            rows.append((i, k))
    out = {f"i2t_R@{k}": 100 * np.mean(np.array(i2t) <= k) for k in (1, 5, 10)}
    out |= {f"t2i_R@{k}": 100 * np.mean(np.array(t2i) <= k) for k in (1, 5, 10)}
    out["avg_R"] = np.mean(list(out.values()))
    out["i2t_mean_rank"], out["t2i_mean_rank"] = np.mean(i2t), np.mean(t2i)
    out["alignment"] = np.mean([x[i] @ y[k] for i, k in rows])
    out["modality_gap"] = np.linalg.norm(np.mean([y[k] - x[i] for i, k in rows], axis=0))
    return out


def test_bootstrap_reweights_queries_exactly():
    rng = np.random.default_rng(0)
    index = np.repeat(np.arange(12), rng.integers(1, 4, 12))
    x = F.normalize(torch.randn(12, 6, generator=torch.Generator().manual_seed(0)), dim=1)
    y = F.normalize(x[index] + 0.9 * torch.randn(len(index), 6, generator=torch.Generator().manual_seed(1)), dim=1)
    y[3] = y[4]  # a tie
    x64, y64 = x.double().numpy(), y.double().numpy()
    stats = per_image_statistics(x, y, index)

    whole = weighted_metrics(stats, np.ones((1, 12)))
    expected = retrieval_metrics(x, y, index)
    for key, values in whole.items():
        assert values[0] == pytest.approx(expected[key], abs=1e-6), key

    queries = [0, 0, 0, 2, 5, 5, 7, 11]
    weights = np.bincount(queries, minlength=12)[None]
    for key, value in brute_force_metrics(x64, y64, index, queries).items():
        assert weighted_metrics(stats, weights)[key][0] == pytest.approx(value, abs=1e-5), key

    intervals = bootstrap_intervals(x, y, index, samples=300, seed=3)
    assert list(intervals) == INTERVALS
    assert intervals == bootstrap_intervals(x, y, index, samples=300, seed=3)
    assert intervals != bootstrap_intervals(x, y, index, samples=300, seed=4)
    assert all(low <= high for low, high in intervals.values())
    low, high = intervals["t2i_R@10_ci95"]
    assert low < expected["t2i_R@10"] < high


def test_table_shows_intervals():
    metrics = {key: 50.0 for key in METRICS}
    metrics |= {"alignment": 0.5, "t2i_R@1_ci95": [40.0, 61.25], "alignment_ci95": [0.4, 0.6]}
    row = format_metrics_table({"set": metrics}).splitlines()[2]
    assert row.startswith("| set | 50.00 | 50.00 | 50.00 | 50.00 [40.00, 61.25] | 50.00 |")
    assert "| 0.5000 [0.4000, 0.6000] |" in row
    partial = format_metrics_table({"set": {"t2i_R@1": 28.6}}).splitlines()[2]
    assert partial == "| set | - | - | - | 28.60 | - | - | - | - | - |"


def test_pca_map_without_umap(monkeypatch):
    from sklearn.decomposition import PCA

    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` now raises ImportError, as when not installed
    points = np.random.default_rng(0).standard_normal((40, 8)) * np.arange(1, 9)
    coords, method = project_2d(points)
    assert method == "PCA"
    np.testing.assert_allclose(np.abs(coords), np.abs(PCA(2).fit_transform(points)), atol=1e-8)


def test_umap_map_keeps_clusters_apart():
    """Three tight clusters of unit vectors in 16-d: UMAP (cosine) puts every point nearer its own cluster's centre
    than any other cluster's, and is deterministic for a seed."""
    pytest.importorskip("umap")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 16))
    labels = np.repeat(np.arange(3), 30)
    points = centres[labels] + 0.05 * rng.standard_normal((90, 16))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    coords, method = project_2d(points, seed=1)
    assert method == "UMAP" and coords.shape == (90, 2)
    means = np.stack([coords[labels == label].mean(0) for label in range(3)])
    nearest = np.linalg.norm(coords[:, None] - means[None], axis=-1).argmin(1)
    assert (nearest == labels).all()
    np.testing.assert_array_equal(coords, project_2d(points, seed=1)[0])


# ---------------------------------------------------------------- clear errors


def text_only_sentence_transformer(folder, text_tower_dir):
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    transformer = Transformer(str(text_tower_dir))
    return saved_sentence_transformer(folder, transformer, Pooling(transformer.get_embedding_dimension()))


ERRORS = {
    "not a retrieval model": (
        lambda scratch, text_tower: text_tower,
        r"is not an image-text retrieval model: its config.json has model_type 'bert'",
    ),
    "a text-only sentence-transformers model": (
        lambda scratch, text_tower: text_only_sentence_transformer(scratch / "st_text", text_tower),
        r"is a sentence-transformers model that encodes only text",
    ),
    "no such folder": (lambda scratch, text_tower: scratch / "missing", r"no such model folder: .*missing"),
    "an empty folder": (lambda scratch, text_tower: scratch, r"holds neither config.json nor modules.json"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_model_errors(case, text_tower_dir, tmp_path):
    make_model_argument, message = ERRORS[case]
    (tmp_path / "scratch").mkdir()
    with pytest.raises(EncoderError, match=message):
        run_eval(
            "--model",
            make_model_argument(tmp_path / "scratch", text_tower_dir),
            "--dataset",
            "demo",
            *(f"--option={option}={value}" for option, value in DEMO.items()),
            tmp_path=tmp_path,
        )


def test_corpus_errors(model_dir, data_root, tmp_path):
    ktvic = ["--model", model_dir, "--dataset", "ktvic", "--data-dir", data_root / "ktvic"]
    with pytest.raises(CorpusError, match=r"ktvic has no split 'validation' .*available: train, test"):
        run_eval(*ktvic, "--split", "validation", tmp_path=tmp_path)
    write_uit(tmp_path / "uit")
    report = dedup_report(tmp_path / "uit.json", "uit-openviic", tmp_path / "uit", "test", (), tmp_path / "cache")
    with pytest.raises(CorpusError, match=r"the dedupe report is for uit-openviic test, not ktvic test"):
        run_eval(*ktvic, "--dedup-report", report, tmp_path=tmp_path)
    (data_root / "dedup" / "ktvic-train.json").unlink()
    with pytest.raises(CorpusError, match=r"KTVIC train .* the report .*ktvic-train.json does not exist: make it with"):
        run_eval("--model", model_dir, "--suite", "paper", "--data-root", data_root, tmp_path=tmp_path)


@pytest.mark.slow
def test_command_line_error_is_one_line(text_tower_dir, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "eval.py",
            "--model",
            str(text_tower_dir),
            "--dataset",
            "demo",
            "--option",
            "train_size=0",
            "--option",
            "validation_size=0",
            "--option",
            "test_size=2",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--output",
            str(tmp_path / "results.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"eval.py: error: {text_tower_dir} is not an image-text retrieval model")
    assert not (tmp_path / "results.json").exists()
