"""The ``breastcmsl-train`` executable: :func:`Training.cli.main`, with a missing ``[train]`` extra reported in
one line (not a traceback)."""

from BreastCMSLLib.errors import run_with_extra


def main() -> None:
    run_with_extra("breastcmsl-train", "train", "Training.cli")
