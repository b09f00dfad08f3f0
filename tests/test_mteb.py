"""The mteb wrapper (`viclip_ot/mteb.py`): mteb's retrieval metrics through it equal this project's, its
`ModelMeta`, mteb's mock image-text tasks, and `python -m viclip_ot.mteb`."""

import hashlib
import json

import datasets
import mteb
import numpy as np
import pytest
import torch
from mteb.mocks.mock_run import get_compatible_mock_tasks

import eval as eval_cli
from dataset_scripts import load_corpus
from viclip_ot import mteb as viclip_mteb
from viclip_ot.evaluation import encode_corpus
from viclip_ot.model_card import write_model_card
from viclip_ot.retrieval import retrieval_metrics
from viclip_ot.small_towers import save_small_text_tower

DEMO = {"train_size": 0, "validation_size": 0, "test_size": 12, "image_size": 32}  # 12 images, 60 captions
KS = (1, 5, 10)


@pytest.fixture
def model_dir(make_model, tmp_path):
    """A small random ViCLIP-OT model saved as a folder, its tokenizer trained on the demo's captions (so that
    different captions get different tokens, and different scores)."""
    captions = sum(load_corpus("demo", split="test", cache_dir=tmp_path / "cache", **DEMO)["captions"], [])
    tower = save_small_text_tower(tmp_path / "tower", captions, model_type="roberta")
    folder = tmp_path / "model"
    make_model(text_folder=tower).save_pretrained(folder)
    return folder


def assert_tie_free(encoded, margin=1e-6):
    """Every caption's scores against the images, and every image's against the captions, are at least `margin`
    apart, so float rounding cannot reorder them and both implementations rank the same way."""
    scores = (encoded.text_embeds @ encoded.image_embeds.T).double().numpy()
    for ranked in (scores, scores.T):  # text->image rows, image->text rows
        gaps = np.diff(np.sort(ranked, axis=1), axis=1)
        assert gaps.min() > margin, "tied scores: choose another split or model seed"
    return scores


def mteb_scores(result):
    return {task.task_name: task.scores["test"][0] for task in result.task_results}


def test_hit_rate_equals_recall_at_k_both_ways(model_dir, tmp_path):
    encoder = viclip_mteb.load_model(model_dir, device="cpu")
    split = load_corpus("demo", split="test", cache_dir=tmp_path / "cache", **DEMO)
    encoded = encode_corpus(encoder.model, split, show_progress_bar=False)
    scores = assert_tie_free(encoded)
    ours = retrieval_metrics(encoded.image_embeds, encoded.text_embeds, encoded.caption_image_index, ks=KS)
    assert 0 < ours["i2t_R@10"] < 100 and 0 < ours["t2i_R@5"] < 100  # the comparison is not between extremes

    result = mteb.evaluate(encoder, viclip_mteb.dataset_tasks(split, "DemoPart"), cache=None, show_progress_bar=False)
    theirs = mteb_scores(result)
    t2i, i2t = theirs["DemoPartT2IRetrieval"], theirs["DemoPartI2TRetrieval"]
    image_of = encoded.caption_image_index.numpy()
    for k in KS:
        assert t2i[f"hit_rate_at_{k}"] == pytest.approx(ours[f"t2i_R@{k}"] / 100, abs=1e-5)
        assert i2t[f"hit_rate_at_{k}"] == pytest.approx(ours[f"i2t_R@{k}"] / 100, abs=1e-5)
        assert t2i[f"recall_at_{k}"] == t2i[f"hit_rate_at_{k}"]  # one relevant image per caption
        # image->text recall: the fraction of the image's captions among its top k, averaged over images
        top = np.argsort(-scores.T, axis=1)[:, :k]
        found = [np.mean(image_of[top[image]] == image) * k / np.sum(image_of == image) for image in range(len(split))]
        assert i2t[f"recall_at_{k}"] == pytest.approx(np.mean(found), abs=1e-5)


def test_model_meta(make_model, tmp_path):
    model = make_model()
    folder = tmp_path / "my-model"
    model.save_pretrained(folder)
    meta = viclip_mteb.load_model(folder, device="cpu").mteb_model_meta
    assert meta.name == "local/my-model"
    assert meta.revision == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:12]
    assert meta.embed_dim == model.config.projection_dim
    assert meta.n_parameters == sum(p.numel() for p in model.parameters())
    assert meta.max_tokens == model.processor.tokenizer.model_max_length
    assert (meta.modalities, meta.languages, meta.similarity_fn_name) == (["image", "text"], ["vie-Latn"], "cosine")
    assert meta.training_datasets is None and meta.license is None  # no model card says

    # a model card written by train.py: its name, license and training corpus; a field given replaces what is read
    write_model_card(folder, model.config, model_name="xm", training_config={"dataset": "crossmodal3600"})
    encoder = viclip_mteb.load_model(folder, device="cpu", public_training_code="https://example.org/code")
    meta = encoder.mteb_model_meta
    assert (meta.name, meta.license) == ("local/xm", "gpl-3.0")
    assert meta.training_datasets == {"XM3600T2IRetrieval", "XM3600I2TRetrieval"}
    assert meta.public_training_code == "https://example.org/code"
    reloaded = meta.load_model()  # mteb's own loading path
    assert reloaded.mteb_model_meta == meta
    texts = ["một con mèo", "hai chiếc xe máy trên đường phố"]
    torch.testing.assert_close(reloaded.model.encode_text(texts), encoder.model.encode_text(texts))


def test_mock_image_text_tasks_run(model_dir):
    """mteb's own mock tasks between images and texts (retrieval both ways, pair and zero-shot classification,
    image+text queries), built in memory: they run offline through the wrapper and give finite scores."""
    encoder = viclip_mteb.load_model(model_dir, device="cpu")
    tasks = [
        task
        for task in get_compatible_mock_tasks(encoder)
        if task.metadata.category in ("t2i", "i2t", "it2i") and not task.metadata.is_multilingual
    ]
    names = {task.metadata.name for task in tasks}
    assert {"MockAny2AnyRetrievalT2I", "MockAny2AnyRetrievalI2T", "MockZeroShotClassification"} <= names
    result = mteb.evaluate(encoder, tasks, cache=None, show_progress_bar=False)
    assert {task.task_name for task in result.task_results} == names
    assert all(np.isfinite(task.get_score()) for task in result.task_results)


def test_cli_on_the_demo_equals_eval_py(model_dir, tmp_path):
    options = [f"--option={k}={v}" for k, v in DEMO.items()]
    cache = ["--cache-dir", str(tmp_path / "cache")]
    split = load_corpus("demo", split="test", cache_dir=tmp_path / "cache", **DEMO)
    assert_tie_free(
        encode_corpus(viclip_mteb.load_model(model_dir, device="cpu").model, split, show_progress_bar=False)
    )

    output = tmp_path / "out" / "mteb.json"
    viclip_mteb.main(["--model", str(model_dir), "--corpus", "demo", *options, *cache, "--output", str(output)])
    written = json.loads(output.read_text())
    assert written["model_meta"]["modalities"] == ["image", "text"]
    assert "| DemoT2IRetrieval | default | test |" in output.with_suffix(".md").read_text()
    theirs = {task: entries["default/test"] for task, entries in written["scores"].items()}

    evaluated = eval_cli.main(
        ["--model", str(model_dir), "--dataset", "demo", *options, *cache, "--output", str(tmp_path / "eval.json")]
    )
    ours = evaluated["evaluations"]["demo test"]["metrics"]
    for k in KS:
        assert theirs["DemoT2IRetrieval"][f"hit_rate_at_{k}"] == pytest.approx(ours[f"t2i_R@{k}"] / 100, abs=1e-5)
        assert theirs["DemoI2TRetrieval"][f"hit_rate_at_{k}"] == pytest.approx(ours[f"i2t_R@{k}"] / 100, abs=1e-5)


def test_cli_says_when_mieb_data_are_not_cached(model_dir, tmp_path, monkeypatch, capsys):
    # the Hub is off (conftest: HF_HUB_OFFLINE=1) and the datasets cache is empty
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    with pytest.raises(SystemExit) as stop:
        viclip_mteb.main(["--model", str(model_dir), "--output", str(tmp_path / "r.json")])
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert errors[0].startswith("python -m viclip_ot.mteb: error: the data of XM3600T2IRetrieval (mteb/xm3600")
    assert "not in the local datasets cache" in errors[0]
    assert not (tmp_path / "r.json").exists()
