"""``tinygrad-rnn train``: a character-level language model, the many-to-many classic.

With no arguments it trains on Python's own standard library source (no downloads; see
`tinygrad_rnn.training.corpus`), shows a progress bar, reports the validation bits per
character every ``--eval-every`` steps with a generated sample, and checkpoints to
``runs/char_lm.safetensors``. Training is truncated BPTT: ``--batch`` parallel streams through the
training text, consecutive windows of ``--seq-len`` characters, the recurrent state carried
from one window to the next but cut from the graph (``tg.detach_state``).

``--resume`` continues a checkpoint exactly: parameters, optimizer moments, the carried
state, the data position (a function of the step) and the random generators are all in the
file, so N steps plus N resumed steps give the same losses and weights as 2N steps.

The pieces live in `tinygrad_rnn.training`: the batches, one step and the validation in
``loop.py``, the checkpoint format and resume in ``checkpoint.py``. This module holds the
options, the run's setup, the loop that strings the pieces together, signals and reporting.
"""

import dataclasses
import json
import math
import os
import signal
import sys
import time

import numpy as np

from .. import optim
from ..nn import init
from ..serialization import CheckpointError
from ..training.checkpoint import (
    DEFAULT_CHECKPOINT,
    TrainerState,
    load_run_checkpoint,
    model_from_checkpoint,
    restore_trainer,
    save_run_checkpoint,
)
from ..training.corpus import CorpusError, Vocab, stdlib_corpus, text_corpus
from ..training.loop import Streams, TrainError, evaluate, train_step
from ..training.model import CellSpecError, CharLM, sample
from ._threads import blas_threads

CHECKPOINT_SECONDS = 30.0     # default checkpoint interval: a killed run loses under a minute
SAMPLE_PRIME = "def "

# The default run: about 1.5-2 minutes on 2 CPU cores (measured numbers in docs/training.md).
DEFAULTS = {
    "cell": "lstm", "hidden": 256, "layers": 1, "embed": 32, "seq_len": 50, "batch": 32,
    "lr": 8e-3, "lr_schedule": "cosine", "clip": 5.0, "seed": 0, "steps": 1400,
}
LR_FLOOR = 0.05     # the cosine schedule ends at this fraction of --lr
# Options that define the run; on --resume they come from the checkpoint.
RUN_OPTIONS = ("cell", "hidden", "layers", "embed", "seq_len", "batch", "lr", "lr_schedule", "clip",
               "seed", "text")


def _checked(convert, accept, name):
    """An argparse ``type``: ``convert(text)``, refused unless ``accept(value)``."""
    def parse(text):
        value = convert(text)
        if not accept(value):
            raise ValueError
        return value
    parse.__name__ = name           # argparse says "invalid positive integer value: '0'"
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "positive integer")
_nonneg_int = _checked(int, lambda v: v >= 0, "non-negative integer")
_positive_float = _checked(float, lambda v: v > 0 and math.isfinite(v), "positive number")


def add_arguments(p):
    d = DEFAULTS
    data = p.add_argument_group("data")
    data.add_argument("--text", metavar="PATH",
                      help="a UTF-8 text file or a folder of them (default: Python's standard library "
                           "source, a fixed selection of modules)")
    model = p.add_argument_group("model")
    model.add_argument("--cell", metavar="CELL",
                       help=f"rnn, lstm, gru, mingru, minlstm, or package.module:ClassName for your "
                            f"own Cell subclass, built as ClassName(input_size, hidden_size) "
                            f"(default: {d['cell']})")
    model.add_argument("--hidden", type=_positive_int, metavar="H",
                       help=f"hidden size of every layer (default: {d['hidden']})")
    model.add_argument("--layers", type=_positive_int, metavar="L",
                       help=f"stacked recurrent layers (default: {d['layers']})")
    model.add_argument("--embed", type=_positive_int, metavar="E",
                       help=f"character embedding size (default: {d['embed']})")
    train = p.add_argument_group("training")
    train.add_argument("--seq-len", type=_positive_int, metavar="T",
                       help=f"characters per truncated-BPTT window (default: {d['seq_len']})")
    train.add_argument("--batch", type=_positive_int, metavar="B",
                       help=f"parallel streams through the text (default: {d['batch']})")
    train.add_argument("--steps", type=_positive_int, metavar="N",
                       help=f"total optimizer steps; with --resume, the step to continue to "
                            f"(default: {d['steps']}, or the checkpoint's target)")
    train.add_argument("--lr", type=_positive_float, help=f"Adam learning rate (default: {d['lr']})")
    train.add_argument("--lr-schedule", choices=("cosine", "constant"),
                       help=f"cosine: from --lr down to {LR_FLOOR:g} x --lr at the last step "
                            f"(tg.optim.CosineAnnealingLR); constant: --lr throughout "
                            f"(default: {d['lr_schedule']})")
    train.add_argument("--clip", type=float, metavar="NORM",
                       help=f"clip the gradient norm to this; 0 disables (default: {d['clip']})")
    train.add_argument("--seed", type=int, help=f"seed of weights and sampling (default: {d['seed']})")
    run = p.add_argument_group("checkpoints and output")
    run.add_argument("--checkpoint", metavar="PATH", default=DEFAULT_CHECKPOINT,
                     help="checkpoint file, written atomically (default: %(default)s)")
    run.add_argument("--checkpoint-every", type=_nonneg_int, metavar="N",
                     help=f"checkpoint every N steps, 0 = only at the end and on Ctrl-C (default: "
                          f"whenever {CHECKPOINT_SECONDS:.0f} s have passed since the last one)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --checkpoint exactly where it stopped")
    run.add_argument("--metrics-out", metavar="PATH",
                     help="write a JSON of per-step train loss, validation bits/char, tokens/s "
                          "and wall time")
    run.add_argument("--eval-every", type=_nonneg_int, metavar="N",
                     help="validate and print a sample every N steps, 0 = only at the end "
                          "(default: --steps / 5)")
    run.add_argument("--sample-length", type=_nonneg_int, default=200, metavar="N",
                     help="characters in each progress sample (default: %(default)s)")
    run.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    run.add_argument("--threads", type=_nonneg_int, default=1, metavar="N",
                     help="BLAS threads; 1 is fastest for these small matrices, 0 leaves the BLAS "
                          "default (default: %(default)s)")
    run.add_argument("--eager", action="store_true",
                     help="step the cell op by op instead of running each sequence as compiled "
                          "loops (tg.compile): the readable ground truth, several times slower")


def run(args):
    try:
        with blas_threads(args.threads):
            return train(args)
    except (TrainError, CorpusError, CellSpecError, CheckpointError) as exc:
        print(f"tinygrad-rnn train: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:           # e.g. the checkpoint directory is not writable
        print(f"tinygrad-rnn train: error: {exc}", file=sys.stderr)
        return 1


def train(args):
    """The whole command: set the run up, train to the target step, report. Returns the
    exit code (0 finished, 1 diverged, 130 interrupted)."""
    run = open_run(args)
    _print_header(run, resumed=args.resume)
    session = _Session(wall_before=run.trainer.wall_time_s)
    progress = _Progress(run.target, run.trainer.step, enabled=not args.no_progress)
    with _Interrupt() as interrupt:
        try:
            _train_until_target(run, args, session, progress, interrupt)
        except FloatingPointError as exc:
            session.status, session.failure = "diverged", exc
        finally:
            progress.close()
        if interrupt.requested and run.trainer.step < run.target:
            session.status = "interrupted"
        # The final validation first (Ctrl-C cuts it short), so the checkpoint records it.
        if session.status == "finished":
            session.final_bits = run.validate(stop=lambda: interrupt.requested)
        if session.status != "diverged":
            run.save(session.wall_time())
    session.stop_clocks()
    if args.metrics_out:
        _write_metrics(args.metrics_out, _metrics(run, session))
    return _print_outcome(run, session, progress, args.sample_length)


# --- the run's setup -----------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """Everything one training run works with, fresh or resumed from its checkpoint."""

    config: dict
    checkpoint: str
    corpus: object
    vocab: Vocab
    train_ids: np.ndarray
    valid_ids: np.ndarray
    streams: Streams
    model: CharLM
    optimizer: optim.Optimizer
    trainer: TrainerState
    sample_rng: np.random.Generator
    schedule: optim.CosineAnnealingLR = None      # None: a constant learning rate
    unigram_bits: float = None          # set by the first validation
    validation_characters: int = None

    @property
    def target(self):
        return self.config["steps"]

    def validate(self, stop=None):
        """Validation bits/char now, logged in the trainer state (None if ``stop()`` cut it)."""
        result = evaluate(self.model, self.valid_ids, self.config["seq_len"], stop=stop)
        if result is None:
            return None
        bits, targets = result
        if self.unigram_bits is None:
            self.unigram_bits = self.vocab.unigram_bits(self.train_ids, targets)
            self.validation_characters = int(targets.size)
        self.trainer.val.append([self.trainer.step, bits])
        return bits

    def save(self, wall_time_s):
        self.trainer.wall_time_s = wall_time_s
        save_run_checkpoint(self.checkpoint, config=self.config, vocab=self.vocab, corpus=self.corpus,
                            model=self.model, optimizer=self.optimizer, trainer=self.trainer,
                            sample_rng=self.sample_rng)

    def sample(self, length):
        return sample(self.model, self.vocab, SAMPLE_PRIME, length, 0.8, self.sample_rng)


def open_run(args):
    """The `Run` the options ask for: a new one, or (``--resume``) the checkpoint's, checked
    against the command line and the text."""
    path = args.checkpoint
    ckpt = None
    if args.resume:
        if not os.path.exists(path):
            raise TrainError(f"--resume: there is no checkpoint at '{path}' (pass --checkpoint "
                             "PATH, or start a new run without --resume)")
        ckpt = load_run_checkpoint(path)
    cfg = _resolve_config(args, ckpt)

    corpus = text_corpus(cfg["text"]) if cfg["text"] else stdlib_corpus()
    if ckpt is not None and ckpt["trainer"].get("corpus_fingerprint") != corpus.fingerprint():
        # the stdlib corpus differs between Python versions too
        raise TrainError(f"--resume: the training text differs from the one '{path}' was "
                         f"trained on ({corpus.description}); resuming needs the same text")
    vocab = Vocab(ckpt["vocab"]) if ckpt is not None else Vocab.from_text(corpus.train)
    train_ids, valid_ids = vocab.encode(corpus.train), vocab.encode(corpus.valid)
    streams = Streams(train_ids, cfg["batch"], cfg["seq_len"])
    if len(valid_ids) < 2:
        raise TrainError(f"the validation split of {corpus.description} is too short")

    init.manual_seed(cfg["seed"])
    if ckpt is not None:
        model, _ = model_from_checkpoint(ckpt, path)
    else:
        model = build_model(cfg, len(vocab))
    if not args.eager:
        model.compile()
    cfg["dtype"] = model.dtype.name
    optimizer = optim.Adam(model.parameters(), lr=cfg["lr"])
    # Checkpoints from before the schedule existed trained at a constant rate.
    schedule = (optim.CosineAnnealingLR(optimizer, T_max=cfg["steps"], eta_min=LR_FLOOR * cfg["lr"])
                if cfg.get("lr_schedule") == "cosine" else None)
    sample_rng = np.random.default_rng([cfg["seed"], 1])
    trainer = TrainerState() if ckpt is None else restore_trainer(ckpt, path, optimizer, sample_rng)
    return Run(cfg, path, corpus, vocab, train_ids, valid_ids, streams, model, optimizer, trainer,
               sample_rng, schedule)


def build_model(cfg, vocab_size):
    """The model of a new run (the weights drawn from `tinygrad_rnn.nn.init`'s generator)."""
    return CharLM(vocab_size, cell=cfg["cell"], hidden=cfg["hidden"], layers=cfg["layers"],
                  embed=cfg["embed"])


def _resolve_config(args, ckpt):
    """The run's options: defaults, the command line, or (on --resume) the checkpoint, with
    a clear error when the command line contradicts the checkpoint."""
    given = {k: getattr(args, k) for k in RUN_OPTIONS}
    if given["text"] is not None:
        given["text"] = os.path.abspath(given["text"])
    if ckpt is None:
        cfg = {k: (DEFAULTS.get(k) if v is None else v) for k, v in given.items()}
        cfg["steps"] = args.steps or DEFAULTS["steps"]
    else:
        cfg = dict(ckpt["config"])
        clashes = [f"--{k.replace('_', '-')} {given[k]} (checkpoint: {cfg.get(k)})"
                   for k in RUN_OPTIONS if given[k] is not None and given[k] != cfg.get(k)]
        if clashes:
            raise TrainError(f"--resume continues the run in '{args.checkpoint}' with its own "
                             f"options; these differ: {', '.join(clashes)}. Drop them, or start a "
                             "new run with another --checkpoint")
        if args.steps:
            cfg["steps"] = args.steps
    if cfg["clip"] is not None and (cfg["clip"] < 0 or not math.isfinite(cfg["clip"])):
        raise TrainError(f"--clip must be a non-negative number, got {cfg['clip']}")
    return cfg


# --- the loop ------------------------------------------------------------------------------

@dataclasses.dataclass
class _Session:
    """This session's clocks, throughput and outcome (a resumed run adds a session)."""

    wall_before: float = 0.0            # wall time of the run's earlier sessions
    status: str = "finished"            # or "diverged", "interrupted"
    failure: Exception = None
    final_bits: float = None
    train_time_s: float = 0.0           # inside train_step only
    trained_characters: int = 0
    start_wall: float = dataclasses.field(default_factory=time.perf_counter)
    start_cpu: float = dataclasses.field(default_factory=time.process_time)
    wall_time_s: float = None           # set by stop_clocks
    cpu_time_s: float = None

    def wall_time(self):
        """The run's wall time over all its sessions, up to now."""
        return self.wall_before + time.perf_counter() - self.start_wall

    def stop_clocks(self):
        self.wall_time_s = self.wall_time()
        self.cpu_time_s = time.process_time() - self.start_cpu

    @property
    def characters_per_s(self):
        return self.trained_characters / self.train_time_s if self.train_time_s else 0.0


def _train_until_target(run, args, session, progress, interrupt):
    """Steps until the target or a Ctrl-C, with validations and checkpoints on the way."""
    trainer, target = run.trainer, run.target
    eval_every = args.eval_every if args.eval_every is not None else max(1, target // 5)
    last_checkpoint = time.perf_counter()
    ema, tok_s = None, 0.0
    while trainer.step < target and not interrupt.requested:
        x, y, fresh = run.streams.window(trainer.step)
        if fresh:
            trainer.hidden = None
        if run.schedule is not None:
            run.optimizer.lr = run.schedule.lr_at(trainer.step)     # a function of the step alone
        t0 = time.perf_counter()
        value, trainer.hidden = train_step(run.model, run.optimizer, x, y, trainer.hidden,
                                           clip=run.config["clip"])
        trainer.step += 1
        dt = time.perf_counter() - t0
        session.train_time_s += dt
        session.trained_characters += y.size
        trainer.train_loss.append(value)
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        tok_s = y.size / dt if not tok_s else 0.9 * tok_s + 0.1 * y.size / dt
        progress.update(trainer.step, ema, tok_s)
        if trainer.step >= target:
            break                       # the last step's validation and checkpoint follow the loop
        if eval_every and trainer.step % eval_every == 0:
            bits = run.validate(stop=lambda: interrupt.requested)
            if bits is not None:
                progress.write(f"step {trainer.step}: validation {bits:.3f} bits/char (unigram "
                               f"baseline {run.unigram_bits:.3f})")
                if args.sample_length:
                    _print_sample(progress, run.sample(args.sample_length))
        if _checkpoint_due(trainer.step, args.checkpoint_every, last_checkpoint):
            run.save(session.wall_time())
            last_checkpoint = time.perf_counter()


def _checkpoint_due(step, every, last_checkpoint):
    """Every ``every`` steps; 0 = never before the end; None = every CHECKPOINT_SECONDS."""
    if every is None:
        return time.perf_counter() - last_checkpoint >= CHECKPOINT_SECONDS
    return every > 0 and step % every == 0


# --- reporting -----------------------------------------------------------------------------

class _Interrupt:
    """First Ctrl-C (or SIGTERM): finish the step, checkpoint, stop. A second one stops at once."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))

    def __init__(self):
        self.requested = False
        self._prev = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        for sig in self.SIGNALS:
            try:
                self._prev[sig] = signal.signal(sig, self._handle)
            except ValueError:      # not the main thread: signals keep their default meaning
                pass
        return self

    def __exit__(self, *exc):
        for sig, prev in self._prev.items():
            signal.signal(sig, prev)
        return False


class _Progress:
    """A tqdm bar when available and wanted, else a log line every ``every`` steps."""

    def __init__(self, total, initial, enabled):
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                                desc="train", file=sys.stderr, mininterval=0.5)
            except ImportError:
                pass
        self.every = max(1, min(100, total // 20))

    def update(self, step, loss, tok_s):
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.3f} ({loss / math.log(2):.2f} bits/char), "
                                     f"{tok_s:,.0f} chars/s", refresh=False)
            self.bar.update(1)
        elif step % self.every == 0:
            print(f"step {step}: loss {loss:.3f} ({loss / math.log(2):.2f} bits/char), "
                  f"{tok_s:,.0f} chars/s", flush=True)

    def write(self, text):
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _print_sample(progress, text):
    shown = (SAMPLE_PRIME + text).replace("\t", "    ")
    progress.write("  | " + "\n  | ".join(shown.splitlines() or [""]))


def _print_header(run, resumed):
    cfg, corpus = run.config, run.corpus
    print(f"corpus: {corpus.description}")
    print(f"  {len(run.train_ids):,} training and {len(run.valid_ids):,} validation characters; "
          f"vocabulary {len(run.vocab) - 1} characters + 1 unknown")
    print(f"model: {cfg['cell']} x {cfg['layers']} layer(s), hidden {cfg['hidden']}, embedding "
          f"{cfg['embed']}: {run.model.num_parameters():,} parameters ({run.model.dtype.name})")
    print(f"training: steps {run.trainer.step} -> {run.target}, {cfg['batch']} streams x "
          f"{cfg['seq_len']} characters per step (truncated BPTT), Adam lr {cfg['lr']}"
          f"{' cosine to ' + format(LR_FLOOR * cfg['lr'], 'g') if run.schedule else ''}, clip "
          f"{cfg['clip'] or 'off'}")
    if resumed:
        print(f"resumed from '{run.checkpoint}' at step {run.trainer.step}")
    elif os.path.exists(run.checkpoint):
        print(f"note: '{run.checkpoint}' exists and will be overwritten (use --resume to continue it)")


def _print_outcome(run, session, progress, sample_length):
    """The closing lines; returns the exit code."""
    step, path = run.trainer.step, run.checkpoint
    if session.status == "diverged":
        print(f"tinygrad-rnn train: error: training diverged at step {step + 1}: {session.failure}\n"
              f"'{path}' was not updated; try a lower --lr or --clip", file=sys.stderr)
        return 1
    if session.status == "interrupted":
        print(f"interrupted at step {step}; checkpoint saved to '{path}'. Continue with: "
              f"tinygrad-rnn train --resume --checkpoint {path}")
        return 130
    if session.final_bits is not None:
        print(f"validation: {session.final_bits:.3f} bits/char at step {step} (unigram baseline "
              f"{run.unigram_bits:.3f} bits/char on the same {run.validation_characters:,} characters)")
        if sample_length:
            _print_sample(progress, run.sample(sample_length))
    print(f"throughput: {session.characters_per_s:,.0f} characters/s of training; wall time "
          f"{session.wall_time_s:.1f} s (this session's CPU time {session.cpu_time_s:.1f} s)")
    print(f"checkpoint saved to '{path}'; generate text with: tinygrad-rnn sample "
          f"--checkpoint {path} --prime \"{SAMPLE_PRIME}\"")
    return 0


def _metrics(run, session):
    """What ``--metrics-out`` writes."""
    return {
        "status": session.status,
        "steps": run.trainer.step,
        "train_loss": run.trainer.train_loss,
        "train_loss_unit": "nats per character (divide by ln 2 for bits)",
        "validation": [{"step": s, "bits_per_char": b} for s, b in run.trainer.val],
        "final_val_bits_per_char": session.final_bits,
        "unigram_bits_per_char": run.unigram_bits,
        "validation_characters": run.validation_characters,
        "vocab_size": len(run.vocab),
        "tokens_per_s": session.characters_per_s,
        "wall_time_s": session.wall_time_s,
        "session_cpu_time_s": session.cpu_time_s,
        "config": run.config,
        "corpus": run.corpus.description,
        "checkpoint": os.path.abspath(run.checkpoint),
    }


def _write_metrics(path, metrics):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=1)
    os.replace(tmp, path)
