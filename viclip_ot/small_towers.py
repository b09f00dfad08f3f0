"""Small towers built offline from configs: the demo model and the tests use them instead of downloads.

The image tower keeps DINOv3's layout (timm `Eva` with RoPE and 4 register tokens) at a few ten thousand
parameters; the text tower is a small BERT or RoBERTa whose word-level tokenizer is built from the given texts.
"""

from collections import Counter
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast

from configuration_viclip_ot import ViCLIPOTConfig
from modeling_viclip_ot import ViCLIPOTModel
from processing_viclip_ot import ViCLIPOTProcessor

SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def train_tokenizer(texts, vocab_size=1000, model_max_length=64) -> PreTrainedTokenizerFast:
    """A lower-casing word-level WordPiece tokenizer (`[CLS] text [SEP]`) whose vocabulary is the `vocab_size` most
    frequent words of `texts` (ties in alphabetical order, so the same texts always give the same ids); Vietnamese
    diacritics are kept, other words become `[UNK]`."""
    normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = Counter(
        word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    )
    words = sorted(counts, key=lambda word: (-counts[word], word))[: vocab_size - len(SPECIAL_TOKENS)]
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS.values(), *words])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=model_max_length, **SPECIAL_TOKENS)


def save_small_text_tower(
    folder,
    texts,
    model_type="bert",
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    max_length=64,
    vocab_size=1000,
    dropout=0.1,
):
    """Write a randomly initialised BERT/RoBERTa text tower and its freshly trained tokenizer to `folder`."""
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, model_max_length=max_length)
    # RoBERTa's positions start after the padding index, so it needs pad_token_id + 1 extra positions.
    extra_positions = tokenizer.pad_token_id + 1 if model_type == "roberta" else 0
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_length + extra_positions,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=tokenizer.pad_token_id,
        type_vocab_size=1 if model_type == "roberta" else 2,
    )
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def small_image_tower_kwargs(embed_dim=32, depth=2, num_heads=2, image_size=32, drop_path_rate=0.0):
    """timm keyword arguments that shrink `vit_small_patch16_dinov3` while keeping the DINOv3 layout."""
    return {
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "img_size": image_size,
        "drop_path_rate": drop_path_rate,
    }


def small_config(text_folder, image_size=32, projection_dim=16, **overrides) -> ViCLIPOTConfig:
    """A [`ViCLIPOTConfig`] with a small DINOv3-layout image tower for `image_size` images and the text tower saved in
    `text_folder`."""
    settings = {
        "vision_model_name": "vit_small_patch16_dinov3",
        "vision_model_kwargs": small_image_tower_kwargs(image_size=image_size),
        **overrides,
    }
    return ViCLIPOTConfig(
        text_config=AutoConfig.from_pretrained(text_folder).to_dict(),
        projection_dim=projection_dim,
        **settings,
    )


def small_model(text_folder, image_size=32, **overrides) -> ViCLIPOTModel:
    """A [`ViCLIPOTModel`] of [`small_config`] (random weights) with its processor: a crop of `image_size`, the
    tokenizer of `text_folder`."""
    model = ViCLIPOTModel(small_config(text_folder, image_size=image_size, **overrides))
    model.processor = ViCLIPOTProcessor.from_text_tower(text_folder, crop_size=image_size)
    return model
