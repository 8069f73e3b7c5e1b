"""precrop: channel-width math (layer tables, width allocation) and model surgery.

Importing `precrop` or `precrop.width.costmodel` does not import torch; model code lives in submodules.
"""

__version__ = "0.1.0"
