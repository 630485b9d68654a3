"""One folder per method, same shape each time: ``config.py``, ``layer.py``, ``method.py``.

Importing this package registers every method.
"""

from . import (  # noqa: F401
    adalora,
    adaptlora,
    bitfit,
    diff_pruning,
    ia3,
    lora,
    p_tuning,
    p_tuning_v2,
    prefix_tuning,
    prompt_tuning,
    selection,
)
from .bottleneck import BottleneckMethod  # noqa: F401
from .full import FullMethod  # noqa: F401
from .fusion import FusionMethod  # noqa: F401
