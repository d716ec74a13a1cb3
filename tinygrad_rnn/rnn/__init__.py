"""Recurrent cells and the ways to run them."""

from .cell import Cell, detach_state, tree_map
from .cells import GRUCell, LSTMCell, RNNCell
from .combinators import Bidirectional, Stack
from .generate import FeedbackCell, Seq2Seq, generate
from .min_cells import MinGRUCell, MinLSTMCell
from .unroll import Unroll
