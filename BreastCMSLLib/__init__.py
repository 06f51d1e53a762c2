"""BreastCMSL runtime core: preprocessing, the CMSL network, COAM/CAM attention maps and analysis.

Every physical point inside this package is ITK/LPS millimetres; only ``mrml.py`` converts to RAS.
"""

__version__ = "0.1.0"
