"""Offline replicas of the real model repositories this project reads: the same file names, formats and config
fields as on the Hub, with tiny sizes and random weights. Nothing is downloaded.

* `vietnamese_sbert`: `keepitreal/vietnamese-sbert` (sentence-transformers files, a RoBERTa config with vocabulary
  64001 and 258 positions, an old-style `pytorch_model.bin`, PhoBERT's `vocab.txt` + `bpe.codes`,
  `tokenizer_class` `PhobertTokenizer`).
* `timm_hub_folder`: a timm Hub repository (`config.json` with `architecture`, `pretrained_cfg` and, for a resized
  export, `model_args`; `model.safetensors`), written by timm's own `save_for_hf`.
* `authors_release` / `authors_checkpoint`: the authors' released format (`minhnguyent546/ViCLIP-OT`) and their
  training `.pth`.
* `siglip_baseline` / `clip_baseline` / `qwen3_vl_embedding`: the baselines and a teacher in their Hub layouts.

`TOWERS` names the timm exports of the `tower_dirs` fixture (conftest.py); `sbert_reference` and `images` give the
references and inputs the tests of the replicas compare on.
"""

import itertools
import json
from collections import Counter
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from sentence_transformers import SentenceTransformer
from timm.models import save_for_hf
from transformers import AutoModel, RobertaConfig, RobertaModel

PHOBERT_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0-3; PhobertTokenizer adds <mask> after the vocabulary


# The size of every tiny transformers tower here (text and vision configs of the CLIP / SigLIP baselines).
TINY_TOWER = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
TINY_VISION = {**TINY_TOWER, "image_size": 32, "patch_size": 8}
DINOV3_SMALL = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32}
TOWERS = {  # the timm exports of `tower_dirs` (conftest.py): folder name: (architecture, model_args of the export)
    "dinov3-resized": ("vit_small_patch16_dinov3", DINOV3_SMALL),
    "convnext-official": ("test_convnext", None),
    "convnext-resized": ("convnext_atto", {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}),
}


def learn_bpe(words, merges=60):
    """fastBPE-style merges (`a b count` lines) learned from `words`, and the vocabulary they produce (`@@` marks a
    piece that continues the word, as in PhoBERT's vocab.txt)."""
    counts = Counter(words)
    segmented = {word: [*word[:-1], word[-1] + "</w>"] for word in counts}
    codes = []
    for _ in range(merges):
        pairs = Counter()
        for word, symbols in segmented.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += counts[word]
        if not pairs:
            break
        (a, b), count = max(pairs.items(), key=lambda item: (item[1], item[0]))
        codes.append(f"{a} {b} {count}")
        for word, symbols in segmented.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == (a, b):
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            segmented[word] = merged
    pieces = Counter()
    for word, symbols in segmented.items():
        for symbol in symbols:
            pieces[symbol[:-4] if symbol.endswith("</w>") else symbol + "@@"] += counts[word]
    for char in {c for word in counts for c in word}:  # every character, so that no input is unknown
        pieces.setdefault(char, 1)
        pieces.setdefault(char + "@@", 1)
    return codes, pieces


def vietnamese_sbert(
    folder,
    texts,
    *,
    hidden_size=32,
    layers=2,
    heads=2,
    max_seq_length=256,
    seed=0,
    sentence_transformers_files=True,
    tokenizer_files=True,
    model_max_length=256,
):
    """`keepitreal/vietnamese-sbert` in miniature: same files and config fields, random weights.

    `sentence_transformers_files=False` leaves out the sentence-transformers files (a plain PhoBERT folder);
    `model_max_length=None` leaves the tokenizer without a maximum length; `tokenizer_files=False` leaves out
    `vocab.txt` and `bpe.codes`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    codes, pieces = learn_bpe([word for text in texts for word in text.split()])
    if tokenizer_files:
        (folder / "bpe.codes").write_text("".join(f"{line}\n" for line in codes), encoding="utf-8")
        (folder / "vocab.txt").write_text(
            "".join(f"{piece} {count}\n" for piece, count in sorted(pieces.items(), key=lambda p: (-p[1], p[0]))),
            encoding="utf-8",
        )
    config = RobertaConfig(
        vocab_size=64001,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=258,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        tokenizer_class="PhobertTokenizer",
        architectures=["RobertaModel"],
    )
    torch.manual_seed(seed)
    model = RobertaModel(config)
    config.save_pretrained(folder)
    state_dict = {key: value.contiguous() for key, value in model.state_dict().items()}
    state_dict["embeddings.position_ids"] = torch.arange(258).unsqueeze(0)  # the buffer old checkpoints saved
    torch.save(state_dict, folder / "pytorch_model.bin")  # the old format, no safetensors
    special = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
    }
    tokenizer_config = {**special, "tokenizer_class": "PhobertTokenizer"}
    if model_max_length:
        tokenizer_config["model_max_length"] = model_max_length
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (folder / "added_tokens.json").write_text(json.dumps({"<mask>": 64000}))
    if sentence_transformers_files:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        (folder / "modules.json").write_text(json.dumps(modules, indent=2))
        (folder / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
        )
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(
            json.dumps(
                {
                    "word_embedding_dimension": hidden_size,
                    "pooling_mode_cls_token": False,
                    "pooling_mode_mean_tokens": True,
                    "pooling_mode_max_tokens": False,
                    "pooling_mode_mean_sqrt_len_tokens": False,
                }
            )
        )
        (folder / "config_sentence_transformers.json").write_text(
            json.dumps({"__version__": {"sentence_transformers": "2.0.0", "transformers": "4.7.0", "pytorch": "1.9.0"}})
        )
    return folder


def sbert_reference(sbert_dir, texts):
    """The sentence-transformers model's own normalised embeddings."""
    return torch.from_numpy(SentenceTransformer(str(sbert_dir), device="cpu").encode(texts, normalize_embeddings=True))


def images(size=32, count=3, seed=0):
    """Random pixel batches for the replica towers."""
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 4 - 2


def timm_hub_folder(folder, architecture, model_args=None, seed=0):
    """A timm Hub repository written by timm's `save_for_hf`: `config.json` (with `model_args` when given, as a
    resized or fine-tuned export has) and `model.safetensors`. Returns (folder, the model)."""
    torch.manual_seed(seed)
    model = timm.create_model(architecture, **(model_args or {}))
    save_for_hf(model, str(folder), model_args=model_args, safe_serialization=True)
    config = json.loads(Path(folder, "config.json").read_text())
    if not model_args:
        config.pop("model_args", None)  # the official repos record none
        Path(folder, "config.json").write_text(json.dumps(config, indent=2))
    return Path(folder), model


def authors_release(
    folder,
    text_tower,
    vision_tower,
    *,
    embed_dim=16,
    vision_proj="linear",
    text_proj="linear",
    proj_bias=False,
    logit_bias=None,
    seed=0,
):
    """The authors' released format: their `config.json` schema and `model.safetensors` key names, built from the
    towers given (their `model_name`s are the paths). Returns (folder, state_dict)."""
    torch.manual_seed(seed)
    trunk = timm.create_model(f"local-dir:{vision_tower}", pretrained=True, num_classes=0)
    trunk.reset_classifier(0, global_pool="avg")
    encoder = AutoModel.from_pretrained(text_tower)  # with its pooler, as the authors saved it
    width, text_width = trunk.num_features, encoder.config.hidden_size
    state_dict = {f"vision_model.trunk.{k}": v for k, v in trunk.state_dict().items()}
    state_dict.update({f"text_model.encoder.{k}": v for k, v in encoder.state_dict().items()})
    if vision_proj == "linear":
        state_dict["vision_model.head.proj.weight"] = torch.randn(embed_dim, width) / width**0.5
        if proj_bias:
            state_dict["vision_model.head.proj.bias"] = torch.randn(embed_dim) * 0.1
    else:  # open_clip's Mlp(width, 2 * embed_dim, embed_dim): fc1 with bias, GELU, fc2
        state_dict["vision_model.head.mlp.fc1.weight"] = torch.randn(2 * embed_dim, width) / width**0.5
        state_dict["vision_model.head.mlp.fc1.bias"] = torch.randn(2 * embed_dim) * 0.1
        state_dict["vision_model.head.mlp.fc2.weight"] = torch.randn(embed_dim, 2 * embed_dim) / (2 * embed_dim) ** 0.5
        if proj_bias:
            state_dict["vision_model.head.mlp.fc2.bias"] = torch.randn(embed_dim) * 0.1
    if text_proj == "linear":
        state_dict["text_model.fc.weight"] = torch.randn(embed_dim, text_width) / text_width**0.5
        if proj_bias:
            state_dict["text_model.fc.bias"] = torch.randn(embed_dim) * 0.1
    state_dict["logit_scale"] = torch.tensor(2.6592)
    if logit_bias is not None:
        state_dict["logit_bias"] = torch.tensor(float(logit_bias))
    config = {
        "model_type": "viclip_ot",
        "text_config": {"model_name": str(text_tower), "proj": text_proj, "proj_bias": proj_bias},
        "vision_config": {
            "model_name": str(vision_tower),
            "pool": "avg",
            "proj": vision_proj,
            "proj_bias": proj_bias,
            "proj_dropout_rate": 0.1,
        },
        "embed_dim": embed_dim,
        "initial_temperature": 0.07,
        "logit_bias": logit_bias,
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in state_dict.items()}, folder / "model.safetensors")
    return folder, state_dict


def authors_checkpoint(path, release_state_dict, epoch=3):
    """The authors' training checkpoint (`.pth`): `model_state_dict` with `image_encoder.` / `text_encoder.` keys."""
    renames = {"vision_model.": "image_encoder.", "text_model.": "text_encoder."}
    state_dict = {}
    for key, value in release_state_dict.items():
        prefix = next((p for p in renames if key.startswith(p)), "")
        state_dict[renames.get(prefix, "") + key.removeprefix(prefix)] = value
    torch.save({"model_state_dict": state_dict, "epoch": epoch}, path)
    return Path(path)


def siglip_baseline(folder, texts, vocab_size=80, seed=0):
    """`google/siglip-base-patch16-224` in miniature: `SiglipModel` weights, `preprocessor_config.json`, and the
    SentencePiece tokenizer (`spiece.model`, `SiglipTokenizer`, trained here on `texts`)."""
    import sentencepiece
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(folder / "spiece"),
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        minloglevel=2,
    )
    tokenizer = SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=16)
    text = {
        "vocab_size": len(tokenizer),
        **TINY_TOWER,
        "max_position_embeddings": 16,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    vision = TINY_VISION
    torch.manual_seed(seed)
    SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(folder)
    SiglipProcessor(SiglipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)
    return folder


def clip_baseline(folder, seed=0):
    """`openai/clip-vit-base-patch32` in miniature: `CLIPModel` weights and its byte-level BPE tokenizer
    (`vocab.json` + `merges.txt`: the 256 byte symbols, with and without `</w>`, and a few merges)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    merges = ["h n</w>", "t r", "c h</w>", "n g</w>"]
    vocab = [*symbols, *(f"{s}</w>" for s in symbols), *(m.replace(" ", "") for m in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(vocab)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], model_max_length=24)
    special = {
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        "pad_token_id": vocab["<|endoftext|>"],
    }
    text = {
        "vocab_size": len(vocab),
        **TINY_TOWER,
        "max_position_embeddings": 24,
        **special,
    }
    vision = TINY_VISION
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return Path(folder)


QWEN3_VL_CHAT_TEMPLATE = (  # Qwen3-VL's chat format for text and image items
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen3_vl_embedding(folder, seed=0):
    """`Qwen/Qwen3-VL-Embedding-2B` in miniature, in its sentence-transformers layout: a `Qwen3VLModel` with its
    processor (byte-level BPE tokenizer with Qwen's special tokens, Qwen2-VL image processor, chat template) as the
    Transformer module (generation prompt added), last-token Pooling and Normalize, saved by sentence-transformers."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import Qwen2TokenizerFast, Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLModel, Qwen3VLProcessor
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    folder = Path(folder)
    special = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    vocab = {token: index for index, token in enumerate([*bytes_to_unicode().values(), *special])}
    tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=[], model_max_length=512)
    tokenizer.add_special_tokens({"additional_special_tokens": special[1:]})
    text = {
        "vocab_size": len(vocab),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": 512,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 3, 3],
            "mrope_interleaved": True,
        },
        "pad_token_id": vocab["<|endoftext|>"],
    }
    vision = {
        "depth": 1,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_heads": 2,
        "patch_size": 8,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 32,
        "num_position_embeddings": 16,
        "deepstack_visual_indexes": [0],
    }
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    transformers_folder = folder.with_name(folder.name + "-transformers")
    Qwen3VLModel(config).save_pretrained(transformers_folder)
    sizes = {"patch_size": 8, "temporal_patch_size": 2, "merge_size": 2}
    images = Qwen2VLImageProcessor(size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32}, **sizes)
    Qwen3VLProcessor(
        images, tokenizer, Qwen3VLVideoProcessor(**sizes), chat_template=QWEN3_VL_CHAT_TEMPLATE
    ).save_pretrained(transformers_folder)
    generation_prompt = {"chat_template": {"add_generation_prompt": True}}
    transformer = Transformer(str(transformers_folder), processing_kwargs=generation_prompt)
    modules = [transformer, Pooling(32, "lasttoken"), Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder
