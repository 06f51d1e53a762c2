"""Table 1's metrics, now in :mod:`BreastCMSLLib.cohort.metrics` (re-exported here for the training modules that
import them relatively)."""

from BreastCMSLLib.cohort.metrics import METRICS, bootstrap_metrics, point_metrics, safe_auc  # noqa: F401
