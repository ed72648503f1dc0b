"""Build the model a checkpoint describes without drawing the random values it would overwrite.

Building an open_clip model draws random initial values for every parameter
(about a second per 100M parameters on a CPU), only for intake to overwrite all
of them with the file's tensors. Here the architecture is built with the random
draws skipped and the file's tensors are copied straight in. They are copied,
not adopted as they are: the model's own freshly allocated (aligned) storage
gives the same bits in every forward pass as a model loaded any other way,
whereas views at a file's arbitrary offsets change the rounding of vectorised
kernels.

Nothing uninitialised can escape: the strict load replaces every parameter and
persistent buffer, and a non-persistent buffer (which no file holds) that a
skipped draw, or any random draw, went into makes the build fall back to the
ordinary, fully initialised one, so such a model gets exactly the values it
always got.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from cbpt_guard.intake import architecture


def _random_fills() -> frozenset:
    """The in-place random initialisers that model constructors call; their values are always overwritten."""
    init = torch.nn.init
    return frozenset({
        torch.Tensor.uniform_, torch.Tensor.normal_, torch.Tensor.random_, torch.Tensor.bernoulli_,
        torch.Tensor.exponential_, torch.Tensor.geometric_, torch.Tensor.log_normal_, torch.Tensor.cauchy_,
        init.uniform_, init.normal_, init.trunc_normal_, init.xavier_uniform_, init.xavier_normal_,
        init.kaiming_uniform_, init.kaiming_normal_, init.orthogonal_, init.sparse_,
    })


def _random_draws() -> frozenset:
    """Factories that draw random values: run as usual, but what they return counts as random."""
    return frozenset({torch.rand, torch.randn, torch.randint, torch.randperm, torch.normal, torch.bernoulli,
                      torch.multinomial, torch.rand_like, torch.randn_like, torch.randint_like, torch.poisson})


class SkipRandomInit(TorchFunctionMode):
    """Within it, in-place random initialisers leave their tensor as it is; random values are traced.

    ``tainted`` holds the data pointers of every storage whose values came from a
    skipped fill or a random draw, or from an operation on such a storage, so the
    caller can tell whether anything it keeps depends on them. Only for a model
    whose values are about to be replaced: see :func:`build_filled_model`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fills = _random_fills()
        self.draws = _random_draws()
        self.tainted: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        """Skip a random fill (returning its tensor, as the fill would); run anything else, tracing taint."""
        kwargs = kwargs or {}
        if func in self.fills:
            tensor = args[0] if args else kwargs["tensor"]
            self._taint(tensor)
            return tensor
        result = func(*args, **kwargs)
        if func in self.draws or any(self.is_tainted(leaf) for leaf in tree_leaves((args, kwargs))):
            for leaf in tree_leaves(result):
                self._taint(leaf)
        return result

    def is_tainted(self, value: object) -> bool:
        """Whether ``value`` is a tensor whose storage holds skipped or random values."""
        return isinstance(value, torch.Tensor) and _storage(value) in self.tainted

    def _taint(self, value: object) -> None:
        if isinstance(value, torch.Tensor) and _storage(value):
            self.tainted.add(_storage(value))


def _storage(tensor: torch.Tensor) -> int:
    """The data pointer of ``tensor``'s storage (0 for an empty one, which holds no values to taint)."""
    if tensor.device.type == "meta":
        return 0
    return tensor.untyped_storage().data_ptr()


def build_filled_model(model_cfg: dict, preprocess_cfg: dict | None, state_dict: dict, origin: str
                       ) -> torch.nn.Module:
    """The model ``model_cfg`` describes, filled with ``state_dict`` (float32, eval mode).

    ``state_dict`` must already have passed :func:`architecture.check_against_weights`;
    :func:`architecture.fill_model` checks it again against the real model and
    loads it strictly, so every parameter and persistent buffer is overwritten.
    """
    mode = SkipRandomInit()
    with mode:
        model = architecture.build_model(model_cfg, preprocess_cfg)
    persistent = model.state_dict()
    if any(name not in persistent and mode.is_tainted(buffer) for name, buffer in model.named_buffers()):
        model = architecture.build_model(model_cfg, preprocess_cfg)  # a buffer no file holds needs its draw
    return architecture.fill_model(model, state_dict, origin)
