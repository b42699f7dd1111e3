"""edgesmith: from a fine-tuned model to a validated edge engine, with an accuracy gate.

The distribution's one top-level name. The repository keeps its folders at its root
(toolchain/, targets/, calibration/); edgesmith/ links to each, so they install and import
as edgesmith.toolchain, edgesmith.targets and edgesmith.calibration.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("edgesmith")
except metadata.PackageNotFoundError:  # a checkout that is not installed
    __version__ = "0+unknown"
