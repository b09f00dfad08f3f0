"""Training batches: each image once (augmented), every caption of it, its teacher rows."""

import zlib
from dataclasses import dataclass

import torch
from torchvision import transforms

from processing_viclip_ot import ViCLIPOTProcessor, load_rgb_image


def train_transform(image_processor, horizontal_flip=True):
    """The paper's train transform: RandomRotation(15) -> RandomResizedCrop(scale 0.8-1, bicubic) -> flip ->
    ColorJitter(0.2, 0.2, 0.2, 0) -> normalisation, at the crop size and mean/std of `image_processor`.

    Turn the flip off for captions that say left and right (the demo corpus does)."""
    steps = [
        transforms.RandomRotation(15),
        transforms.RandomResizedCrop(
            image_processor.crop_size, scale=(0.8, 1.0), interpolation=transforms.InterpolationMode.BICUBIC
        ),
    ]
    if horizontal_flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [
        transforms.ColorJitter(0.2, 0.2, 0.2, 0),
        transforms.ToTensor(),
        transforms.Normalize(image_processor.image_mean, image_processor.image_std),
    ]
    return transforms.Compose(steps)


@dataclass
class ContrastiveCollator:
    """Rows (`image`, `image_id`, `captions`) -> `pixel_values` (one per image), `input_ids` / `attention_mask`
    (every caption, grouped by image), `caption_image_index`, and the teacher rows when there is a teacher.

    Each image's augmentation draws from its own generator seeded by (`seed`, `epoch`, image id), not from the global
    random state: batches are the same whatever the number of workers, and a resumed run sees the same images as an
    uninterrupted one (the trainer sets `epoch`)."""

    processor: ViCLIPOTProcessor
    image_transform: object
    teacher: object = None
    seed: int = 0
    epoch: int = 0

    def _augment(self, row):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(f"{self.seed}/{self.epoch}/{row['image_id']}".encode()))
            return self.image_transform(load_rgb_image(row["image"]))

    def __call__(self, rows):
        pixel_values = torch.stack([self._augment(row) for row in rows])
        captions = [caption for row in rows for caption in row["captions"]]
        caption_image_index = torch.tensor([i for i, row in enumerate(rows) for _ in row["captions"]])
        text = self.processor(text=captions)
        batch = {
            "pixel_values": pixel_values,
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "caption_image_index": caption_image_index,
        }
        if self.teacher is not None:
            image_rows, text_rows = self.teacher.lookup([row["image_id"] for row in rows])
            batch["teacher_image_embeds"], batch["teacher_text_embeds"] = image_rows, text_rows
        return batch


def trim_padding(input_ids, attention_mask):
    """Drop the trailing columns that are padding in every row (right padding): the rows' embeddings stay the same,
    the text tower does less work."""
    length = int(attention_mask.any(0).nonzero().max()) + 1 if attention_mask.any() else 1
    return input_ids[:, :length], attention_mask[:, :length]


def gradcache_chunks(inputs, chunk_size):
    """Chunks of a contrastive batch for gradient caching, and the order of the captions in them.

    Chunk j holds images `j * chunk_size` to `(j + 1) * chunk_size` of the batch and the j-th of as many groups of
    captions sorted by token count, each trimmed to its longest caption, so the text tower computes little padding.
    The batch is the same set of images and captions: text embeddings concatenated over the chunks are in the order
    `caption_order` (batch positions); index them with `caption_order.argsort()` to restore the batch order.
    """
    n_chunks = -(-inputs["pixel_values"].shape[0] // chunk_size)
    caption_order = torch.argsort(inputs["attention_mask"].sum(1), stable=True)
    chunks = []
    for index, captions in enumerate(torch.tensor_split(caption_order, n_chunks)):
        input_ids, attention_mask = trim_padding(inputs["input_ids"][captions], inputs["attention_mask"][captions])
        chunks.append(
            {
                "pixel_values": inputs["pixel_values"][index * chunk_size : (index + 1) * chunk_size],
                "input_ids": input_ids,
                "attention_mask": attention_mask,
            }
        )
    return chunks, caption_order
