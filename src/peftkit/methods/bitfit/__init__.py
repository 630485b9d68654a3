"""BitFit (Ben Zaken et al. 2022): bias terms only, as a sparse delta on the frozen model."""

from .config import BitFitConfig
from .method import BitFitMethod

__all__ = ["BitFitConfig", "BitFitMethod"]
