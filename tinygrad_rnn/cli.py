"""`tinygrad-rnn` command line (placeholder until the training job lands)."""

import numpy as np


def main(argv=None):
    import tinygrad_rnn as tg
    W = tg.Tensor(np.random.default_rng(0).standard_normal((4, 3)), requires_grad=True)
    x = tg.Tensor(np.random.default_rng(1).standard_normal((5, 4)))
    loss = (x @ W).tanh().sum()
    loss.backward()
    print("loss", loss.item(), "dloss/dW", W.grad)
    return 0
