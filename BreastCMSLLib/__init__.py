"""BreastCMSL runtime core: preprocessing, the CMSL network, COAM/CAM attention maps and analysis.

Every physical point inside this package is ITK/LPS millimetres; only the MRML adapter modules (``nodes.py``,
``display.py``, ``evaluation.py``) convert to RAS.
"""

__version__ = "0.1.0"
