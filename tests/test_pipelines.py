"""The transformers pipelines on a saved demo model (trust_remote_code): zero-shot image classification scores are the
softmax of the model's own logits_per_image, image features are the model's image embeddings; the card shows both."""

import pytest
import torch
from search_fixtures import save_demo_model, write_demo_images
from transformers import AutoModel, pipeline

from viclip_ot.model_card import write_model_card

LABELS = ["hình tròn màu đỏ", "hình vuông màu xanh lá", "tam giác màu vàng", "nền đen"]
TEMPLATE = "một bức ảnh về {}"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipelines")
    model_dir = save_demo_model(folder, folder / "cache")
    return model_dir, write_demo_images(folder / "images", folder / "cache", 2)


def test_zero_shot_image_classification(saved):
    model_dir, images = saved
    classifier = pipeline("zero-shot-image-classification", model=str(model_dir), trust_remote_code=True)
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    for image in images:
        results = classifier(str(image), candidate_labels=LABELS, hypothesis_template=TEMPLATE)
        inputs = model.processor(text=[TEMPLATE.format(label) for label in LABELS], images=[image])
        with torch.no_grad():
            expected = model(**inputs).logits_per_image[0].softmax(-1)
        assert [result["score"] for result in results] == sorted((result["score"] for result in results), reverse=True)
        scores = {result["label"]: result["score"] for result in results}
        assert sorted(scores) == sorted(LABELS)
        torch.testing.assert_close(torch.tensor([scores[label] for label in LABELS]), expected, atol=1e-5, rtol=1e-5)


def test_image_feature_extraction(saved):
    model_dir, images = saved
    extractor = pipeline("image-feature-extraction", model=str(model_dir), trust_remote_code=True)
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    features = torch.tensor([extractor(str(image))[0] for image in images])
    torch.testing.assert_close(features, model.encode_image(images), atol=1e-5, rtol=1e-5)


def test_forward_with_one_side(saved):
    model_dir, images = saved
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    texts = model.processor(text=LABELS)
    with torch.no_grad():
        only_text = model(**texts)
        only_images = model(pixel_values=model.processor(images=images)["pixel_values"])
    assert only_text.logits_per_image is None and only_images.text_embeds is None
    torch.testing.assert_close(only_text.text_embeds, model.encode_text(LABELS), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(only_images.image_embeds, model.encode_image(images), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="needs both"):
        model(**texts, return_loss=True)


def test_model_card_pipeline_tag_and_examples(saved, tmp_path):
    model_dir, _ = saved
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True)
    card = write_model_card(tmp_path, model.config, repo_id="someone/viclip-ot-demo")
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    text = (tmp_path / "README.md").read_text()
    assert "pipeline_tag: zero-shot-image-classification" in text
    assert 'pipeline("zero-shot-image-classification", model="someone/viclip-ot-demo", trust_remote_code=True)' in text
    assert 'pipeline("image-feature-extraction", model="someone/viclip-ot-demo", trust_remote_code=True)' in text


def test_config_saved_without_custom_pipelines_gets_them_and_keeps_its_fingerprint(saved, tmp_path):
    """A folder saved before `custom_pipelines` existed builds the project's pipelines, and its search-index
    fingerprint is the one such a model had (the key is ignored)."""
    import json
    import shutil

    from viclip_ot.search import model_fingerprint

    model_dir, images = saved
    old = shutil.copytree(model_dir, tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    del config["custom_pipelines"]
    (old / "config.json").write_text(json.dumps(config))
    extractor = pipeline("image-feature-extraction", model=str(old), trust_remote_code=True)
    assert type(extractor).__name__ == "ViCLIPOTImageFeatureExtractionPipeline"
    fingerprint = model_fingerprint(extractor.model)
    assert "custom_pipelines" in extractor.model.config.to_dict()
    del extractor.model.config.custom_pipelines  # the config as models had it before
    assert "custom_pipelines" not in extractor.model.config.to_dict()
    assert model_fingerprint(extractor.model) == fingerprint
