"""One rendered phantom case: its images, truth masks and tissue labels, and its input series."""

from __future__ import annotations

from dataclasses import dataclass, field

import SimpleITK as sitk

from BreastCMSLLib.errors import InputError
from BreastCMSLLib.pipeline.volumes import VOLUME_SUFFIXES


@dataclass
class PhantomCase:
    """One synthesized case: ``images`` t1, pre, post_1..post_6 (int16), truth masks (uint8) and
    ``tissue`` (uint8, :data:`.anatomy.TISSUE_LABELS`) on the same grid, and ``truth`` (the case.json dict)."""

    images: dict[str, sitk.Image]
    lesion_mask: sitk.Image
    breast_mask: sitk.Image
    tissue: sitk.Image
    truth: dict = field(default_factory=dict)

    def series(self, inputs: str = "phases", with_t1: bool = True) -> dict[str, sitk.Image]:
        """The input volumes by file stem: t1, pre, post_1..post_6 (``"phases"``) or t1, sub_1..sub_6
        with sub_k = post_k - pre in int16 (``"subtractions"``). ``with_t1=False``: the fat-suppressed,
        T1-less mode (only the fat-suppressed dynamic series, as many DCE protocols and cohorts hold)."""
        check_output(inputs)
        posts = sorted((n for n in self.images if n.startswith("post_")), key=lambda n: int(n[5:]))
        t1 = {"t1": self.images["t1"]} if with_t1 else {}
        if inputs == "phases":
            return {**t1, "pre": self.images["pre"], **{n: self.images[n] for n in posts}}
        pre = self.images["pre"]
        return {**t1, **{f"sub_{n[5:]}": sitk.Subtract(self.images[n], pre) for n in posts}}


def check_output(inputs: str, suffix: str | None = None) -> None:
    """Raise :class:`InputError` for an unknown input kind or volume file suffix."""
    if inputs not in ("phases", "subtractions"):
        raise InputError("--inputs", f"expected 'phases' or 'subtractions', got {inputs!r}")
    if suffix is not None and (suffix not in VOLUME_SUFFIXES or suffix == ".nhdr"):
        raise InputError("suffix", f"expected one of {', '.join(VOLUME_SUFFIXES)} (not .nhdr), got {suffix!r}")
