"""Padding of the text tower's input, and its time, before and after length grouping.

Two places feed the text tower batches of captions padded to their longest:

* the gradient-cached training step: a 128-image batch with 5 captions each, in chunks of 16 images. Before, each
  chunk carried the captions of its 16 images padded to the longest caption of the whole batch; now
  (`viclip_ot.data.gradcache_chunks`) the captions are sorted by length into as many chunks, each trimmed to its own
  longest caption. Timed: the text tower's forward and backward over all chunks (what the step spends on text).
* `encode_text`: a corpus of captions in batches of 32, in corpus order before; longest first now. Timed: the text
  tower's forward under `torch.inference_mode()` over all batches.

Captions are random PhoBERT token ids of 15-30 tokens (uniform, <s> and </s> included), as in the other benchmarks;
the text tower is the paper's (PhoBERT-base layout: RoBERTa, 12 layers, 768 wide; `--text-layers` fewer for a
shorter CPU run), random weights, in train mode for the step and eval mode for encoding. The padded-token share is
padding tokens / all tokens the tower computes. Times: medians of `--repeats` interleaved runs (before, after,
before, ...) after a warm-up of each; CPU seconds on the CPU, synchronised wall seconds on a GPU.

    python benchmarks/padding.py                                  # paper sizes, writes results/padding.md
    python benchmarks/padding.py --images 64 --text-layers 4      # a shorter CPU run
    python benchmarks/padding.py --device cuda --dtype bf16 --output results/padding-gpu.md
    python benchmarks/padding.py --smoke                          # tiny sizes, one repetition, no file
"""

import argparse
import functools
from pathlib import Path

import torch
from _measure import (
    environment,
    load_average,
    markdown_table,
    median,
    random_captions,
    repeat_timing,
    spread,
    write_results,
)
from transformers import AutoConfig, AutoModel

from configuration_viclip_ot import VIETNAMESE_SBERT_CONFIG
from viclip_ot.data import gradcache_chunks, trim_padding

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def chunks_by_image(batch, chunk_size, captions_per_image):
    """The former layout: chunk j holds the captions of images j * chunk_size ..., padded to the batch's longest."""
    step = chunk_size * captions_per_image
    return [
        {
            "input_ids": batch["input_ids"][start : start + step],
            "attention_mask": batch["attention_mask"][start : start + step],
        }
        for start in range(0, len(batch["input_ids"]), step)
    ]


def length_sorted_batches(input_ids, attention_mask, batch_size):
    """`encode_text`'s batching: longest first, each batch trimmed to its longest."""
    order = torch.argsort(attention_mask.sum(1), descending=True, stable=True)
    return [
        dict(zip(("input_ids", "attention_mask"), trim_padding(input_ids[rows], attention_mask[rows])))
        for rows in order.split(batch_size)
    ]


def padded_share(batches):
    total = sum(batch["attention_mask"].numel() for batch in batches)
    return 1 - sum(int(batch["attention_mask"].sum()) for batch in batches) / total, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128, help="images of the cached training step")
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--corpus", type=int, default=1024, help="captions encoded by encode_text")
    parser.add_argument("--batch-size", type=int, default=32, help="encode_text's batch size")
    parser.add_argument("--text-layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=DTYPES)
    parser.add_argument("--smoke", action="store_true", help="8 images, 2 layers, 64 captions, one repetition")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "padding.md")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.chunk_size, args.text_layers, args.corpus, args.repeats = 8, 2, 2, 64, 1
    cuda = torch.device(args.device).type == "cuda"
    load_before = load_average()

    torch.manual_seed(0)
    config = AutoConfig.for_model(**{**VIETNAMESE_SBERT_CONFIG, "num_hidden_layers": args.text_layers})
    tower = AutoModel.from_config(config, attn_implementation="sdpa").to(args.device)
    generator = torch.Generator().manual_seed(0)
    input_ids, attention_mask = random_captions(args.images * args.captions_per_image, generator)
    batch = {
        "input_ids": input_ids.to(args.device),
        "attention_mask": attention_mask.to(args.device),
        "pixel_values": torch.empty(args.images, 0),
    }
    corpus_ids, corpus_mask = (tensor.to(args.device) for tensor in random_captions(args.corpus, generator))
    layouts = {
        "training step": {
            "before: captions by image, batch-wide padding": chunks_by_image(
                batch, args.chunk_size, args.captions_per_image
            ),
            "after: length-sorted chunks, each trimmed": gradcache_chunks(batch, args.chunk_size)[0],
        },
        "encode_text": {
            "before: corpus order": [
                dict(zip(("input_ids", "attention_mask"), trim_padding(ids, mask)))
                for ids, mask in zip(corpus_ids.split(args.batch_size), corpus_mask.split(args.batch_size))
            ],
            "after: longest first": length_sorted_batches(corpus_ids, corpus_mask, args.batch_size),
        },
    }
    autocast = torch.autocast(
        torch.device(args.device).type, dtype=DTYPES[args.dtype], enabled=DTYPES[args.dtype] is not None
    )

    def train_pass(chunks):
        tower.train()
        for chunk in chunks:
            with autocast:
                hidden = tower(input_ids=chunk["input_ids"], attention_mask=chunk["attention_mask"]).last_hidden_state
            hidden.float().square().mean().backward()
        tower.zero_grad(set_to_none=True)

    def encode_pass(batches):
        tower.eval()
        with torch.inference_mode(), autocast:
            for item in batches:
                tower(input_ids=item["input_ids"], attention_mask=item["attention_mask"])

    rows = []
    for place, function in (("training step", train_pass), ("encode_text", encode_pass)):
        variants = layouts[place]
        times = {name: [] for name in variants}
        cpu_times = {name: [] for name in variants}
        for batches in variants.values():
            repeat_timing(functools.partial(function, batches), 1, 0, args.device)  # warm-up
        for index in range(args.repeats):
            for name, batches in variants.items():
                run = functools.partial(function, batches)
                times[name] += repeat_timing(run, 0, 1, args.device, cpu_times=cpu_times[name])
                print(
                    f"  {place}, {name}: run {index + 1}/{args.repeats} {times[name][-1]:.2f} s "
                    f"(CPU {cpu_times[name][-1]:.2f} s)",
                    flush=True,
                )
        measure = times if cuda else cpu_times
        first = median(next(iter(measure.values())))
        for name, batches in variants.items():
            share, tokens = padded_share(batches)
            rows.append(
                [
                    place,
                    name,
                    len(batches),
                    f"{tokens:,}",
                    f"{100 * share:.1f} %",
                    f"{median(measure[name]):.2f}",
                    spread(measure[name]),
                    f"{median(measure[name]) / first:.2f}x",
                ]
            )

    unit = "wall s (synchronised)" if cuda else "CPU s"
    table = "\n".join(
        [
            (
                f"Text tower: PhoBERT-base layout with {args.text_layers} layers, random weights, {args.device} "
                f"{args.dtype}. "
                f"Training step: {args.images} images x {args.captions_per_image} captions, chunks of "
                f"{args.chunk_size} "
                f"images, forward + backward. encode_text: {args.corpus:,} captions in batches of {args.batch_size}, "
                f"forward. Captions of 15-30 random tokens. {environment(args.device)}. Load average {load_before} "
                f"before, "
                f"{load_average()} after. Medians of {args.repeats} interleaved runs. Generated by "
                f"`benchmarks/padding.py`."
            ),
            "",
            markdown_table(
                [
                    "where",
                    "layout",
                    "batches",
                    "tokens computed",
                    "padded-token share",
                    f"median {unit}",
                    "range",
                    "time vs before",
                ],
                rows,
            ),
        ]
    )
    print("\n" + table)
    if not args.smoke or args.output != parser.get_default("output"):
        write_results(args.output, table + "\n")


if __name__ == "__main__":
    main()
