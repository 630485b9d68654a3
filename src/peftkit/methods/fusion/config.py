"""AdapterFusion config (Pfeiffer et al. 2021, sec. 3.2): attention over trained adapters' outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig, check_choice, check_positive
from ...errors import ConfigError

FUSION_TYPES = ("dynamic", "static")


@dataclass
class FusionConfig(PeftConfig):
    """Stage 2 of AdapterFusion: per-layer attention that mixes the outputs of frozen adapters.

    At every site holding all of ``adapter_names`` (bottleneck adapters), with ``h`` the site's
    output and ``u_n = s_n A_n(h)`` what adapter ``n`` would add::

        w = softmax_n( (Q h) . (K u_n) / temperature )       # (..., N)
        h <- h + sum_n w_n V u_n

    The fusion is added and trained like any adapter (``model.add_adapter("f", FusionConfig(...))``,
    ``set_adapter("f")``): only its own parameters (and its ``modules_to_save``) train; the base
    and the fused adapters stay frozen. It saves and loads apart from the adapters it fuses,
    which must be in the model (by these names) before it is added or loaded.

    Args:
        adapter_names: the bottleneck adapters to fuse (one or more, distinct).
        fusion_type: ``"dynamic"``: query, key and a value matrix ``V`` initialised to the identity;
            ``"static"``: query and key only, ``V`` fixed to the identity (fewer parameters).
        temperature: softmax temperature (1: the paper's setting).
    """

    adapter_names: list[str] | str = field(default_factory=list)  # one name may be given as a str
    fusion_type: str = "dynamic"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        names = self.adapter_names
        if isinstance(names, str):
            names = self.adapter_names = [names]
        if (
            not isinstance(names, (list, tuple))
            or not names
            or not all(isinstance(n, str) and n for n in names)
        ):
            raise ConfigError("adapter_names", f"give the names of the adapters to fuse, got {names!r}")
        if len(set(names)) != len(names):
            raise ConfigError("adapter_names", f"each adapter may appear once, got {names!r}")
        self.adapter_names = list(names)
        check_choice("fusion_type", self.fusion_type, FUSION_TYPES)
        check_positive("temperature", self.temperature)
        for name in ("target_modules", "exclude_modules"):
            if getattr(self, name) is not None:
                raise ConfigError(name, "a fusion goes wherever all its adapters are; leave it unset")
