"""Seq2seq: an encoder-decoder that learns to reverse strings of digits.

The seed's sequence-to-sequence model: a many-to-one encoder reads "3 1 4 1 5" into one
vector (its final state), and a one-to-many decoder starts from that vector and writes
"5 1 4 1 3 <eos>". ``tg.Seq2Seq`` wires the two GRUs together: trained with teacher forcing
(the decoder reads the true previous digit), evaluated with greedy decoding through
``Seq2Seq.generate`` (the decoder reads its own previous choice). Strings have 1 to 8
digits; the encoder stops at each string's own length (``src_lengths``). The trained
weights are saved with ``tg.save`` and the evaluation uses the copy ``tg.load`` reads back.

    python examples/04_seq2seq_reverse.py    # ~70 s; writes examples/out/seq2seq_reverse.safetensors
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small matmuls: BLAS threads cost more than they give

import time

import numpy as np

import tinygrad_rnn as tg
from tinygrad_rnn import nn
from tinygrad_rnn.nn import functional as F

from _common import compiled, fit, parse_args  # this folder's shared helpers

DTYPE = np.float32
EOS, BOS, PAD = 10, 11, 12          # tokens 0..9 are the digits
VOCAB = 13


def make_batch(rng, batch_size, max_len):
    """Source (T, B) digits padded with PAD, lengths (B,), decoder inputs and targets
    (max_len + 1, B): [<bos>, reversed digits] -> [reversed digits, <eos>]."""
    lengths = rng.integers(1, max_len + 1, batch_size)
    src = np.full((max_len, batch_size), PAD)
    tgt_in = np.full((max_len + 1, batch_size), PAD)
    tgt_out = np.full((max_len + 1, batch_size), PAD)
    for b, n in enumerate(lengths):
        digits = rng.integers(0, 10, n)
        src[:n, b] = digits
        tgt_in[:n + 1, b] = [BOS, *digits[::-1]]
        tgt_out[:n + 1, b] = [*digits[::-1], EOS]
    return src, lengths, tgt_in, tgt_out


class Reverser(nn.Module):
    def __init__(self, hidden_size, embed_size, eager=False):
        self.embed = nn.Embedding(VOCAB, embed_size, dtype=DTYPE)        # shared by both sides
        encoder, decoder = (compiled(tg.GRUCell(embed_size, hidden_size, dtype=DTYPE), eager)
                            for _ in range(2))
        self.seq2seq = tg.Seq2Seq(encoder, decoder)
        self.readout = nn.Linear(hidden_size, VOCAB, dtype=DTYPE)

    def forward(self, src, lengths, tgt_in):
        """Teacher forcing: logits (max_len + 1, B, VOCAB)."""
        ys = self.seq2seq(self.embed(src), self.embed(tgt_in), src_lengths=lengths)
        return self.readout(ys)

    def greedy(self, src, lengths, steps):
        """Greedy decoding: token ids (steps, B); each step feeds back its argmax."""
        with tg.no_grad():
            start = self.embed(np.full(src.shape[1], BOS))
            logits, _ = self.seq2seq.generate(self.embed(src), start, steps, readout=self.readout,
                                              feedback=lambda s: self.embed(s.data.argmax(-1)),
                                              src_lengths=lengths)
        return logits.data.argmax(-1)


def save_and_reload(model, out_dir, hidden, embed):
    """Checkpoint the weights with tg.save and return a fresh model loaded from the file."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "seq2seq_reverse.safetensors")
    tg.save({"model": model.state_dict(), "hidden": hidden, "embed": embed}, path)
    checkpoint = tg.load(path)
    reloaded = Reverser(checkpoint["hidden"], checkpoint["embed"])
    reloaded.load_state_dict(checkpoint["model"])
    print(f"saved {path}; evaluating the model loaded back from it")
    return reloaded


def until_eos(tokens):
    tokens = list(tokens)
    return tokens[:tokens.index(EOS)] if EOS in tokens else tokens


def main(steps=2500, seed=0, quick=False, out_dir=None, eager=False):
    """Train, decode fresh strings; return {"sequence_accuracy", "token_accuracy", ...}."""
    hidden, embed, batch, max_len = (16, 8, 16, 4) if quick else (128, 16, 64, 8)
    tg.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Reverser(hidden, embed, eager=eager)

    def batch_loss():
        src, lengths, tgt_in, tgt_out = make_batch(rng, batch, max_len)
        return F.cross_entropy(model(src, lengths, tgt_in), tgt_out, ignore_index=PAD)

    start = time.perf_counter()
    losses, _ = fit(model.parameters(), batch_loss, steps, lr=3e-3)
    print(f"trained in {time.perf_counter() - start:.1f} s")
    if out_dir is not None:
        model = save_and_reload(model, out_dir, hidden, embed)

    src, lengths, _, tgt_out = make_batch(rng, 1000, max_len)
    decoded = model.greedy(src, lengths, max_len + 1)
    right = [until_eos(decoded[:, b]) == until_eos(tgt_out[:, b]) for b in range(len(lengths))]
    # Per-position accuracy over the target digits and <eos> (padding excluded).
    counted = tgt_out != PAD
    token_acc = float((decoded == tgt_out)[counted].mean())
    seq_acc = float(np.mean(right))
    for b in range(3):
        shown = "".join(map(str, src[:lengths[b], b]))
        print(f"  {shown:>{max_len}} -> {''.join(map(str, until_eos(decoded[:, b])))}")
    print(f"sequence accuracy (greedy, 1000 new strings of 1..{max_len} digits): {seq_acc:.1%}")
    print(f"token accuracy: {token_acc:.1%}  (chance 1/11 per token)")
    by_len = {n: float(np.mean([r for r, m in zip(right, lengths) if m == n])) for n in range(1, max_len + 1)}
    print("sequence accuracy by length: " + "  ".join(f"{n}: {a:.0%}" for n, a in by_len.items()))
    return {"sequence_accuracy": seq_acc, "token_accuracy": token_acc, "accuracy_by_length": by_len,
            "loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-10:]))}


if __name__ == "__main__":
    args = parse_args(__doc__, steps=2500)
    main(steps=args.steps, seed=args.seed, quick=args.quick, out_dir=args.out, eager=args.eager)
