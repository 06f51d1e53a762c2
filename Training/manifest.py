"""The cohort manifest, now read and written by :mod:`BreastCMSLLib.cohort.manifest` (re-exported here for the
training modules that import it relatively)."""

from BreastCMSLLib.cohort.manifest import (  # noqa: F401
    COLUMNS,
    PAPER_PROPORTIONS,
    SPLITS,
    Case,
    assign_splits,
    manifest_text,
    read_centers,
    read_manifest,
    write_manifest,
)
