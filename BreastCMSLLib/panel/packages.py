"""Installing the Python packages the Slicer module needs into Slicer's Python, with what that Slicer offers.

``slicer.packaging.pip_ensure`` (Slicer 5.12 and later) asks the user itself and shows progress; earlier Slicer
(5.8 to 5.11) has ``slicer.util.pip_install``, which is called after asking. The ``slicer`` module is an
argument, so the choice is made on the Slicer at hand.
"""

from __future__ import annotations


def has_pip_ensure(slicer_module) -> bool:
    """Whether this Slicer has ``slicer.packaging.pip_ensure`` (5.12 and later)."""
    return callable(getattr(getattr(slicer_module, "packaging", None), "pip_ensure", None))


def install_packages(slicer_module, requirements: list[str], requester: str = "BreastCMSL") -> bool:
    """Install pip ``requirements`` (e.g. ``"safetensors>=0.4"``) into Slicer's Python after the user agrees:
    ``pip_ensure`` where it exists, else a confirmation, then ``slicer.util.pip_install``. False when the user
    declined the confirmation."""
    if has_pip_ensure(slicer_module):
        slicer_module.packaging.pip_ensure(list(requirements), requester=requester)
        return True
    util = slicer_module.util
    if not util.confirmOkCancelDisplay(f"{requester} needs the Python packages {', '.join(requirements)}. "
                                       "Install them now with pip?"):
        return False
    util.pip_install(list(requirements))
    return True
