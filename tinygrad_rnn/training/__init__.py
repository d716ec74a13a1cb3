"""Training on text: the corpus, the character-level language model and the CLI commands
``tinygrad-rnn train``, ``sample`` and ``bench`` (each module has ``add_arguments`` and
``run``)."""

from .corpus import Corpus, CorpusError, Vocab, stdlib_corpus, text_corpus
from .model import CharLM, resolve_cell, sample
