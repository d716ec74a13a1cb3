"""``tinygrad-rnn train``: a character-level language model, the many-to-many classic.

With no arguments it trains on Python's own standard library source (no downloads; see
`tinygrad_rnn.training.corpus`), shows a progress bar, reports the validation bits per
character every ``--eval-every`` steps with a generated sample, and checkpoints to
``runs/char_lm.npz``. Training is truncated BPTT: ``--batch`` parallel streams through the
training text, consecutive windows of ``--seq-len`` characters, the recurrent state carried
from one window to the next but cut from the graph (``tg.detach_state``).

``--resume`` continues a checkpoint exactly: parameters, optimizer moments, the carried
state, the data position (a function of the step) and the random generators are all in the
file, so N steps plus N resumed steps give the same losses and weights as 2N steps.
"""

import json
import math
import os
import signal
import sys
import time

import numpy as np

from .. import optim
from ..autograd import no_grad
from ..nn import functional as F
from ..nn import init
from ..rnn.cell import detach_state, tree_map
from ..serialization import CheckpointError, load, save
from ..tensor import Tensor
from .corpus import CorpusError, Vocab, stdlib_corpus, text_corpus
from .model import CellSpecError, CharLM, sample
from .threads import blas_threads

CHECKPOINT_FORMAT = "tinygrad_rnn.char_lm"
CHECKPOINT_VERSION = 1
DEFAULT_CHECKPOINT = os.path.join("runs", "char_lm.npz")
CHECKPOINT_SECONDS = 30.0     # default checkpoint interval: a killed run loses under a minute

# The default run: about 3 minutes on 2 CPU cores (measured numbers in docs/training.md).
DEFAULTS = {
    "cell": "lstm", "hidden": 128, "layers": 1, "embed": 32, "seq_len": 50, "batch": 32,
    "lr": 5e-3, "clip": 5.0, "seed": 0, "steps": 3000,
}
# Options that define the run; on --resume they come from the checkpoint.
RUN_OPTIONS = ("cell", "hidden", "layers", "embed", "seq_len", "batch", "lr", "clip", "seed", "text")


class TrainError(ValueError):
    """A problem with the options or the checkpoint, reported without a traceback."""


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise ValueError
    return value


_positive_int.__name__ = "positive integer"


def _nonneg_int(text):
    value = int(text)
    if value < 0:
        raise ValueError
    return value


_nonneg_int.__name__ = "non-negative integer"


def _positive_float(text):
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise ValueError
    return value


_positive_float.__name__ = "positive number"


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


def run(args):
    try:
        with blas_threads(args.threads):
            return _train(args)
    except (TrainError, CorpusError, CellSpecError, CheckpointError) as exc:
        print(f"tinygrad-rnn train: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:           # e.g. the checkpoint directory is not writable
        print(f"tinygrad-rnn train: error: {exc}", file=sys.stderr)
        return 1


# --- data ----------------------------------------------------------------------------------

class Streams:
    """``batch`` contiguous streams through ``ids``; window ``w`` of every stream is
    ``ids[w*T : w*T + T]`` -> targets shifted by one. Step s reads window ``s mod windows``,
    so the data position is a function of the step (resume needs nothing else)."""

    def __init__(self, ids, batch, seq_len, what="training"):
        length = len(ids) // batch
        if length < seq_len + 1:
            raise TrainError(f"the {what} text has {len(ids):,} characters, too short for "
                             f"--batch {batch} x --seq-len {seq_len} (needs at least "
                             f"{batch * (seq_len + 1):,}); use a smaller --batch or --seq-len")
        self.data = np.ascontiguousarray(ids[:length * batch].reshape(batch, length).T)  # (L, B)
        self.seq_len = seq_len
        self.windows = (length - 1) // seq_len

    def window(self, step):
        """(inputs (T, B), targets (T, B), whether this window starts the streams anew)."""
        w = step % self.windows
        s = w * self.seq_len
        return self.data[s:s + self.seq_len], self.data[s + 1:s + self.seq_len + 1], w == 0


def evaluate(model, ids, seq_len, batch=64, stop=None):
    """Bits per character of ``model`` on ``ids`` (every position but the first of each of
    ``batch`` contiguous streams), the state carried across windows. Returns (bits, targets)
    or None if ``stop()`` became true on the way."""
    nb = max(1, min(batch, (len(ids) - 1) // max(seq_len, 1)))
    length = len(ids) // nb
    data = ids[:length * nb].reshape(nb, length).T
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            state = None
            for s in range(0, length - 1, seq_len):
                if stop is not None and stop():
                    return None
                x, y = data[s:s + seq_len], data[s + 1:s + seq_len + 1]
                x = x[:len(y)]
                logits, state = model(x, state)
                total += float(F.cross_entropy(logits, y, reduction="sum").data)
                count += y.size
    finally:
        model.train(was_training)
    return total / count / math.log(2), data[1:].ravel()


# --- configuration -------------------------------------------------------------------------

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


# --- the run -------------------------------------------------------------------------------

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


def _print_sample(progress, text, prime):
    shown = (prime + text).replace("\t", "    ")
    progress.write("  | " + "\n  | ".join(shown.splitlines() or [""]))


def _train(args):
    ckpt_path = args.checkpoint
    ckpt = None
    if args.resume:
        if not os.path.exists(ckpt_path):
            raise TrainError(f"--resume: there is no checkpoint at '{ckpt_path}' (pass --checkpoint "
                             "PATH, or start a new run without --resume)")
        ckpt = load_run_checkpoint(ckpt_path)
    cfg = _resolve_config(args, ckpt)

    corpus = text_corpus(cfg["text"]) if cfg["text"] else stdlib_corpus()
    if ckpt is not None and ckpt["trainer"].get("corpus_fingerprint") != corpus.fingerprint():
        # the stdlib corpus differs between Python versions too
        raise TrainError(f"--resume: the training text differs from the one '{ckpt_path}' was "
                         f"trained on ({corpus.description}); resuming needs the same text")
    vocab = Vocab(ckpt["vocab"]) if ckpt is not None else Vocab.from_text(corpus.train)
    train_ids, valid_ids = vocab.encode(corpus.train), vocab.encode(corpus.valid)
    streams = Streams(train_ids, cfg["batch"], cfg["seq_len"])
    if len(valid_ids) < 2:
        raise TrainError(f"the validation split of {corpus.description} is too short")

    init.manual_seed(cfg["seed"])
    if ckpt is not None:
        model, _ = model_from_checkpoint(ckpt, ckpt_path)
    else:
        model = CharLM(len(vocab), cell=cfg["cell"], hidden=cfg["hidden"], layers=cfg["layers"],
                       embed=cfg["embed"])
    cfg["dtype"] = model.dtype.name
    params = model.parameters()
    opt = optim.Adam(params, lr=cfg["lr"])
    sample_rng = np.random.default_rng([cfg["seed"], 1])
    step, hidden, losses, val_log, wall_before = 0, None, [], [], 0.0
    if ckpt is not None:
        tr = ckpt["trainer"]
        try:
            opt.load_state_dict(ckpt["optimizer"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"'{ckpt_path}': optimizer state does not fit the model: {exc}") from None
        try:
            step = int(tr["step"])
            hidden = None if tr["hidden"] is None else tree_map(Tensor, tr["hidden"])
            losses = [float(x) for x in np.asarray(tr["train_loss"])]
            val_log = [list(v) for v in tr["val"]]
            wall_before = float(tr["wall_time_s"])
            init.rng().bit_generator.state = tr["rng_init"]
            sample_rng.bit_generator.state = tr["rng_sample"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"'{ckpt_path}': the trainer state is incomplete or damaged: "
                                  f"{type(exc).__name__}: {exc}") from None

    target = cfg["steps"]
    eval_every = args.eval_every if args.eval_every is not None else max(1, target // 5)
    unigram = None
    val_positions = None

    def checkpoint(wall):
        directory = os.path.dirname(os.path.abspath(ckpt_path))
        os.makedirs(directory, exist_ok=True)
        save({
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "config": cfg, "vocab": vocab.chars,
            "corpus": {"description": corpus.description, "train_files": list(corpus.train_files),
                       "valid_files": list(corpus.valid_files)},
            "model": dict(model.state_dict()),
            "optimizer": opt.state_dict(),
            "trainer": {
                "step": step,
                "hidden": None if hidden is None else tree_map(lambda t: t.data, hidden),
                "train_loss": np.asarray(losses, dtype=np.float64),
                "val": val_log,
                "wall_time_s": wall,
                "rng_init": init.rng().bit_generator.state,
                "rng_sample": sample_rng.bit_generator.state,
                "corpus_fingerprint": corpus.fingerprint(),
            },
        }, ckpt_path)

    print(f"corpus: {corpus.description}")
    print(f"  {len(train_ids):,} training and {len(valid_ids):,} validation characters; vocabulary "
          f"{len(vocab) - 1} characters + 1 unknown")
    print(f"model: {cfg['cell']} x {cfg['layers']} layer(s), hidden {cfg['hidden']}, embedding "
          f"{cfg['embed']}: {model.num_parameters():,} parameters ({model.dtype.name})")
    print(f"training: steps {step} -> {target}, {cfg['batch']} streams x {cfg['seq_len']} characters "
          f"per step (truncated BPTT), Adam lr {cfg['lr']}, clip {cfg['clip'] or 'off'}")
    if args.resume:
        print(f"resumed from '{ckpt_path}' at step {step}")
    elif os.path.exists(ckpt_path):
        print(f"note: '{ckpt_path}' exists and will be overwritten (use --resume to continue it)")

    def validate():
        nonlocal unigram, val_positions
        result = evaluate(model, valid_ids, cfg["seq_len"], stop=lambda: interrupt.requested)
        if result is None:
            return None
        bits, targets = result
        if unigram is None:
            unigram = vocab.unigram_bits(train_ids, targets)
            val_positions = int(targets.size)
        val_log.append([step, bits])
        return bits

    start_wall, start_cpu = time.perf_counter(), time.process_time()
    train_time, trained_tokens = 0.0, 0
    last_ckpt = time.perf_counter()
    progress = _Progress(target, step, enabled=not args.no_progress)
    ema, tok_s = None, 0.0
    status, failure = "finished", None
    with _Interrupt() as interrupt:
        try:
            while step < target and not interrupt.requested:
                x, y, fresh = streams.window(step)
                if fresh:
                    hidden = None
                t0 = time.perf_counter()
                logits, new_hidden = model(x, hidden)
                loss = F.cross_entropy(logits, y)
                value = float(loss.data)
                if not math.isfinite(value):
                    raise FloatingPointError(f"the loss is {value}")
                opt.zero_grad()
                loss.backward()
                if cfg["clip"]:
                    optim.clip_grad_norm(params, cfg["clip"])
                opt.step()
                hidden = detach_state(new_hidden)
                step += 1
                dt = time.perf_counter() - t0
                train_time += dt
                trained_tokens += y.size
                losses.append(value)
                ema = value if ema is None else 0.95 * ema + 0.05 * value
                tok_s = y.size / dt if not tok_s else 0.9 * tok_s + 0.1 * y.size / dt
                progress.update(step, ema, tok_s)
                if eval_every and step % eval_every == 0 and step < target:
                    bits = validate()
                    if bits is not None:
                        progress.write(f"step {step}: validation {bits:.3f} bits/char (unigram "
                                       f"baseline {unigram:.3f})")
                        if args.sample_length:
                            _print_sample(progress, sample(model, vocab, "def ", args.sample_length,
                                                           0.8, sample_rng), "def ")
                due = (step % args.checkpoint_every == 0 if args.checkpoint_every
                       else args.checkpoint_every is None
                       and time.perf_counter() - last_ckpt >= CHECKPOINT_SECONDS)
                if due and step < target:
                    checkpoint(wall_before + time.perf_counter() - start_wall)
                    last_ckpt = time.perf_counter()
        except FloatingPointError as exc:
            status, failure = "diverged", exc
        finally:
            progress.close()
        if interrupt.requested and step < target:
            status = "interrupted"
        # The final validation first (Ctrl-C cuts it short), so the checkpoint records it.
        final_bits = validate() if status == "finished" else None
        if status != "diverged":
            checkpoint(wall_before + time.perf_counter() - start_wall)
    wall = wall_before + time.perf_counter() - start_wall
    cpu = time.process_time() - start_cpu
    session_tok_s = trained_tokens / train_time if train_time else 0.0
    if args.metrics_out:
        _write_metrics(args.metrics_out, {
            "status": status,
            "steps": step,
            "train_loss": losses,
            "train_loss_unit": "nats per character (divide by ln 2 for bits)",
            "validation": [{"step": s, "bits_per_char": b} for s, b in val_log],
            "final_val_bits_per_char": final_bits,
            "unigram_bits_per_char": unigram,
            "validation_characters": val_positions,
            "vocab_size": len(vocab),
            "tokens_per_s": session_tok_s,
            "wall_time_s": wall,
            "session_cpu_time_s": cpu,
            "config": cfg,
            "corpus": corpus.description,
            "checkpoint": os.path.abspath(ckpt_path),
        })

    if status == "diverged":
        print(f"tinygrad-rnn train: error: training diverged at step {step + 1}: {failure}\n"
              f"'{ckpt_path}' was not updated; try a lower --lr or --clip", file=sys.stderr)
        return 1
    if status == "interrupted":
        print(f"interrupted at step {step}; checkpoint saved to '{ckpt_path}'. Continue with: "
              f"tinygrad-rnn train --resume --checkpoint {ckpt_path}")
        return 130
    if final_bits is not None:
        print(f"validation: {final_bits:.3f} bits/char at step {step} (unigram baseline {unigram:.3f} "
              f"bits/char on the same {val_positions:,} characters)")
        if args.sample_length:
            _print_sample(progress, sample(model, vocab, "def ", args.sample_length, 0.8, sample_rng),
                          "def ")
    print(f"throughput: {session_tok_s:,.0f} characters/s of training; wall time {wall:.1f} s "
          f"(this session's CPU time {cpu:.1f} s)")
    print(f"checkpoint saved to '{ckpt_path}'; generate text with: tinygrad-rnn sample "
          f"--checkpoint {ckpt_path} --prime \"def \"")
    return 0


def _write_metrics(path, metrics):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=1)
    os.replace(tmp, path)
