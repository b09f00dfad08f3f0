"""Teacher embeddings for SIGROT's similarity graph: one L2-normalised vector per image and per caption.

    accelerate launch -m dataset_scripts.teacher_embeddings --corpus uit-openviic --data-dir D --split train \\
        --teacher Qwen/Qwen3-VL-Embedding-2B --output teachers/uit-openviic-train.safetensors

Teachers: `Qwen/Qwen3-VL-Embedding-2B` (the paper's, through sentence-transformers with its instruction as the
prompt), any sentence-transformers model that encodes images and texts, a text-only sentence-transformers model (an
image is then the normalised mean of its captions' embeddings), or a saved ViCLIP-OT model.

The safetensors file holds `image_embeds` (images x D), `text_embeds` (captions x D) and `caption_counts`, with
metadata: the image ids (JSON), teacher, dimension, corpus, split, a fingerprint of the corpus's ids and captions
and one of each image's captions. Training joins them to the corpus by image id and caption position, never by
row order.
"""

import argparse
import hashlib
import json
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import gather_object
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from processing_viclip_ot import normalize_vietnamese
from viclip_ot.files import atomic_write

QWEN3_VL_INSTRUCTION = "Retrieve images or text relevant to the user's query."


class TeacherMismatchError(ValueError):
    """Teacher embeddings that do not fit the corpus they are used with."""


def corpus_fingerprint(image_ids, captions):
    """A hash of each image id with its captions, independent of row order."""
    digest = hashlib.sha256()
    for image_id, image_captions in sorted(zip(image_ids, captions), key=lambda pair: pair[0]):
        digest.update(json.dumps([image_id, list(image_captions)], ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def caption_fingerprints(captions):
    """A short hash of each image's captions (in order), stored per image so that any subset can be checked."""
    return [hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()[:12] for texts in captions]


def _ids_and_captions(dataset):
    columns = dataset.select_columns(["image_id", "captions"])
    return list(columns["image_id"]), list(columns["captions"])


class TeacherEmbeddings:
    """Teacher vectors of one corpus split, looked up by image id."""

    def __init__(self, image_embeds, text_embeds, image_ids, caption_counts, metadata, source="<memory>"):
        self.source = str(source)
        self.image_embeds, self.text_embeds = image_embeds.float(), text_embeds.float()
        self.image_ids = list(image_ids)
        self.caption_counts = caption_counts.long()
        self.metadata = dict(metadata)
        problems = []
        if self.image_embeds.ndim != 2 or self.text_embeds.ndim != 2:
            problems.append("image_embeds and text_embeds must be matrices")
        elif self.image_embeds.shape[1] != self.text_embeds.shape[1]:
            problems.append(
                f"image dimension {self.image_embeds.shape[1]} != text dimension {self.text_embeds.shape[1]}"
            )
        if not len(self.image_ids) == len(self.caption_counts) == len(self.image_embeds):
            problems.append(
                f"{len(self.image_ids)} image ids, {len(self.caption_counts)} caption counts, "
                f"{len(self.image_embeds)} image rows"
            )
        if int(self.caption_counts.sum()) != len(self.text_embeds):
            problems.append(
                f"caption counts add up to {int(self.caption_counts.sum())}, text rows {len(self.text_embeds)}"
            )
        if len(set(self.image_ids)) != len(self.image_ids):
            problems.append("duplicate image ids")
        if problems:
            raise TeacherMismatchError(f"{self.source}: malformed teacher embeddings: {'; '.join(problems)}")
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.caption_counts.cumsum(0)])
        self._rows = {image_id: (i, int(offsets[i]), int(offsets[i + 1])) for i, image_id in enumerate(self.image_ids)}

    @property
    def dimension(self):
        return self.image_embeds.shape[1]

    def save(self, path, dtype=torch.float32):
        """Write the file atomically (a temporary file, then a rename), rows stored as `dtype`."""
        metadata = {
            **{k: str(v) for k, v in self.metadata.items()},
            "image_ids": json.dumps(self.image_ids),
            "dimension": str(self.dimension),
        }
        tensors = {
            "image_embeds": self.image_embeds.to(dtype).contiguous(),
            "text_embeds": self.text_embeds.to(dtype).contiguous(),
            "caption_counts": self.caption_counts.contiguous(),
        }
        with atomic_write(path) as temporary:
            save_file(tensors, temporary, metadata=metadata)

    @classmethod
    def load(cls, path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"teacher embeddings file not found: {path}")
        with safe_open(path, framework="pt") as file:
            metadata = dict(file.metadata() or {})
            missing = {"image_embeds", "text_embeds", "caption_counts"} - set(file.keys())
            if missing or "image_ids" not in metadata:
                raise TeacherMismatchError(
                    f"{path}: not a teacher embeddings file (missing {sorted(missing) or 'image_ids'})"
                )
            tensors = {key: file.get_tensor(key) for key in ("image_embeds", "text_embeds", "caption_counts")}
        image_ids = json.loads(metadata.pop("image_ids"))
        return cls(
            tensors["image_embeds"], tensors["text_embeds"], image_ids, tensors["caption_counts"], metadata, path
        )

    def check_corpus(self, dataset):
        """One clear error unless every image of `dataset` has a teacher row with as many caption rows as captions
        and the captions are those the embeddings were made from."""
        image_ids, captions = _ids_and_captions(dataset)
        missing = [image_id for image_id in image_ids if image_id not in self._rows]
        miscounted = [
            f"{image_id} ({len(texts)} captions, {self._rows[image_id][2] - self._rows[image_id][1]} teacher rows)"
            for image_id, texts in zip(image_ids, captions)
            if image_id in self._rows and self._rows[image_id][2] - self._rows[image_id][1] != len(texts)
        ]
        problems = []
        if missing:
            problems.append(f"{len(missing)} corpus images have no teacher row, e.g. {missing[:5]}")
        if miscounted:
            problems.append(f"{len(miscounted)} images have a different caption count, e.g. {miscounted[:5]}")
        fingerprint = self.metadata.get("corpus_fingerprint")
        whole_corpus = len(image_ids) == len(self.image_ids)
        if not problems and "caption_fingerprints" in self.metadata:  # per image: a subset is checked too
            stored = dict(zip(self.image_ids, json.loads(self.metadata["caption_fingerprints"])))
            changed = [i for i, f in zip(image_ids, caption_fingerprints(captions)) if stored.get(i) != f]
            if changed:
                problems.append(
                    f"{len(changed)} images have other captions than the embeddings were computed from, "
                    f"e.g. {changed[:5]}"
                )
        elif not problems and fingerprint and whole_corpus and corpus_fingerprint(image_ids, captions) != fingerprint:
            problems.append("the corpus's captions differ from those the embeddings were computed from")
        if problems:
            raise TeacherMismatchError(f"{self.source} does not match the corpus: {'; '.join(problems)}")

    def lookup(self, image_ids):
        """Teacher rows for a batch: (images x D, captions x D), captions in image order then caption position."""
        rows = [self._rows[image_id] for image_id in image_ids]
        image_rows = self.image_embeds[[row for row, _, _ in rows]]
        text_rows = torch.cat([self.text_embeds[start:end] for _, start, end in rows])
        return image_rows, text_rows


# ---------------------------------------------------------------------------------------------------------------
# Computing teacher embeddings
# ---------------------------------------------------------------------------------------------------------------


class Teacher:
    """Encodes images and texts into L2-normalised float32 rows; `name` is recorded in the file."""

    def __init__(self, name, encode_images, encode_texts, images_from_captions=False):
        self.name = name
        self.encode_images, self.encode_texts = encode_images, encode_texts
        self.images_from_captions = images_from_captions


def load_teacher(name_or_path, device="cpu"):
    """Pick the teacher implementation from what the name or folder holds: a saved ViCLIP-OT model (texts normalised
    by its processor), or a sentence-transformers model (texts in Unicode NFC, tone marks as written).
    Qwen3-VL-Embedding (a Transformer module with last-token pooling and Normalize, loaded natively by
    sentence-transformers) gets the paper's instruction as its prompt, for images and texts."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=True)
    if config.model_type == "viclip_ot":
        from transformers import AutoModel

        model = AutoModel.from_pretrained(name_or_path, trust_remote_code=True).to(device).eval()
        return Teacher(str(name_or_path), model.encode_image, model.encode_text)
    prompt = QWEN3_VL_INSTRUCTION if config.model_type.startswith("qwen3_vl") else None
    model_kwargs = {"dtype": torch.bfloat16} if torch.device(device).type == "cuda" else {}
    model = SentenceTransformer(
        str(name_or_path), device=str(device), trust_remote_code=True, model_kwargs=model_kwargs
    )

    def encode(items, batch_size=32, **_):
        embeddings = model.encode(items, batch_size=batch_size, prompt=prompt, convert_to_tensor=True)
        return F.normalize(embeddings.float(), dim=-1).cpu()

    def encode_texts(texts, **kwargs):
        # Unicode NFC only: the tone-mark placement follows a ViCLIP-OT text tower's pretraining, not this teacher's.
        return encode([normalize_vietnamese(text, None) for text in texts], **kwargs)

    text_only = "image" not in getattr(model, "modalities", ["text"])
    return Teacher(str(name_or_path), None if text_only else encode, encode_texts, images_from_captions=text_only)


def compute_teacher_embeddings(dataset, teacher, batch_size=32, accelerator=None, corpus="", split=""):
    """Embed every image and caption of `dataset` (rows of `image`, `image_id`, `captions`) with `teacher`.

    With an `accelerate.Accelerator`, each process embeds its share of the images (`split_between_processes`) and
    the shares are gathered.
    """
    image_ids, captions = _ids_and_captions(dataset)
    indices = list(range(len(dataset)))
    shares = accelerator.split_between_processes(indices) if accelerator is not None else nullcontext(indices)
    with shares as mine:
        image_rows, text_rows = [], []
        show = accelerator is None or accelerator.is_local_main_process
        for start in tqdm(range(0, len(mine), batch_size), desc="teacher: images", disable=not show):
            batch = mine[start : start + batch_size]
            texts = [text for i in batch for text in captions[i]]
            text_embeds = teacher.encode_texts(texts, batch_size=batch_size)
            text_rows.append(text_embeds)
            if teacher.images_from_captions:
                counts = [len(captions[i]) for i in batch]
                means = [chunk.mean(0) for chunk in text_embeds.split(counts)]
                image_rows.append(F.normalize(torch.stack(means), dim=-1))
            else:
                image_rows.append(teacher.encode_images(dataset.select(batch)["image"], batch_size=batch_size))
    order, image_embeds, text_embeds = mine, torch.cat(image_rows), torch.cat(text_rows)
    if accelerator is not None and accelerator.num_processes > 1:
        gathered = gather_object([(mine, image_embeds, text_embeds)])
        order = [i for share, _, _ in gathered for i in share]
        image_embeds = torch.cat([images for _, images, _ in gathered])
        text_embeds = torch.cat([texts for _, _, texts in gathered])
    metadata = {
        "teacher": teacher.name,
        "corpus": corpus,
        "split": split,
        "corpus_fingerprint": corpus_fingerprint(image_ids, captions),
        "caption_fingerprints": json.dumps(caption_fingerprints([captions[i] for i in order])),
        "images_from_captions": str(teacher.images_from_captions),
    }
    counts = torch.tensor([len(captions[i]) for i in order])
    return TeacherEmbeddings(image_embeds, text_embeds, [image_ids[i] for i in order], counts, metadata)


def main(argv=None):
    from accelerate import Accelerator

    from dataset_scripts import load_corpus
    from dataset_scripts.loading import add_corpus_option_argument

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="uit-openviic, ktvic, crossmodal3600, json or demo")
    parser.add_argument("--data-dir")
    parser.add_argument("--split", required=True)
    add_corpus_option_argument(parser, "--option", "corpus option KEY=VALUE")
    parser.add_argument("--teacher", default="Qwen/Qwen3-VL-Embedding-2B", help="Hub id or folder")
    parser.add_argument("--output", required=True, help=".safetensors file to write")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--float16", action="store_true", help="store the rows as float16 (half the file size)")
    args = parser.parse_args(argv)

    accelerator = Accelerator()
    dataset = load_corpus(args.corpus, args.data_dir, split=args.split, **dict(args.option))
    teacher = load_teacher(args.teacher, device=accelerator.device)
    embeddings = compute_teacher_embeddings(dataset, teacher, args.batch_size, accelerator, args.corpus, args.split)
    if accelerator.is_main_process:
        embeddings.save(args.output, torch.float16 if args.float16 else torch.float32)
        print(
            f"wrote {args.output}: {len(embeddings.image_ids)} images, {len(embeddings.text_embeds)} captions, "
            f"dimension {embeddings.dimension}"
        )
    accelerator.end_training()  # tears the process group down before the interpreter exits


if __name__ == "__main__":
    from viclip_ot.cli import run

    run(main, prog="python -m dataset_scripts.teacher_embeddings")
