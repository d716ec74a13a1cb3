"""One-to-many from an image: "caption" a picture of a digit by spelling its name.

The seed's image-captioning RNN, in miniature. The script draws its own images: digits in
a 5x7 bitmap font, placed at a random spot on a canvas 10 wide and 12 tall, with 3% of the
pixels flipped. The image is encoded (one-to-one: a two-layer MLP, the last with tanh) into
the *initial state* of a GRU decoder, which then spells the digit's name one character per step ("seven" ->
s, e, v, e, n, <eos>). Training feeds the true previous character (teacher forcing);
captioning uses ``tg.generate`` with a readout (Linear to character scores) and a feedback
(argmax -> embedding of the chosen character), so each step sees only its own last choice.

    python examples/03_digit_captions.py     # ~10 s
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

FONT = {            # 5 wide, 7 tall
    0: [" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "],
    1: ["  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "],
    2: [" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"],
    3: ["#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "],
    4: ["   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "],
    5: ["#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "],
    6: ["  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "],
    7: ["#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "],
    8: [" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "],
    9: [" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "],
}
GLYPHS = np.array([[[c == "#" for c in row] for row in FONT[d]] for d in range(10)], dtype=DTYPE)
CANVAS = (12, 10)   # rows, columns
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# Characters: the letters of the names, then end-of-sequence, begin-of-sequence and padding.
LETTERS = sorted(set("".join(NAMES)))
EOS, BOS, PAD = len(LETTERS), len(LETTERS) + 1, len(LETTERS) + 2
VOCAB = len(LETTERS) + 3
MAX_LEN = max(len(n) for n in NAMES) + 1          # letters + <eos>


def draw_digits(rng, digits, flip=0.03):
    """Images (B, rows*cols): each digit's glyph at a random offset, each pixel flipped
    with probability ``flip``."""
    rows, cols = CANVAS
    images = np.zeros((len(digits), rows, cols), DTYPE)
    for i, d in enumerate(digits):
        r, c = rng.integers(0, rows - 7 + 1), rng.integers(0, cols - 5 + 1)
        images[i, r:r + 7, c:c + 5] = GLYPHS[d]
    flips = rng.random(images.shape) < flip
    images[flips] = 1 - images[flips]
    return images.reshape(len(digits), -1)


def spell(digits):
    """Teacher-forcing pairs, each (MAX_LEN, B): decoder inputs [<bos>, s, e, v, e, n] and
    targets [s, e, v, e, n, <eos>], padded with PAD (which the loss ignores)."""
    inputs = np.full((MAX_LEN, len(digits)), PAD)
    targets = np.full((MAX_LEN, len(digits)), PAD)
    for b, d in enumerate(digits):
        chars = [LETTERS.index(ch) for ch in NAMES[d]]
        inputs[:len(chars) + 1, b] = [BOS] + chars
        targets[:len(chars) + 1, b] = chars + [EOS]
    return inputs, targets


class Captioner(nn.Module):
    def __init__(self, hidden_size, embed_size, eager=False):
        rows, cols = CANVAS
        self.encoder_hidden = nn.Linear(rows * cols, 128, dtype=DTYPE)      # image -> features
        self.encoder = nn.Linear(128, hidden_size, dtype=DTYPE)             # features -> h_0
        self.embed = nn.Embedding(VOCAB, embed_size, dtype=DTYPE)
        self.decoder = tg.GRUCell(embed_size, hidden_size, dtype=DTYPE)
        self.readout = nn.Linear(hidden_size, VOCAB, dtype=DTYPE)           # y_t = W_hy h_t
        self.teacher_forced = tg.Unroll(compiled(self.decoder, eager))      # same Parameters

    def initial_state(self, images):
        features = self.encoder_hidden(tg.Tensor(images)).relu()
        return self.encoder(features).tanh()                                 # (B, H)

    def forward(self, images, char_inputs):
        """Teacher forcing: character logits (MAX_LEN, B, VOCAB)."""
        ys, _ = self.teacher_forced(self.embed(char_inputs), state=self.initial_state(images))
        return self.readout(ys)

    def caption(self, images):
        """Greedy one-to-many decoding: the image is the initial state, each step's argmax
        character is embedded and fed back as the next input."""
        with tg.no_grad():
            start = self.embed(np.full(len(images), BOS))
            logits, _ = tg.generate(self.decoder, start, MAX_LEN, state=self.initial_state(images),
                                    readout=self.readout,
                                    feedback=lambda scores: self.embed(scores.data.argmax(-1)))
        return [decode(seq) for seq in logits.data.argmax(-1).T]


def decode(chars):
    out = []
    for c in chars:
        if c == EOS:
            break
        out.append(LETTERS[c] if c < len(LETTERS) else "?")
    return "".join(out)


def ascii_art(image):
    rows, cols = CANVAS
    return "\n".join("".join("#" if p > 0.5 else "." for p in row) for row in image.reshape(rows, cols))


def main(steps=1500, seed=0, quick=False, out_dir=None, eager=False):
    """Train, caption fresh images; return {"exact_match", "loss_first", "loss_last", ...}."""
    hidden, embed, batch = (16, 8, 16) if quick else (64, 16, 64)
    tg.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Captioner(hidden, embed, eager=eager)

    def batch_loss():
        digits = rng.integers(0, 10, batch)
        char_inputs, targets = spell(digits)
        logits = model(draw_digits(rng, digits), char_inputs)
        return F.cross_entropy(logits, targets, ignore_index=PAD)

    start = time.perf_counter()
    losses, _ = fit(model.parameters(), batch_loss, steps, lr=3e-3)
    print(f"trained in {time.perf_counter() - start:.1f} s")

    digits = rng.integers(0, 10, 1000)
    images = draw_digits(rng, digits)
    captions = model.caption(images)
    exact = float(np.mean([c == NAMES[d] for c, d in zip(captions, digits)]))
    wrong = [i for i, (c, d) in enumerate(zip(captions, digits)) if c != NAMES[d]]
    misspelled = sum(captions[i] not in NAMES for i in wrong)
    for i in [0, 1] + wrong[:1]:
        print(ascii_art(images[i]) + f"\n  -> caption {captions[i]!r}  (truth {NAMES[digits[i]]!r})")
    print(f"exact-match accuracy on 1000 new images: {exact:.1%}  "
          "(chance: 10% if it always spelled some digit's name)")
    print(f"of the {len(wrong)} wrong captions, {misspelled} are not a digit's name at all "
          "(the rest name the wrong digit)")
    return {"exact_match": exact, "chance": 0.1, "misspelled": misspelled / len(captions),
            "captions": captions[:10], "digits": digits[:10].tolist(),
            "loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-10:]))}


if __name__ == "__main__":
    args = parse_args(__doc__, steps=1500)
    main(steps=args.steps, seed=args.seed, quick=args.quick, out_dir=args.out, eager=args.eager)
