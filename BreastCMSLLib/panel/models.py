"""The model store: a folder of BreastCMSL ``.safetensors`` model files (listed, imported, downloaded, cleared).

Nothing is unpickled: a file's metadata is read by :func:`~BreastCMSLLib.network.header.read_model_metadata`,
which refuses pickles and foreign files.
"""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

from BreastCMSLLib.errors import InputError
from BreastCMSLLib.panel.text import disclaimer, model_label


def models_in(folder: str | Path) -> list[dict]:
    """The BreastCMSL model files in ``folder`` with what their metadata says, by file name. Files that are
    not BreastCMSL models (or are pickles) are left out; nothing is unpickled."""
    from BreastCMSLLib.network.header import file_sha256, model_name, read_model_metadata

    models = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            cfg, provenance = read_model_metadata(path)
        except InputError:
            continue
        sha, name = file_sha256(path), model_name(path, provenance)
        model = {"path": str(path), "file": path.name, "name": name, "version": provenance.get("version"),
                 "sha256": sha, "short_sha": sha[:12], "untrained": bool(provenance.get("untrained")),
                 "synthetic": bool(provenance.get("synthetic")), "in_channels": cfg.in_channels}
        model["title"] = model_label(model)
        model["details"] = (f"{name}: {cfg.loss.upper()}, {cfg.in_channels} channels, input "
                            f"{' x '.join(map(str, cfg.preprocess.input_size))}, width x{cfg.width_factor}\n"
                            f"sha256 {sha}\n{disclaimer(provenance)}")
        models.append(model)
    return models


def import_model(path: str | Path, folder: str | Path) -> Path:
    """Check that ``path`` is a BreastCMSL model (never unpickled; a pickle is refused) and copy it into
    ``folder`` as ``<stem>-<sha256[:12]>.safetensors``; returns the copy."""
    from BreastCMSLLib.network.header import file_sha256, read_model_metadata

    read_model_metadata(path)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{Path(path).stem}-{file_sha256(path)[:12]}.safetensors"
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(path, partial)
    return partial.replace(target)


def downloadable(registry: dict) -> list[dict]:
    """The entries of a model registry (``Resources/Models.json``: ``{"models": [entry, ...]}``) that can be
    downloaded: those with a ``url`` (and, as :func:`download_model` requires, a ``sha256``), in registry order."""
    return [entry for entry in registry.get("models", []) if entry.get("url") and entry.get("sha256")]


def download_model(entry: dict, folder: str | Path) -> Path:
    """Download a registry entry (``id``, ``version``, ``url``, ``sha256``) into ``folder``; a file whose
    sha256 differs from the registry's, or that is not a BreastCMSL model, is deleted and refused."""
    from BreastCMSLLib.network.header import file_sha256, read_model_metadata

    if not entry.get("url") or not entry.get("sha256"):
        raise InputError(entry.get("id", "registry entry"), "has no download url and sha256")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{entry['id']}.download"
    try:
        urllib.request.urlretrieve(entry["url"], partial)
        sha = file_sha256(partial)
        if sha != entry["sha256"]:
            raise InputError(entry["url"], f"sha256 {sha} differs from the registry's {entry['sha256']}")
        read_model_metadata(partial)
    except (InputError, OSError) as err:
        partial.unlink(missing_ok=True)
        if isinstance(err, InputError):
            raise
        raise InputError(entry["url"], f"download failed ({err})") from None
    return partial.replace(folder / f"{entry['id']}-{entry['version']}.safetensors")


def clear_models(folder: str | Path) -> int:
    """Delete every model file in ``folder``; returns how many."""
    paths = list(Path(folder).glob("*.safetensors"))
    for path in paths:
        path.unlink()
    return len(paths)
