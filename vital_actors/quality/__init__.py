"""Quality screening: streaming QRS detection, heart rate, SQIs and alerts (issue 4).

The public surface is :class:`QualityChain` (pure, batched over streams) and
:class:`Frame`; see docs/quality.md for the detector, the indices and thresholds.
"""

from .chain import Frame as Frame
from .chain import QualityChain as QualityChain
from .sqi import THRESHOLDS as THRESHOLDS

__all__ = ["THRESHOLDS", "Frame", "QualityChain"]
