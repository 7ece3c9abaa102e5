"""featalign: can warping CNN feature maps undo an affine transformation of the input?

An empirical test of Jansson, Maydanskiy, Finnveden & Lindeberg,
"Inability of spatial transformations of CNN feature maps to support invariant
recognition" (arXiv:2004.14716).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
