"""One folder per method, same shape each time: ``config.py``, ``layer.py``, ``method.py``.

Importing this package registers every method.
"""

from . import adalora, lora, p_tuning, p_tuning_v2, prefix_tuning, prompt_tuning  # noqa: F401
from . import bitfit, diff_pruning, selection  # noqa: F401
from .bottleneck import BottleneckMethod  # noqa: F401
from .full import FullMethod  # noqa: F401
from .fusion import FusionMethod  # noqa: F401
