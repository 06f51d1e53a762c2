"""BreastCMSL training: cohort manifest and cache, CMSL and baseline training, evaluation, localization."""
