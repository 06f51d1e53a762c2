"""LayerCAM (Jiang et al., IEEE TIP 2021) of layer3 and layer2: a gradient-based candidate for the study only.

For a stage's activations A (C, d, h, w) and the gradient g = dS/dA of the model's score S (cos(theta) for
the angular losses, the logit for BCE): L = ReLU(sum_c ReLU(g_c) * A_c), on that stage's grid. It needs a
backward pass, so it is computed by its own forward (the same folded, sparse network and precision as
``analyze``) and is not part of ``breastcmsl analyze``.
"""

from __future__ import annotations

import numpy as np
import torch

from BreastCMSLLib.network.modelfile import LoadedModel
from BreastCMSLLib.network.net import bf16_native
from BreastCMSLLib.network.sparse import nonzero_box
from BreastCMSLLib.pipeline.analyze import network_input, select_device

STAGES = ("layer3", "layer2")


def layercam_maps(loaded: LoadedModel, array: np.ndarray, device: str = "auto") -> dict[str, np.ndarray]:
    """``{"layercam_layer3": (d, h, w), "layercam_layer2": ...}`` float32 for a (C, I, J, K) network input."""
    dev = select_device(device)
    module = loaded.inference_module(dev)
    bf16 = bf16_native(dev)
    x = network_input([array], dev, torch.bfloat16 if bf16 else torch.float32).requires_grad_(True)
    with torch.enable_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        out = module(x, nonzero_box(array), keep_stages=True)
        score = out.cos_theta[0] if loaded.config.angular else out.logit[0]
        grads = torch.autograd.grad(score, [out.stages[s] for s in STAGES])
    maps = {}
    for stage, g in zip(STAGES, grads, strict=True):
        a = out.stages[stage][0].detach().float()
        maps[f"layercam_{stage}"] = torch.relu((torch.relu(g[0].float()) * a).sum(0)).cpu().numpy()
    return maps
