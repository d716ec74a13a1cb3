"""Layers and containers: Module, Parameter, Linear, Embedding, Dropout, init."""

from . import functional, init
from .layers import Dropout, Embedding, Linear
from .module import Module, Parameter
