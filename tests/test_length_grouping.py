"""Length grouping: `encode_text` batches texts by length and the gradient-cached step encodes captions in
length-sorted chunks; embeddings, losses and gradients stay those of the unsorted batch."""

import pytest
import torch
from conftest import VIETNAMESE_TEXTS
from training_setup import batch_loss, demo_split, gradients, make_trainer, random_teacher, small_model

from viclip_ot.data import gradcache_chunks, trim_padding


def test_encode_text_sorts_by_length_and_returns_rows_in_input_order(make_model):
    model = make_model()
    texts = [VIETNAMESE_TEXTS[i] for i in (3, 0, 7, 1, 9, 4, 2)] + ["ảnh", "một con mèo"]
    batched = model.encode_text(texts, batch_size=3)
    alone = torch.cat([model.encode_text([text]) for text in texts])  # no padding at all
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    assert not torch.allclose(batched[0], batched[1])


def test_trim_padding_drops_only_all_padding_columns():
    input_ids = torch.tensor([[0, 5, 2, 1, 1, 1], [0, 6, 7, 2, 1, 1]])
    attention_mask = (input_ids != 1).long()
    ids, mask = trim_padding(input_ids, attention_mask)
    assert ids.tolist() == [[0, 5, 2, 1], [0, 6, 7, 2]] and mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


@pytest.fixture(scope="module")
def batch_and_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grouping")
    train = demo_split(folder / "cache", "train", images=8)
    model = small_model(folder, [c for cs in train["captions"] for c in cs])
    trainer, collator = make_trainer(model, folder / "out", teacher=random_teacher(train), gradcache_chunk_size=3)
    rows = [train[i] for i in range(8)]
    rows[2]["captions"] = [caption + " " + caption + " " + caption for caption in rows[2]["captions"]]  # long ones
    return model, trainer, collator(rows)


def test_chunks_hold_every_caption_once_with_less_padding(batch_and_model):
    _, _, batch = batch_and_model
    chunks, caption_order = gradcache_chunks(batch, 3)
    assert sorted(caption_order.tolist()) == list(range(len(batch["input_ids"])))
    assert torch.equal(torch.cat([chunk["pixel_values"] for chunk in chunks]), batch["pixel_values"])
    lengths = batch["attention_mask"].sum(1)
    padded_before = batch["input_ids"].numel()
    padded_after = sum(chunk["input_ids"].numel() for chunk in chunks)
    assert padded_after < padded_before
    start = 0
    for chunk in chunks:  # each caption's tokens are unchanged, only padding is gone
        rows = caption_order[start : start + len(chunk["input_ids"])]
        start += len(rows)
        assert chunk["input_ids"].shape[1] == int(lengths[rows].max())
        for row, ids, mask in zip(rows, chunk["input_ids"], chunk["attention_mask"]):
            assert torch.equal(ids[mask.bool()], batch["input_ids"][row][batch["attention_mask"][row].bool()])


def test_grouped_cached_step_equals_the_plain_full_batch_step(batch_and_model):
    """Without dropout, the cached step over length-sorted chunks gives the loss, embeddings and gradients of one
    plain forward and backward of the whole (unsorted, fully padded) batch."""
    model, trainer, batch = batch_and_model
    model.train()
    chunks, caption_order = gradcache_chunks(batch, 3)
    with torch.no_grad():
        whole = model(
            pixel_values=batch["pixel_values"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        )
        grouped = torch.cat([model(**chunk).text_embeds for chunk in chunks])[caption_order.argsort()]
    torch.testing.assert_close(grouped, whole.text_embeds, atol=1e-6, rtol=0)

    model.zero_grad()
    expected_loss = batch_loss(
        trainer, whole.image_embeds, whole.text_embeds, batch, model.logit_scale.exp(), model.logit_bias
    )
    outputs = model(
        pixel_values=batch["pixel_values"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    )
    loss = batch_loss(
        trainer, outputs.image_embeds, outputs.text_embeds, batch, model.logit_scale.exp(), model.logit_bias
    )
    loss.backward()
    expected = gradients(model)
    model.zero_grad()
    loss = trainer.training_step(model, batch)
    cached = gradients(model)
    torch.testing.assert_close(loss, expected_loss.detach(), atol=1e-6, rtol=1e-5)
    assert expected.keys() == cached.keys()
    for name in expected:
        torch.testing.assert_close(cached[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)
