"""wsss: weakly-supervised semantic segmentation from image-level labels.

The stages run from the ``wsss`` command and the Snakemake workflow; a trained model is
used from Python through :mod:`wsss.api` (``from wsss.api import load``)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wsss")
except PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"
