"""ViCLIP-OT in `mteb` (the Massive Text Embedding Benchmark and its image extension MIEB).

    import mteb
    from viclip_ot.mteb import VIETNAMESE_MIEB, corpus_tasks, load_model

    model = load_model("outputs/demo/final")  # a saved ViCLIP-OT folder or Hub id
    results = mteb.evaluate(model, corpus_tasks("demo", split="test"), cache=None)
    results = mteb.evaluate(model, mteb.get_tasks(tasks=list(VIETNAMESE_MIEB), languages=["vie"]))

    python -m viclip_ot.mteb --model outputs/demo/final --corpus demo --output results/mteb-demo.json
    python -m viclip_ot.mteb --model outputs/viclip-ot-paper    # XM3600 and WIT, subset vi, both directions

`load_model` wraps the model's own `encode_text` (texts batched longest first) and `encode_image`; `corpus_tasks`
turns any corpus `load_corpus` reads into a text->image and an image->text retrieval task that runs offline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import datasets
import mteb
import torch
import yaml
from huggingface_hub import ModelCard
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction

from dataset_scripts import CORPORA, CorpusError, load_corpus
from dataset_scripts.loading import add_corpus_option_argument
from modeling_viclip_ot import ViCLIPOTModel

from .files import write_text
from .loading import load_model as load_saved_model

VIETNAMESE_MIEB = ("XM3600T2IRetrieval", "XM3600I2TRetrieval", "WITT2IRetrieval", "WITI2TRetrieval")
# The project's corpora that are (part of) mteb tasks: a model trained on them has seen those tasks' data.
MTEB_TASKS_OF_CORPUS = {"crossmodal3600": {"XM3600T2IRetrieval", "XM3600I2TRetrieval"}}
# mteb score keys in the results table, as percentages; hit_rate_at_k is this project's R@K
TABLE_SCORES = (
    "hit_rate_at_1",
    "hit_rate_at_5",
    "hit_rate_at_10",
    "recall_at_1",
    "recall_at_5",
    "recall_at_10",
    "ndcg_at_10",
    "mrr_at_10",
)


class ViCLIPOTEncoder(AbsEncoder):
    """An mteb encoder (`EncoderProtocol`) for a ViCLIP-OT model: texts and images go through the model's own
    `encode_text` / `encode_image` (L2-normalised rows, cosine similarity); a row with both sums the two embeddings
    (as mteb's CLIP wrapper does).

    Args:
        model_name: the name the results are filed under (`organization/model`).
        revision: the model revision (Hub) or, for a folder, any label; see `load_model` for the defaults.
        path: the folder or Hub id to load (default `model_name`).
        device: where to run (default: CUDA when available).
        **meta: `ModelMeta` fields that replace the ones read from the model (`license`, `training_datasets`, ...).
    """

    def __init__(self, model_name, revision=None, *, path=None, device=None, **meta):
        path = str(path or model_name)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        hub_revision = None if Path(path).is_dir() else revision
        self.model = load_saved_model(path, device, revision=hub_revision)
        if self.model.processor is None:
            raise ValueError(f"{path} has no processor (processor_config.json): it cannot encode texts or images")
        self.mteb_model_meta = model_meta(
            self.model, model_name, revision or model_revision(path, self.model), path, **meta
        )

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs) -> torch.Tensor:
        batch_size = kwargs.get("batch_size", 32)
        show = kwargs.get("show_progress_bar", False)
        texts, image_parts = [], []
        for batch in inputs:
            texts.extend(batch.get("text", []))
            if "image" in batch:
                image_parts.append(self.model.encode_image(batch["image"], batch_size=batch_size))
        images = torch.cat(image_parts) if image_parts else None
        if not texts:
            if images is None:
                raise ValueError(f"{task_metadata.name}: the inputs hold neither text nor image")
            return images
        embeds = self.model.encode_text(texts, batch_size=batch_size, show_progress_bar=show)
        return embeds if images is None else embeds + images


def load_model(path_or_hub_id, *, name=None, revision=None, device=None, **meta) -> ViCLIPOTEncoder:
    """An mteb encoder for a saved ViCLIP-OT model (a folder written by `save_pretrained` or `train.py`, a converted
    release of the authors, or a Hub id), loaded by `viclip_ot.loading.load_model` (this package's classes,
    safetensors only, no remote code).

    Args:
        path_or_hub_id: the folder or Hub repository.
        name: the `organization/model` name mteb files the results under; default: the Hub id, or `local/<the
            name in the folder's model card, else the folder's name>`.
        revision: the Hub revision to load; for a folder the default is the first 12 hex digits of the SHA-256
            of its weights, so results of different weights never share a name and revision.
        device: where to run (default: CUDA when available).
        **meta: `ModelMeta` fields that replace the ones read from the model and its card, e.g.
            `training_datasets=set()` for the authors' release (trained on UIT-OpenViIC, no mteb task).
    """
    path = str(path_or_hub_id)
    return ViCLIPOTEncoder(name or default_name(path), revision, path=path, device=device, **meta)


def default_name(path) -> str:
    if not Path(path).is_dir():
        return path
    card = _read_card(path)
    title = card.data.get("model_name") if card else None
    return f"local/{title or Path(path).resolve().name}"


def model_revision(path, model) -> str | None:
    """The Hub commit the model came from, or for a folder a hash of its weight files."""
    if not Path(path).is_dir():
        return getattr(model.config, "_commit_hash", None)
    digest = hashlib.sha256()
    for weights in sorted(Path(path).glob("*.safetensors")):
        with open(weights, "rb") as file:
            for block in iter(lambda: file.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def _read_card(path) -> ModelCard | None:
    readme = Path(path, "README.md")
    return ModelCard.load(readme) if readme.is_file() else None


def _training_datasets(card) -> set[str] | None:
    """The mteb tasks whose data trained the model, from the training configuration in a card written by
    `train.py` (`dataset: <corpus>`); None when the card does not say."""
    block = re.search(r"## Training configuration\s+```yaml\n(.*?)```", card.text, re.S) if card else None
    config = yaml.safe_load(block.group(1)) if block else None
    corpus = config.get("dataset") if isinstance(config, dict) else None
    if corpus not in CORPORA or corpus == "json":  # a JSON corpus can hold anything
        return None
    return set(MTEB_TASKS_OF_CORPUS.get(corpus, ()))


def model_meta(model: ViCLIPOTModel, name: str, revision: str | None, path: str, **overrides) -> ModelMeta:
    """The `ModelMeta` of a ViCLIP-OT model loaded from `path`: sizes from the model, license and training data
    from the model card saved beside it (when there is one), then the `overrides`. `ModelMeta.load_model()` loads
    it again from `path`."""
    is_hub = not Path(path).is_dir()
    card = None if is_hub else _read_card(path)
    parameters = list(model.parameters())
    fields = dict(
        loader=ViCLIPOTEncoder,
        loader_kwargs={"path": path, **overrides},
        name=name,
        revision=revision,
        release_date=None,
        languages=["vie-Latn"],
        n_parameters=sum(p.numel() for p in parameters),
        n_embedding_parameters=model.text_model.get_input_embeddings().weight.numel(),
        memory_usage_mb=round(sum(p.numel() * p.element_size() for p in parameters) / 2**20, 1),
        max_tokens=model.processor.tokenizer.model_max_length,
        embed_dim=model.config.projection_dim,
        license=card.data.get("license") if card else None,
        open_weights=True,
        public_training_code=None,
        public_training_data=None,
        framework=["PyTorch", "Transformers", "Sentence Transformers", "safetensors"],
        reference=f"https://huggingface.co/{path}" if is_hub else None,
        similarity_fn_name=ScoringFunction.COSINE,
        use_instructions=False,
        training_datasets=_training_datasets(card),
        modalities=["image", "text"],
        model_type=["dense"],
    )
    return ModelMeta(**{**fields, **overrides})


# ----------------------------------------------------------------------------------------------------------------
# A local corpus as mteb retrieval tasks
# ----------------------------------------------------------------------------------------------------------------


class CorpusRetrievalTask(AbsTaskRetrieval):
    """A text->image (`direction="t2i"`: every caption a query, its image the one relevant document) or image->text
    (`"i2t"`: every image a query, all its captions relevant) retrieval task over one split of a corpus as
    `load_corpus` returns it (rows of `image`, `image_id`, `captions`). `dataset_tasks` builds one subclass per task,
    holding its `metadata` (mteb reads it from the class)."""

    def __init__(self, corpus: datasets.Dataset, direction: str, **kwargs):
        super().__init__(**kwargs)
        self.corpus_split, self.direction = corpus, direction

    def load_data(self, num_proc=None, **kwargs) -> None:
        if self.data_loaded:
            return
        image_ids = self.corpus_split["image_id"]
        if len(set(image_ids)) != len(image_ids):
            raise CorpusError(f"{self.metadata.name}: the split has repeated image_id values")
        images = self.corpus_split.select_columns(["image"]).add_column("id", image_ids)
        caption_ids, texts, relevant = [], [], {}
        for image_id, captions in zip(image_ids, self.corpus_split["captions"]):
            ids = [f"{image_id}#{k}" for k in range(len(captions))]
            caption_ids += ids
            texts += captions
            if self.direction == "t2i":
                relevant.update({caption_id: {image_id: 1} for caption_id in ids})
            else:
                relevant[image_id] = dict.fromkeys(ids, 1)
        captions = datasets.Dataset.from_dict({"id": caption_ids, "text": texts})
        queries, documents = (captions, images) if self.direction == "t2i" else (images, captions)
        split = self.metadata.eval_splits[0]
        self.dataset = {
            "default": {
                split: RetrievalSplitData(queries=queries, corpus=documents, relevant_docs=relevant, top_ranked=None)
            }
        }
        self.data_loaded = True


def corpus_tasks(name, data_dir=None, split="test", *, cache_dir=None, dedup_report=None, **options):
    """The text->image and image->text mteb tasks of one split of a corpus, read with
    `load_corpus(name, data_dir, split, ...)` (same arguments); named like `DemoT2IRetrieval`."""
    corpus = load_corpus(name, data_dir, split, cache_dir=cache_dir, dedup_report=dedup_report, **options)
    language = options.get("language", "vi")
    languages = ["vie-Latn"] if language == "vi" else mteb.get_task("XM3600T2IRetrieval").metadata.eval_langs[language]
    source = f"{name} ({data_dir})" if data_dir else name
    if dedup_report:
        source += " without the near-duplicates of a dedupe report"
    return dataset_tasks(corpus, CORPORA[name].__name__, split, source=source, languages=languages)


def dataset_tasks(dataset, name, split="test", *, source=None, languages=("vie-Latn",)):
    """The text->image and image->text mteb tasks (`CorpusRetrievalTask`) of a `datasets.Dataset` laid out as
    `load_corpus` returns it, named `<name>T2IRetrieval` and `<name>I2TRetrieval`, with results filed under
    `split`."""
    tasks = []
    for direction, query, document in (("t2i", "captions", "images"), ("i2t", "images", "captions")):
        metadata = TaskMetadata(
            name=f"{name}{direction.upper()}Retrieval",
            description=f"Retrieve the {document} of the {query} of {source or name}, split {split}",
            reference=None,
            dataset={"path": source or name, "revision": "local"},
            type="Any2AnyRetrieval",
            category=direction,
            modalities=["text", "image"] if direction == "t2i" else ["image", "text"],
            eval_splits=[split],
            eval_langs=list(languages),
            main_score="ndcg_at_10",  # as MIEB's tasks
            date=None,
            domains=None,
            task_subtypes=["Image Text Retrieval"],
            license=None,
            annotations_creators=None,
            dialect=None,
            sample_creation=None,
            bibtex_citation=None,
        )
        task_class = type(metadata.name, (CorpusRetrievalTask,), {"metadata": metadata})
        tasks.append(task_class(dataset, direction))
    return tasks


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


class TaskDataError(Exception):
    """An mteb task's data could not be read (not in the local cache and the Hub unreachable, or missing)."""


def load_task_data(task) -> None:
    """Load an mteb task's data before any model loads, turning a missing dataset into a `TaskDataError`."""
    try:
        task.load_data()
    except (ConnectionError, FileNotFoundError) as error:
        dataset = task.metadata.dataset
        raise TaskDataError(
            f"the data of {task.metadata.name} ({dataset['path']} at revision {dataset['revision']}) are not in the "
            f"local datasets cache and could not be downloaded ({error}); run once with access to the Hugging Face "
            f"Hub, or copy a datasets cache that holds them (HF_DATASETS_CACHE)"
        ) from error


def scores_table(result) -> tuple[dict, str]:
    """{task: {subset/split: mteb scores}} of an mteb `ModelResult`, and the Markdown table of `TABLE_SCORES` in
    percent."""
    scores = {}
    lines = [
        "| task | subset | split | " + " | ".join(TABLE_SCORES) + " |",
        "|---|---|---|" + "---:|" * len(TABLE_SCORES),
    ]
    for task_result in result.task_results:
        for split, entries in task_result.scores.items():
            for entry in entries:
                subset = entry["hf_subset"]
                scores.setdefault(task_result.task_name, {})[f"{subset}/{split}"] = entry
                cells = " | ".join(f"{100 * entry[key]:.2f}" for key in TABLE_SCORES)
                lines.append(f"| {task_result.task_name} | {subset} | {split} | {cells} |")
    return scores, "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m viclip_ot.mteb", description="Evaluate a ViCLIP-OT model with mteb's retrieval metrics."
    )
    parser.add_argument("--model", required=True, help="a saved ViCLIP-OT folder or Hub id")
    parser.add_argument("--name", help="organization/model to file the results under (default: see load_model)")
    parser.add_argument("--revision", help="the Hub revision of --model")
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--tasks",
        nargs="+",
        default=list(VIETNAMESE_MIEB),
        help="mteb tasks, their Vietnamese subsets (default: %(default)s)",
    )
    what.add_argument("--corpus", choices=list(CORPORA), help="a local corpus instead, both directions")
    parser.add_argument("--data-dir", help="--corpus: the folder as downloaded (not for demo)")
    parser.add_argument("--split", default="test", help="--corpus: the split (default: test)")
    parser.add_argument("--dedup-report", help="--corpus: remove the near-duplicates listed in this report")
    add_corpus_option_argument(parser, "--option", "--corpus option")
    parser.add_argument("--cache-dir", help="--corpus: where built corpora are cached")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", help="default: CUDA when available")
    parser.add_argument("--output", default="mteb-results.json", help="the JSON to write; the table goes beside (.md)")
    return parser, parser.parse_args(argv)


def main(argv=None) -> dict:
    parser, args = parse_args(argv)
    try:
        if args.corpus:
            tasks = corpus_tasks(
                args.corpus,
                args.data_dir,
                args.split,
                cache_dir=args.cache_dir,
                dedup_report=args.dedup_report,
                **dict(args.option),
            )
        else:
            tasks = [mteb.get_task(name, languages=["vie"]) for name in args.tasks]
        for task in tasks:  # data errors before the model loads
            load_task_data(task)
    except KeyError as error:  # mteb.get_task of an unknown name
        parser.exit(2, f"{parser.prog}: error: {str(error.args[0]).removeprefix('KeyError: ')}\n")
    except (CorpusError, TaskDataError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    try:
        model = load_model(args.model, name=args.name, revision=args.revision, device=args.device)
    except (OSError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: cannot load a ViCLIP-OT model from {args.model}: {error}\n")
    result = mteb.evaluate(model, tasks, encode_kwargs={"batch_size": args.batch_size}, cache=None)
    scores, table = scores_table(result)
    meta = model.mteb_model_meta.to_dict()
    output = {"model": args.model, "model_meta": meta, "mteb_version": mteb.__version__, "scores": scores}
    path = Path(args.output)
    write_text(path, json.dumps(output, indent=2, ensure_ascii=False, default=str))
    heading = f"Model: {args.model} ({meta['name']}, revision {meta['revision']})"
    write_text(path.with_suffix(".md"), f"{heading}\n\n{table}\n")
    print(f"{table}\n\nwritten to {path} and {path.with_suffix('.md')}")
    return output


if __name__ == "__main__":
    main()
