"""The ``breastcmsl-web`` executable: :func:`BreastCMSLWeb.app.main`, with a missing ``[web]`` extra reported in
one line (not a traceback)."""

from BreastCMSLLib.errors import run_with_extra


def main() -> None:
    run_with_extra("breastcmsl-web", "web", "BreastCMSLWeb.app")
