"""What users bring: EXIF-turned phone photos, 16-bit PNGs, HEIC, huge JPEGs and broken folders, checked against
independent computations (numpy rotations, 8-bit originals)."""

import io
import os
import warnings

import numpy as np
import pytest
import torch
from corpus_fixtures import stored_image
from PIL import Image

from processing_viclip_ot import load_rgb_image
from viclip_ot import search
from viclip_ot.search import ImageIndex, scan_images

ORIENTATION = 0x0112


def sideways_jpeg(path, upright_array, orientation=6):
    """Store `upright_array` as a phone does: the pixels turned and an EXIF orientation saying how to turn them
    back (6: rotate 90 degrees clockwise to view). Returns the upright pixels the file decodes to, computed with numpy
    from the raw decode."""
    stored = np.rot90(upright_array, k=1) if orientation == 6 else np.rot90(upright_array, k=-1)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=95, exif=exif)
    with Image.open(path) as raw:  # Pillow does not turn on open: these are the stored pixels
        decoded = np.asarray(raw.convert("RGB"))
    return np.rot90(decoded, k=-1 if orientation == 6 else 1)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_turned_photo_equals_upright_through_every_path(demo_model_dir, demo_model, photos, tmp_path, orientation):
    from transformers import pipeline

    # A photo small enough that JPEG draft decoding does not apply, so every path decodes the same pixels.
    photo = np.asarray(photos[1].resize((100, 66)))
    path = tmp_path / "phone.jpg"
    expected_pixels = sideways_jpeg(path, photo, orientation)
    assert expected_pixels.shape[:2] == photo.shape[:2]
    upright = Image.fromarray(np.ascontiguousarray(expected_pixels))
    assert np.array_equal(np.asarray(load_rgb_image(path)), expected_pixels)
    with Image.open(path) as opened:
        assert np.array_equal(np.asarray(load_rgb_image(opened)), expected_pixels)

    expected = demo_model.encode_image([upright])
    torch.testing.assert_close(demo_model.encode_image([path]), expected)
    torch.testing.assert_close(
        demo_model.processor(images=[path])["pixel_values"], demo_model.processor(images=[upright])["pixel_values"]
    )
    extractor = pipeline("image-feature-extraction", model=str(demo_model_dir), trust_remote_code=True)
    torch.testing.assert_close(torch.tensor(extractor(str(path))[0]), expected[0], atol=1e-5, rtol=1e-5)
    classifier = pipeline("zero-shot-image-classification", model=str(demo_model_dir), trust_remote_code=True)
    labels = ["hình tròn", "hình vuông"]
    assert classifier(str(path), candidate_labels=labels) == classifier(upright, candidate_labels=labels)
    # The corpus builders store the upright pixels (as PNG, not the original bytes).
    data, truncated = stored_image(path, tmp_path / "built")
    assert not truncated and np.array_equal(np.asarray(Image.open(io.BytesIO(data))), expected_pixels)
    # The search index: the turned file is found by its upright image.
    (tmp_path / "folder").mkdir()
    os.replace(path, tmp_path / "folder" / "phone.jpg")
    upright.save(tmp_path / "folder" / "other.png")
    index = ImageIndex.build(demo_model, tmp_path / "folder", show_progress_bar=False)
    scores = {hit["path"]: hit["score"] for hit in index.search(upright, k=2)}
    assert scores[str(tmp_path / "folder" / "phone.jpg")] == pytest.approx(1.0, abs=1e-5)


def test_16_bit_png_equals_its_8_bit_version(demo_model_dir, demo_model, photos, tmp_path):
    from transformers import pipeline

    from processing_viclip_ot import ViCLIPOTImageFeatureExtractionPipeline

    gray = np.asarray(photos[0].convert("L"))
    Image.fromarray(gray).save(tmp_path / "8bit.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "16bit.png")  # 0-255 -> 0-65535
    with Image.open(tmp_path / "16bit.png") as sixteen:
        assert sixteen.mode == "I;16"
        as_i = sixteen.convert("I")  # the 32-bit mode some decoders give
    expected = demo_model.encode_image([tmp_path / "8bit.png"])
    torch.testing.assert_close(demo_model.encode_image([tmp_path / "16bit.png"]), expected)
    torch.testing.assert_close(demo_model.encode_image([as_i]), expected)
    floats = Image.fromarray(gray.astype(np.float32) / 255)  # mode F in [0, 1]
    torch.testing.assert_close(demo_model.encode_image([floats]), expected)
    # Both pipeline routes: the folder (its config names the pipeline class) and a model object.
    from_folder = pipeline("image-feature-extraction", model=str(demo_model_dir), trust_remote_code=True)
    from_object = pipeline(
        "image-feature-extraction",
        model=demo_model,
        image_processor=demo_model.processor.image_processor,
        pipeline_class=ViCLIPOTImageFeatureExtractionPipeline,
    )
    for extractor in (from_folder, from_object):
        for image in (str(tmp_path / "16bit.png"), as_i):
            torch.testing.assert_close(torch.tensor(extractor(image)[0]), expected[0], atol=1e-5, rtol=1e-5)
    white = demo_model.encode_image([Image.new("RGB", photos[0].size, "white")])
    assert float(expected @ white.T) < 0.999  # what clipping at 255 gave


def test_heic_is_indexed_and_found(demo_model, photos, tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    photo = photos[2].resize((120, 80))
    pillow_heif.from_pillow(photo).save(tmp_path / "iphone.heic", quality=95)
    photos[3].resize((120, 80)).save(tmp_path / "other.png")
    with Image.open(tmp_path / "iphone.heic") as decoded:
        decoded = decoded.convert("RGB")
    assert np.abs(np.asarray(decoded, dtype=int) - np.asarray(photo, dtype=int)).mean() < 6  # lossy, but the photo
    index = ImageIndex.build(demo_model, tmp_path, show_progress_bar=False)
    assert len(index) == 2
    (hit,) = index.search(decoded, k=1)
    assert hit["path"] == str(tmp_path / "iphone.heic") and hit["score"] == pytest.approx(1.0, abs=1e-5)


def test_heic_without_the_plugin_is_named_with_the_extra(tmp_path, monkeypatch):
    (tmp_path / "a.heic").write_bytes(b"not read")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    monkeypatch.setattr(search, "image_extensions", lambda: {".png", ".jpg"})
    with pytest.warns(UserWarning, match=r"1 HEIC files skipped.*viclip-ot\[photos\].*a\.heic"):
        assert [path for path, _, _ in scan_images(tmp_path)] == ["b.png"]


def test_jpeg_draft_decodes_small_and_close(demo_model, photos, tmp_path):
    big = photos[1].resize((1800, 1200), Image.Resampling.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=95)
    image_processor = demo_model.processor.image_processor
    drafted = load_rgb_image(tmp_path / "big.jpg", draft_size=image_processor.resize_size)
    assert min(drafted.size) >= image_processor.resize_size and drafted.size[0] <= 1800 // 4
    assert min(image_processor.load(tmp_path / "big.jpg").size) == image_processor.resize_size
    with Image.open(tmp_path / "big.jpg") as full:
        full = full.convert("RGB")
    similarity = float(demo_model.encode_image([tmp_path / "big.jpg"]) @ demo_model.encode_image([full]).T)
    assert 0.99 < similarity  # measured in benchmarks/photos.py on real photos


def test_broken_folder_indexes_the_rest_and_names_them(demo_model, photos, tmp_path, monkeypatch):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    photos[0].resize((40, 40)).save(root / "good.png")
    photos[1].resize((40, 40)).save(root / "sub" / "inner.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    photos[2].resize((40, 40)).save(outside / "linked.png")
    os.symlink(outside, root / "linked-folder")  # followed
    os.symlink(root, root / "sub" / "loop")  # back to the top: walked once
    os.symlink(root / "missing.png", root / "dangling.png")
    os.symlink(root / "self.png", root / "self.png")  # a symlink loop
    os.mkfifo(root / "pipe.jpg")  # opening it would block
    raw_name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes, not UTF-8
    photos[3].resize((40, 40)).save(root / raw_name)
    (root / "locked").mkdir()
    real_scandir = os.scandir
    monkeypatch.setattr(
        search.os,
        "scandir",
        lambda path: (
            (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
            if str(path).endswith("locked")
            else real_scandir(path)
        ),
    )
    with pytest.warns(UserWarning) as caught:
        index = ImageIndex.build(demo_model, root, show_progress_bar=False)
    (message,) = [str(warning.message) for warning in caught if "walking" in str(warning.message)]
    for name in ("dangling.png", "self.png", "pipe.jpg (not a regular file)", "locked (Permission denied)", "sub/loop"):
        assert name in message
    assert "caf\\xe9.png" in message and "1 names are not valid UTF-8" in message
    expected = {"good.png", "sub/inner.png", "linked-folder/linked.png", raw_name}
    assert {os.path.relpath(path, root) for path in map(str, index.paths)} == expected
    # The non-UTF-8 name survives saving and loading, and opens the same file.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index.save(tmp_path / "index")
    loaded = ImageIndex.load(tmp_path / "index", demo_model)
    (hit,) = loaded.search(root / raw_name, k=1)
    assert hit["path"] == str(root / raw_name) and hit["score"] == pytest.approx(1.0, abs=1e-5)
    assert Image.open(hit["path"]).size == (40, 40)


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (["--text", "   "], "--text is empty"),
        (["--text", "mèo", "--top-k", "0"], "--top-k must be at least 1, got 0"),
        (["--text", "mèo", "--top-k", "-1"], "--top-k must be at least 1, got -1"),
        (["--image", "NOTANIMAGE"], "cannot be read as an image"),
        (["--image", "BOMB"], "cannot be read as an image: Image size"),
    ],
)
def test_bad_queries_are_one_error_line(arguments, problem, tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.jpg").write_text("not an image")
    Image.new("1", (200, 200)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40000 pixels is then over twice the limit
    arguments = [
        {"NOTANIMAGE": str(tmp_path / "notes.jpg"), "BOMB": str(tmp_path / "bomb.png")}.get(a, a) for a in arguments
    ]
    with pytest.raises(SystemExit) as exit_info:
        search.main(["query", "--index", str(tmp_path), *arguments])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m viclip_ot.search: error: ") and problem in err[-1]
    assert "Traceback" not in "\n".join(err)
