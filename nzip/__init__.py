"""nzip: codecs for the data of machine learning.

    from nzip import codecs
    blob = codecs.encode(tensor, "dfloat11")   # a self-describing frame (bytes)
    codecs.decode(blob)                         # the same tensor, bit for bit
"""

from .checkpoint import load, open, save  # noqa: A004
from .codecs import decode, encode

__version__ = "0.1.0"
__all__ = ["__version__", "decode", "encode", "load", "open", "save"]
