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
