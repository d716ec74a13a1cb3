"""The checkpoint of a ``tinygrad-rnn train`` run: what is in the file, writing it, and
reading it back so that a resumed run continues exactly.

One `tg.save` file (``.safetensors``, no pickle) holds the run's config, the vocabulary, the model's
and the optimizer's state dicts and the trainer's state (`TrainerState`: step, carried
recurrent state, loss history) with both random generators: the weight-init one
(`tinygrad_rnn.nn.init.rng`) and the sampling one.
"""

import dataclasses
import os

import numpy as np

from ..nn import init
from ..rnn.cell import tree_map
from ..serialization import CheckpointError, load, save
from ..tensor import Tensor
from .corpus import Vocab
from .model import CharLM

CHECKPOINT_FORMAT = "tinygrad_rnn.char_lm"
CHECKPOINT_VERSION = 1
DEFAULT_CHECKPOINT = os.path.join("runs", "char_lm.safetensors")


@dataclasses.dataclass
class TrainerState:
    """Where a run is: steps done, the recurrent state carried into the next window (Tensors,
    or None at the start of the streams), the per-step training losses (nats per character),
    the validations so far as ``[step, bits_per_char]`` and the wall time of earlier sessions."""

    step: int = 0
    hidden: object = None
    train_loss: list = dataclasses.field(default_factory=list)
    val: list = dataclasses.field(default_factory=list)
    wall_time_s: float = 0.0


def save_run_checkpoint(path, *, config, vocab, corpus, model, optimizer, trainer, sample_rng):
    """Write the whole run to ``path`` atomically (creating its directory); ``trainer`` is a
    `TrainerState` whose ``wall_time_s`` includes this session."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save({
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "config": config, "vocab": vocab.chars,
        "corpus": {"description": corpus.description, "train_files": list(corpus.train_files),
                   "valid_files": list(corpus.valid_files)},
        "model": dict(model.state_dict()),
        "optimizer": optimizer.state_dict(),
        "trainer": {
            "step": trainer.step,
            "hidden": None if trainer.hidden is None else tree_map(lambda t: t.data, trainer.hidden),
            "train_loss": np.asarray(trainer.train_loss, dtype=np.float64),
            "val": trainer.val,
            "wall_time_s": trainer.wall_time_s,
            "rng_init": init.rng().bit_generator.state,
            "rng_sample": sample_rng.bit_generator.state,
            "corpus_fingerprint": corpus.fingerprint(),
        },
    }, path)


def load_run_checkpoint(path):
    """A checkpoint written by ``tinygrad-rnn train`` (CheckpointError otherwise)."""
    ckpt = load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{path}' is not a language-model checkpoint written by "
                              "tinygrad-rnn train")
    if ckpt.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"'{path}' was written by a newer tinygrad-rnn (checkpoint version "
                              f"{ckpt['version']})")
    missing = [k for k in ("config", "vocab", "model", "optimizer", "trainer") if k not in ckpt]
    if missing:
        raise CheckpointError(f"'{path}' lacks the entries {missing}")
    return ckpt


def model_from_checkpoint(ckpt, path):
    """(model, vocab) rebuilt from a checkpoint's config and weights."""
    cfg = ckpt["config"]
    try:
        vocab = Vocab(ckpt["vocab"])
        model = CharLM(len(vocab), cell=cfg["cell"], hidden=cfg["hidden"], layers=cfg["layers"],
                       embed=cfg["embed"], dtype=np.dtype(cfg.get("dtype", "float32")))
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"'{path}': the model config is incomplete or damaged: "
                              f"{type(exc).__name__}: {exc}") from None
    try:
        model.load_state_dict(ckpt["model"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"'{path}': the weights do not fit the model the checkpoint "
                              f"describes: {exc}") from None
    return model, vocab


def restore_trainer(ckpt, path, optimizer, sample_rng):
    """Put the optimizer's moments and both random generators back as they were saved, and
    return the saved `TrainerState`."""
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"'{path}': optimizer state does not fit the model: {exc}") from None
    saved = ckpt["trainer"]
    try:
        trainer = TrainerState(
            step=int(saved["step"]),
            hidden=None if saved["hidden"] is None else tree_map(Tensor, saved["hidden"]),
            train_loss=[float(x) for x in np.asarray(saved["train_loss"])],
            val=[list(v) for v in saved["val"]],
            wall_time_s=float(saved["wall_time_s"]))
        init.rng().bit_generator.state = saved["rng_init"]
        sample_rng.bit_generator.state = saved["rng_sample"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"'{path}': the trainer state is incomplete or damaged: "
                              f"{type(exc).__name__}: {exc}") from None
    return trainer
