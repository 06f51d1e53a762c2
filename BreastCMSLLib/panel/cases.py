"""What a face needs to know about cases, role patterns and sample data, so that it reaches no layer below
the panel: which folders are case folders, the DICOM role patterns with a user's edits, a phantom case and an
untrained model for sample data and self-tests."""

from __future__ import annotations

from pathlib import Path

from BreastCMSLLib.pipeline.volumes import VOLUME_SUFFIXES


def is_case_folder(folder: Path) -> bool:
    """A case folder holds volume files (t1, pre/post_k or sub_k); any other folder is taken as a DICOM study."""
    return any(p.name.lower().endswith(VOLUME_SUFFIXES) for p in folder.iterdir() if p.is_file())


def role_patterns(edits: dict[str, str], source: str):
    """The DICOM role rules' patterns with ``edits`` ({field: regular expression}; empty values keep the
    defaults); an invalid expression is an InputError naming ``source``."""
    from BreastCMSLLib.dicom.roles import RolePatterns

    return RolePatterns.from_overrides({key: value for key, value in edits.items() if value}, source)


def phantom_case(folder: str | Path, seed: int = 1, malignant: bool = True, shape=None, spacing=None) -> Path:
    """Write a synthetic DCE phantom case folder (known lesion centre in case.json); returns the folder."""
    from BreastCMSLLib.phantom.synth import synth_case

    synth_case(folder, seed=seed, label=int(malignant), shape=shape, spacing=spacing)
    return Path(folder)


def untrained_model(path: str | Path, input_size: tuple[int, int, int], width_factor: float = 1.0) -> Path:
    """Write an untrained model (random weights, flagged untrained) for self-tests; returns its path."""
    from BreastCMSLLib.config import ModelConfig, PreprocessConfig
    from BreastCMSLLib.network.modelfile import save_untrained_model

    config = ModelConfig(width_factor=width_factor, preprocess=PreprocessConfig(input_size=tuple(input_size)))
    save_untrained_model(path, config)
    return Path(path)
