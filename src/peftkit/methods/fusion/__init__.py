"""AdapterFusion (Pfeiffer et al. 2021): stage 1 trains one bottleneck adapter per task; stage 2
freezes the base and those adapters and trains a per-layer attention over their outputs.

On disk a fusion is its own adapter folder: ``adapter_config.json`` (the :class:`FusionConfig`,
``"peftkit_method": "fusion"``, naming the fused adapters) and ``adapter_model.safetensors`` with
only the fusion's tensors, per site ``base_model.model.<slot module path>.fusion.{query,key,value}.``
``{weight,bias}`` (``value`` only for ``dynamic``), plus its ``modules_to_save``. Load the fused
adapters under the same names first, then ``model.load_adapter(folder, adapter_name=...)``.
"""

from .attention import FusionMap, fusion_attention
from .config import FusionConfig
from .layer import FusionAttention
from .method import FusionMethod

__all__ = ["FusionAttention", "FusionConfig", "FusionMap", "FusionMethod", "fusion_attention"]
