"""``python -m BreastCMSLLib.cohort ARGS`` = ``breastcmsl analyze-cohort ARGS``; the form torchrun starts:
``torchrun --nproc_per_node G -m BreastCMSLLib.cohort --root DIR --model M --out OUT``."""

import sys

from BreastCMSLLib.cohort.command import main

sys.exit(main())
