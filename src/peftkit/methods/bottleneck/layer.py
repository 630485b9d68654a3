"""Bottleneck adapter layers: the slot's module runs as is, then each active adapter edits its output.

``BottleneckLayer`` wraps the module in an architecture slot (an attention or FFN output
projection) and holds, per name, either a :class:`Bottleneck` (container ``bottleneck``) or an
AdapterFusion module (container ``fusion``, see :mod:`peftkit.methods.fusion`). Active names are
applied in order, each to the output of the previous one, which is MAD-X's ``Stack``:

    sequential adapter n:  h <- h + s_n * A_n(h)
    parallel adapter n:    h <- h + s_n * A_n(x)       (x: the FFN's input, captured by a pre-hook)
    fusion over (n_1..n_N): h <- h + fuse(h, [s_n A_n(.) for each fused n])

so ``set_adapter(["lang", "task"])`` (or ``Stack("lang", "task")``) runs ``task(lang(h))``.
Bottleneck adapters are non-linear and cannot be merged into the base weights.
"""

from __future__ import annotations

import torch
from torch import nn

from ...config import check_size
from ...errors import AdapterError, TargetError
from ...layer import AdapterLayer
from ...nn_types import output_features
from ...rows import current_rows, mix_rows
from .config import BottleneckConfig

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU}
INIT_STD = 1e-2


class Stack(tuple):
    """Adapters applied one after another at every site, ``Stack("lang", "task")`` = task(lang(h)).

    A tuple of names, so ``model.set_adapter(Stack(...))`` works; only adapters that are not
    loaded for inference (``is_trainable``) train, e.g. a MAD-X task adapter on a frozen language one.
    """

    def __new__(cls, *names: str) -> Stack:
        if len(names) < 2 or not all(isinstance(n, str) and n for n in names):
            raise AdapterError(f"Stack needs two or more adapter names, got {names!r}")
        return super().__new__(cls, names)


class Bottleneck(nn.Module):
    """``A(h) = W_up f(W_down LN(h))``: hidden -> width -> hidden (Houlsby et al. 2019, sec. 2.1)."""

    def __init__(self, hidden: int, config: BottleneckConfig, **kw) -> None:
        super().__init__()
        width = config.width_for(hidden)
        self.norm = nn.LayerNorm(hidden, **kw) if config.adapter_layernorm else nn.Identity()
        self.down = nn.Linear(hidden, width, **kw)  # (width, d)
        self.act = ACTIVATIONS[config.non_linearity]()
        self.up = nn.Linear(width, hidden, **kw)  # (d, width)
        self._init(config.init_weights)

    def _init(self, init: str) -> None:
        with torch.no_grad():
            for linear in (self.down, self.up):
                nn.init.trunc_normal_(linear.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
                nn.init.zeros_(linear.bias)
            if init == "identity":
                nn.init.zeros_(self.up.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(self.norm(h))))  # (..., d) -> (..., width) -> (..., d)


class BottleneckLayer(AdapterLayer):
    """The module in one architecture slot, followed by named bottleneck adapters and fusions."""

    adapter_containers = ("bottleneck", "fusion")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.hidden = output_features(base_layer)
        if self.hidden is None:
            raise TargetError(
                f"cannot tell the output width of {type(base_layer).__name__}; put bottleneck adapters "
                "after a Linear/Conv1D (fix the slot with peftkit.slots.declare_slots)"
            )
        self.bottleneck = nn.ModuleDict()
        self.fusion = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.parallel: set[str] = set()  # adapters reading the FFN's input instead of the output
        self.tap_input: torch.Tensor | None = None
        self._tap_handle = None
        self.record_fusion = False
        self.fusion_weights: dict[str, torch.Tensor] = {}  # fusion -> (B, T, N), when recording

    # ---- adding ------------------------------------------------------------------------------
    def add(self, name: str, config: BottleneckConfig, module_name: str) -> None:
        if config.bottleneck_size is not None:
            why = "a bottleneck is no wider than the hidden size"
            check_size("bottleneck_size", config.bottleneck_size, self.hidden, module_name, why)
        self.bottleneck[name] = Bottleneck(self.hidden, config, **self.new_tensor_kwargs())
        self.scaling[name] = float(config.scaling)

    def tap(self, name: str, module: nn.Module) -> None:
        """Make ``name`` a parallel adapter reading the input of ``module`` (the FFN) at each call."""
        self.parallel.add(name)
        if self._tap_handle is None:
            self._tap_handle = module.register_forward_pre_hook(self._capture, with_kwargs=True)

    def _capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.tap_input = args[0] if args else next(iter(kwargs.values()))

    def add_fusion(self, name: str, fusion: nn.Module) -> None:
        """Add an AdapterFusion module over adapters this layer holds (``fusion.adapter_names``)."""
        missing = [a for a in fusion.adapter_names if a not in self.bottleneck]
        if missing:
            raise AdapterError(f"fusion {name!r}: adapters {missing} are not at this site")
        self.fusion[name] = fusion

    def delete(self, name: str) -> None:
        users = [f for f, m in self.fusion.items() if name in m.adapter_names and f != name]
        if users:
            raise AdapterError(f"adapter {name!r} is fused by {users}; delete the fusion first")
        super().delete(name)
        self.scaling.pop(name, None)
        self.parallel.discard(name)
        if not self.parallel and self._tap_handle is not None:
            self._tap_handle.remove()
            self._tap_handle = None

    def merge(self, names: list[str] | None = None) -> None:
        if [n for n in (names if names is not None else self.active) if n in self.adapter_names()]:
            raise AdapterError(
                "bottleneck adapters and fusions are non-linear and cannot be merged into the base "
                "weights; run them unmerged"
            )

    # ---- forward -----------------------------------------------------------------------------
    def contribution(self, name: str, h: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """``s * A(h)`` for a sequential adapter, ``s * A(x)`` for a parallel one; (..., d)."""
        source = x if name in self.parallel else h
        if source is None:
            raise AdapterError(f"parallel adapter {name!r} saw no FFN input (was the FFN module called?)")
        adapter = self.bottleneck[name]
        return adapter(source.to(adapter.down.weight.dtype)) * self.scaling[name]

    def compose(self, names: list[str], h: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """Apply ``names`` in order, each to the previous output (a Stack)."""
        for name in names:
            if name in self.fusion:
                fusion = self.fusion[name]
                ups = torch.stack(
                    [self.contribution(a, h, x) for a in fusion.adapter_names], -2
                )  # (..., N, d)
                context, weights = fusion(h.to(ups.dtype), ups)  # (..., d), (..., N)
                if self.record_fusion:
                    self.fusion_weights[name] = weights.detach()
                h = h + context.to(h.dtype)
            else:
                h = h + self.contribution(name, h, x).to(h.dtype)
        return h

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base(x, *args, **kwargs)
        tapped, self.tap_input = self.tap_input, None
        if self.disabled:
            return out
        if not current_rows().mixed:
            return self.compose(self.active, out, tapped)

        def through(name: str, rows: torch.Tensor) -> torch.Tensor:
            """Rows ``rows`` through adapter (or fusion) ``name``."""
            return self.compose([name], out[rows], None if tapped is None else tapped[rows])

        return mix_rows(out, self.adapter_names(), through, add=False)
