"""Training on text: the corpus, the character-level language model, and the pieces of its
training loop (batches, one step, evaluation, checkpoints), which ``tinygrad-rnn train``
(`tinygrad_rnn.cli.train`) strings together."""

from .checkpoint import TrainerState, load_run_checkpoint, model_from_checkpoint, save_run_checkpoint
from .corpus import Corpus, CorpusError, Vocab, stdlib_corpus, text_corpus
from .loop import Streams, TrainError, evaluate, train_step
from .model import CharLM, resolve_cell, sample
