"""The network input path of analyze: one host pass to the autocast dtype and channels_last_3d (pinned on CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from BreastCMSLLib.pipeline.analyze import host_input, network_input


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_network_input_equals_the_plain_cast_in_channels_last(dtype):
    array = np.random.default_rng(0).random((6, 20, 16, 8), dtype=np.float32)
    expected = torch.from_numpy(array).unsqueeze(0).to(dtype=dtype, memory_format=torch.channels_last_3d)
    for x in (network_input([array], torch.device("cpu"), dtype), host_input([array], dtype, pin=False)):
        assert x.dtype == dtype and x.shape == (1, 6, 20, 16, 8)
        assert x.is_contiguous(memory_format=torch.channels_last_3d) and x.stride() == expected.stride()
        assert torch.equal(x, expected)
    # bf16 rounds to nearest even, as autocast's own cast of conv1's input would
    if dtype == torch.bfloat16:
        assert float((x.float() - torch.from_numpy(array).unsqueeze(0)).abs().max()) <= 2.0 ** -9


def test_a_batch_gives_each_case_its_own_forward(tiny_model_path):
    """The cohort's GPU batches: B cases in one pass (conv1 over the union of their non-zero boxes) give each case
    what its own pass gives."""
    from BreastCMSLLib.network.modelfile import load_model
    from BreastCMSLLib.pipeline.analyze import forward, infer

    from .conftest import TINY_INPUT

    loaded = load_model(tiny_model_path)
    rng = np.random.default_rng(1)
    arrays = []
    for lo, hi in (((4, 30), (5, 20)), ((30, 60), (20, 44))):  # non-zero in different boxes
        a = np.zeros((6, *TINY_INPUT), np.float32)
        a[:, lo[0]:lo[1], hi[0]:hi[1], 3:29] = rng.random((6, lo[1] - lo[0], hi[1] - hi[0], 26), dtype=np.float32)
        arrays.append(a)
    cpu = torch.device("cpu")
    batch = infer(loaded, arrays, cpu)
    for a, got in zip(arrays, batch, strict=True):
        alone, _ = forward(loaded, a, cpu)
        assert got.cos_theta == pytest.approx(float(alone.cos_theta[0]), abs=2e-3)
        cam = torch.from_numpy(got.maps["cam"])
        assert torch.allclose(cam, alone.logit_map[0].float(), atol=2e-2 * float(cam.abs().max()))
        assert got.maps["coam_layer2"].shape == tuple(s // 8 for s in a.shape[1:])  # the fine map's stage, kept
    assert batch[0].cos_theta != pytest.approx(batch[1].cos_theta, abs=1e-6)  # two different cases
