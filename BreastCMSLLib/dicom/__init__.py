"""The DICOM layer: studies scanned into series and phases, series roles, DICOM SEG export."""
