"""torchrun integration, now in :mod:`BreastCMSLLib.distributed` (re-exported here for the training modules that
import it relatively)."""

from BreastCMSLLib.distributed import Dist, gather_objects, setup, teardown  # noqa: F401
