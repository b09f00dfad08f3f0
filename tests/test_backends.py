"""The fast encoding backends of `encode_image` / `encode_text` against the fp32 model: bf16 autocast (and its fp32
fallback on a CPU without bf16), int8 ONNX towers and their export cache."""

import pytest
import torch
import torch.nn.functional as F
from conftest import VIETNAMESE_TEXTS

import modeling_viclip_ot

onnxruntime = pytest.importorskip("onnxruntime")


def cosines(embeds, reference):
    return F.cosine_similarity(embeds, reference, dim=-1)


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) bf16 instructions."""

    def pretend(value):
        monkeypatch.setattr(modeling_viclip_ot, "cpu_has_native_bf16", lambda: value)

    return pretend


def test_bf16_backend_is_bf16_autocast_where_native(make_model, photos, native_bf16):
    """Where the CPU has bf16: the towers under bf16 autocast (the same numbers as autocasting by hand), within
    cosine 0.99 of fp32 (tolerance for bf16's 8-bit mantissa over two tiny towers)."""
    model = make_model()
    native_bf16(True)
    fp32 = model.encode_image(photos), model.encode_text(VIETNAMESE_TEXTS)
    bf16 = model.encode_image(photos, backend="bf16"), model.encode_text(VIETNAMESE_TEXTS, backend="auto")
    inputs = model.processor(images=photos)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        by_hand = F.normalize(model.get_image_features(inputs["pixel_values"]).pooler_output.float(), dim=-1)
    torch.testing.assert_close(bf16[0], by_hand, atol=1e-6, rtol=0)
    for embeds, reference in zip(bf16, fp32):
        assert not torch.equal(embeds, reference)  # really computed in bf16
        assert cosines(embeds, reference).min() > 0.99


def test_bf16_falls_back_to_fp32_on_a_cpu_without_bf16(make_model, photos, native_bf16, caplog):
    model = make_model()
    native_bf16(False)
    fp32 = model.encode_image(photos)
    with caplog.at_level("WARNING"):
        torch.testing.assert_close(model.encode_image(photos, backend="bf16"), fp32, atol=0, rtol=0)
    torch.testing.assert_close(model.encode_image(photos, backend="auto"), fp32, atol=0, rtol=0)
    assert "no native bf16" in caplog.text


def test_cpu_bf16_detection_reads_the_cpu_flags(tmp_path):
    flags = {"fpu avx512f avx512_vnni avx512_bf16": True, "fpu avx2 fma avx512_vnni": False}
    for line, expected in flags.items():
        cpuinfo = tmp_path / f"cpuinfo-{expected}"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {line}\n")
        assert modeling_viclip_ot.cpu_has_native_bf16(cpuinfo) is expected
    assert modeling_viclip_ot.cpu_has_native_bf16(tmp_path / "missing") is False


def test_unknown_backend_is_one_clear_error(make_model):
    with pytest.raises(ValueError, match="unknown backend 'int4'"):
        make_model().encode_text("một con mèo", backend="int4")


def test_onnx_int8_towers_match_fp32_and_are_cached_per_fingerprint(make_model, photos, tmp_path, monkeypatch):
    """int8 embeddings within cosine 0.98 of fp32 (min; tiny random towers: int8 weights of 16-wide layers), in the
    same row order; exported once into the model's folder, reused by a new model object, exported again (and the
    stale export removed) when the weights change."""
    model = make_model()
    model.save_pretrained(tmp_path / "model")
    model.name_or_path = str(tmp_path / "model")
    exports = []
    real_export = modeling_viclip_ot.export_int8_tower
    monkeypatch.setattr(
        modeling_viclip_ot, "export_int8_tower", lambda *args: exports.append(args[1]) or real_export(*args)
    )
    fp32 = model.encode_image(photos), model.encode_text(VIETNAMESE_TEXTS)
    int8 = model.encode_image(photos, backend="onnx-int8"), model.encode_text(VIETNAMESE_TEXTS, backend="onnx-int8")
    for embeds, reference in zip(int8, fp32):
        assert embeds.shape == reference.shape and embeds.dtype == torch.float32
        assert cosines(embeds, reference).min() > 0.98
        assert not torch.equal(embeds, reference)
    fingerprint = modeling_viclip_ot.model_fingerprint(model)[:16]
    assert sorted(p.name for p in (tmp_path / "model" / "onnx" / fingerprint).iterdir()) == [
        "image-int8.onnx",
        "text-int8.onnx",
    ]
    assert exports == ["image", "text"]

    again = modeling_viclip_ot.ViCLIPOTModel.from_pretrained(tmp_path / "model")  # the saved model: the cached files
    model.encode_backend = again.encode_backend = "onnx-int8"
    torch.testing.assert_close(again.encode_image(photos), int8[0], atol=1e-6, rtol=0)
    assert exports == ["image", "text"]

    with torch.no_grad():
        again.vision_head.proj.weight.mul_(-1)  # a changed model: new fingerprint, new export, old one removed
    again.train()  # (training mode drops the sessions of the old weights)
    flipped = again.encode_image(photos)
    assert exports == ["image", "text", "image"]
    assert cosines(flipped, -int8[0]).min() > 0.98
    assert [p.name for p in (tmp_path / "model" / "onnx").iterdir()] == [
        modeling_viclip_ot.model_fingerprint(again)[:16]
    ]


def test_sentence_transformers_in_bf16(make_model, photos, tmp_path):
    """sentence-transformers' own bf16 route (`model_kwargs={"dtype": torch.bfloat16}`: the weights in bf16) encodes
    texts and images within cosine 0.99 of the model's fp32 `encode_text` / `encode_image`, and really in bf16."""
    from sentence_transformers import SentenceTransformer

    model = make_model()
    model.save_pretrained(tmp_path / "model")
    st = SentenceTransformer(str(tmp_path / "model"), trust_remote_code=True, model_kwargs={"dtype": torch.bfloat16})
    for embeds, reference in (
        (st.encode(VIETNAMESE_TEXTS, convert_to_tensor=True), model.encode_text(VIETNAMESE_TEXTS)),
        (st.encode(photos, convert_to_tensor=True), model.encode_image(photos)),
    ):
        assert embeds.dtype == torch.bfloat16
        assert cosines(embeds.float(), reference).min() > 0.99
