"""Training checkpoints: one ``checkpoint.pt`` written atomically, read with ``weights_only=True``.

It holds only tensors and plain Python values (no pickled classes), so loading never executes code.
RNG states are stored as tensors/tuples of ints for the same reason.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from BreastCMSLLib.atomic import atomic_write
from BreastCMSLLib.errors import InputError


def rng_state() -> dict:
    """The process's torch, CUDA, numpy and Python RNG states in a weights_only-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached), "kind": str(kind)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write a checkpoint dict atomically (a kill leaves the previous checkpoint intact)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint without unpickling code (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no checkpoint to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise InputError(path, f"unreadable checkpoint ({str(err).splitlines()[0][:200]})") from None
