"""semrec: content-derived item IDs (cluster IDs and Semantic IDs) for recommendation.

TFRS needs the Keras 2 implementation (tf-keras). ``TF_USE_LEGACY_KERAS`` must be set
before TensorFlow is first imported, so this package sets it on import; import
``semrec`` before ``tensorflow``.
"""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from semrec.version import __version__  # noqa: E402

__all__ = ["__version__"]
