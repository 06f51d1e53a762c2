"""Analyze a whole cohort (``breastcmsl analyze-cohort``, ``torchrun ... -m BreastCMSLLib.cohort``): the cases, the
pipelined runner, the results table and summary, and the cohort manifest and Table 1's metrics it shares with
``breastcmsl-train``."""
