"""Vietnamese text normalisation in the processor: the tone rule against hand-written pairs, and NFC/NFD and both
tone placements giving the same token ids and embeddings through every text path."""

import json
import unicodedata

import pytest
import torch
from replicas import vietnamese_sbert

from processing_viclip_ot import ViCLIPOTProcessor, normalize_vietnamese

# (mark on the first vowel, mark on the second): every cluster and tone, capitals, and words around them.
PAIRS = [
    ("hòa", "hoà"),
    ("tóa", "toá"),
    ("thỏa", "thoả"),
    ("xõa", "xoã"),
    ("họa", "hoạ"),
    ("hòe", "hoè"),
    ("lóe", "loé"),
    ("khỏe", "khoẻ"),
    ("nõe", "noẽ"),
    ("lọe", "loẹ"),
    ("tùy", "tuỳ"),
    ("thúy", "thuý"),
    ("thủy", "thuỷ"),
    ("lũy", "luỹ"),
    ("lụy", "luỵ"),
    ("HÒA", "HOÀ"),
    ("Hòa Bình", "Hoà Bình"),
    ("KHỎE", "KHOẺ"),
    ("Thủy", "Thuỷ"),
    ("ỦY BAN", "UỶ BAN"),
    ("òa khóc", "oà khóc"),
    ("bông hoa hòa bình, sức khỏe và thủy triều.", "bông hoa hoà bình, sức khoẻ và thuỷ triều."),
]
# Syllables whose mark has one place (a final consonant or vowel follows, or "qu"): no setting moves it.
FIXED = ["hoàn", "hoài", "ngoặt", "khoảng", "huỳnh", "khuỷu", "quý", "quỳ", "Quỷ", "thuyền", "hoa", "khuya"]


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_tone_rule(first, second):
    assert normalize_vietnamese(first, "oà") == second
    assert normalize_vietnamese(second, "oà") == second
    assert normalize_vietnamese(second, "òa") == first
    assert normalize_vietnamese(first, "òa") == first
    assert normalize_vietnamese(first, None) == first
    decomposed = unicodedata.normalize("NFD", first)
    assert decomposed != first and normalize_vietnamese(decomposed, None) == first
    assert normalize_vietnamese(decomposed, "oà") == second


@pytest.mark.parametrize("word", FIXED)
def test_fixed_placements_stay(word):
    assert normalize_vietnamese(word, "oà") == normalize_vietnamese(word, "òa") == word


def test_unknown_setting_is_an_error():
    with pytest.raises(ValueError, match="tone_normalization='old'"):
        normalize_vietnamese("hoà", "old")


CAPTIONS = [
    "một con mèo đang nằm trên ghế sofa, khoẻ re",
    "cờ hoà bình tung bay trên nóc UỶ BAN",
    "người đàn ông khoẻ mạnh đi thuyền trên sông",
    "Thuỷ triều lên ở Hoà Bình, khuya",
    "hoa loè loẹt bên bờ luỹ tre",
    "HOÀ CẢNH MÙA THU, THUÝ VÀ TOÁ",
]


def variants(caption):
    """The caption typed four ways: as is, NFD, the other tone placement, and both at once."""
    other = normalize_vietnamese(caption, "òa")
    assert other != caption  # every caption has a syllable with a movable mark
    return [caption, unicodedata.normalize("NFD", caption), other, unicodedata.normalize("NFD", other)]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A PhoBERT-replica model (its BPE learned on the captions as written here) saved with its processor."""
    from viclip_ot.small_towers import small_model

    folder = tmp_path_factory.mktemp("normalisation")
    words = CAPTIONS + [normalize_vietnamese(caption, "òa") for caption in CAPTIONS]
    tower = vietnamese_sbert(folder / "phobert", words * 3)
    torch.manual_seed(0)
    model = small_model(tower).eval()
    model.save_pretrained(folder / "model")
    return folder / "model"


def tokens(tokenizer, texts):
    return tokenizer(texts, padding=True, return_tensors="pt")["input_ids"]


def test_every_text_path_gives_the_same_ids_and_embeddings(saved_model, photos):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from viclip_ot.data import ContrastiveCollator

    model = AutoModel.from_pretrained(saved_model, trust_remote_code=True).eval()
    processor = model.processor
    assert processor.tone_normalization == "oà"
    raw_ids = [tokens(processor.tokenizer, variants(caption)) for caption in CAPTIONS]
    assert all(not torch.equal(ids[0], ids[2]) for ids in raw_ids)  # the bare tokenizer tells the placements apart
    st_model = SentenceTransformer(str(saved_model), trust_remote_code=True, device="cpu")
    collator = ContrastiveCollator(processor, image_transform=lambda image: torch.zeros(3, 32, 32))
    for caption in CAPTIONS:
        texts = variants(caption)
        # The independent reference: the bare tokenizer on the NFC, second-vowel spelling written by hand above.
        expected_ids = tokens(processor.tokenizer, [caption] * len(texts))
        assert torch.equal(processor(text=texts)["input_ids"], expected_ids)
        rows = [{"image": photos[0], "image_id": "0", "captions": texts}]
        assert torch.equal(collator(rows)["input_ids"], expected_ids)
        with torch.no_grad():
            expected = torch.nn.functional.normalize(
                model.get_text_features(
                    input_ids=expected_ids, attention_mask=torch.ones_like(expected_ids)
                ).pooler_output
            )
        torch.testing.assert_close(model.encode_text(texts), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(torch.from_numpy(st_model.encode(texts)), expected, atol=1e-6, rtol=0)


def test_off_and_other_placement_are_saved(saved_model, tmp_path):
    model_processor = ViCLIPOTProcessor.from_pretrained(saved_model, trust_remote_code=True)
    for setting, expected in ((None, "thủy và thuỷ"), ("òa", "thủy và thủy"), ("oà", "thuỷ và thuỷ")):
        model_processor.tone_normalization = setting
        model_processor.save_pretrained(tmp_path / str(setting))
        loaded = ViCLIPOTProcessor.from_pretrained(tmp_path / str(setting), trust_remote_code=True)
        assert loaded.tone_normalization == setting
        assert loaded.normalize(["thủy và thuỷ"]) == [expected]


def test_processor_saved_before_the_setting_normalises(saved_model, tmp_path):
    """A processor_config.json without `tone_normalization` (models saved before it existed) gets the default."""
    processor = ViCLIPOTProcessor.from_pretrained(saved_model, trust_remote_code=True)
    processor.save_pretrained(tmp_path)
    config_file = tmp_path / "processor_config.json"
    config = json.loads(config_file.read_text())
    del config["tone_normalization"]
    config_file.write_text(json.dumps(config))
    loaded = ViCLIPOTProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert loaded.normalize([unicodedata.normalize("NFD", "hòa")]) == ["hoà"]


def test_both_pipeline_routes_normalise(saved_model, photos):
    """Zero-shot scores of the captions typed every way equal the model's own softmax over the canonical captions,
    through `pipeline(task, model=folder)` and through a model object with the pipeline class (as app.py builds it);
    transformers' stock class, which calls the bare tokenizer, does not."""
    from transformers import AutoModel, pipeline

    from processing_viclip_ot import ViCLIPOTZeroShotImageClassificationPipeline

    model = AutoModel.from_pretrained(saved_model, trust_remote_code=True).eval()
    processor = model.processor
    inputs = processor.tokenizer(CAPTIONS, padding=True, return_tensors="pt")  # the canonical spelling, as written
    with torch.no_grad():
        logits = model(**inputs, **processor(images=photos[0])).logits_per_image[0]
    expected = logits.softmax(-1)
    assert float(expected.max() - expected.min()) > 0.01  # the scores tell the captions apart
    task = "zero-shot-image-classification"
    components = {"model": model, "tokenizer": processor.tokenizer, "image_processor": processor.image_processor}
    routes = [
        pipeline(task, model=str(saved_model), trust_remote_code=True),
        pipeline(task, **components, pipeline_class=ViCLIPOTZeroShotImageClassificationPipeline),
    ]
    stock = pipeline(task, **components)
    for way in range(4):
        labels = [variants(caption)[way] for caption in CAPTIONS]
        for classifier in routes:
            scores = {
                result["label"]: result["score"]
                for result in classifier(photos[0], candidate_labels=labels, hypothesis_template="{}")
            }
            assert sorted(scores) == sorted(labels)  # the labels come back as given
            torch.testing.assert_close(torch.tensor([scores[label] for label in labels]), expected, atol=1e-5, rtol=0)
        if way:
            scores = {
                result["label"]: result["score"]
                for result in stock(photos[0], candidate_labels=labels, hypothesis_template="{}")
            }
            assert not torch.allclose(torch.tensor([scores[label] for label in labels]), expected, atol=1e-5, rtol=0)
