"""Dataset builders for UIT-OpenViIC, KTVIC, Crossmodal-3600, the authors' JSON format and the demo corpus.

Read every corpus with `load_corpus(name, data_dir, split=None, **options)`; remove near-duplicates
with `python -m dataset_scripts.dedupe`; export to Parquet or the Hub with `python -m dataset_scripts.export`.
"""

from ._common import CorpusError, CorpusWarning
from .crossmodal3600 import LANGUAGES, Crossmodal3600
from .demo import Demo
from .json_corpus import JsonCorpus
from .ktvic import Ktvic
from .loading import CORPORA, corpus_options, load_corpus, prepare_builder
from .uit_openviic import UitOpenviic

__all__ = [
    "CORPORA",
    "LANGUAGES",
    "CorpusError",
    "CorpusWarning",
    "Crossmodal3600",
    "Demo",
    "JsonCorpus",
    "Ktvic",
    "UitOpenviic",
    "corpus_options",
    "load_corpus",
    "prepare_builder",
]
