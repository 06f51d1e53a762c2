"""The network is MONAI's ResNet34 (conv1 stride 2) with the paper's 1x1x1 head; model files are safetensors."""

import json
from dataclasses import replace

import pytest
import torch
from monai.networks.nets import resnet34
from safetensors.torch import save_file

from BreastCMSLLib.config import ModelConfig, PreprocessConfig
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.header import file_sha256
from BreastCMSLLib.network.modelfile import load_model, save_model
from BreastCMSLLib.network.net import build_model, inference_module, probability

SMALL = ModelConfig(width_factor=0.125, preprocess=PreprocessConfig(input_size=(64, 64, 32)))


def test_backbone_is_monai_resnet34_with_stride_two_conv1():
    model = build_model(ModelConfig())
    b = model.backbone
    assert [len(layer) for layer in (b.layer1, b.layer2, b.layer3, b.layer4)] == [3, 4, 6, 3]
    assert b.conv1.kernel_size == (7, 7, 7) and b.conv1.stride == (2, 2, 2) and b.conv1.in_channels == 6
    assert model.head.in_channels == 512 and model.head.out_channels == 1 and model.head.kernel_size == (1, 1, 1)
    anchor = resnet34(spatial_dims=3, n_input_channels=6, conv1_t_stride=2, num_classes=1)
    ours = {k: v.shape for k, v in b.state_dict().items()}
    theirs = {k: v.shape for k, v in anchor.state_dict().items() if not k.startswith("fc.")}
    assert ours == theirs


def test_features_match_monai_forward_with_same_weights():
    torch.manual_seed(3)
    model = build_model(SMALL).eval()
    anchor = resnet34(spatial_dims=3, n_input_channels=6, conv1_t_stride=2, widen_factor=0.125,
                      num_classes=1).eval()
    anchor.load_state_dict(model.backbone.state_dict(), strict=False)
    x = torch.rand(1, 6, 64, 64, 32)
    with torch.no_grad():
        out = model(x)
        anchor.fc = torch.nn.Identity()
        pooled = anchor(x)
    assert out.features.shape == (1, 64, 2, 2, 1)
    assert torch.allclose(out.features.mean(dim=(2, 3, 4)), pooled, atol=1e-5)


def test_probability_rules():
    torch.manual_seed(4)
    model = build_model(SMALL).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 6, 64, 64, 32))
    assert torch.allclose(probability(out, SMALL), torch.sigmoid(20 * out.cos_theta))
    bce = ModelConfig(loss="bce")
    assert torch.allclose(probability(out, bce), torch.sigmoid(out.logit))


def test_model_file_round_trip(tmp_path):
    torch.manual_seed(5)
    model = build_model(SMALL)
    path = tmp_path / "m.safetensors"
    sha = save_model(path, model, SMALL, {"name": "tiny", "untrained": True})
    loaded = load_model(path)
    assert sha == file_sha256(path) == loaded.sha256
    assert loaded.config == SMALL
    assert loaded.provenance == {"name": "tiny", "untrained": True}
    assert loaded.info()["untrained"] is True
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)
    assert not loaded.model.training


def test_pickle_checkpoint_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1)}, path)
    with pytest.raises(InputError, match="refusing to unpickle"):
        load_model(path)


def test_foreign_safetensors_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"config": json.dumps({})})
    with pytest.raises(InputError, match="not a BreastCMSL model"):
        load_model(path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello world, definitely not a model")
    with pytest.raises(InputError, match="not a safetensors model"):
        load_model(junk)


def test_inference_module_folds_batchnorm_exactly():
    torch.manual_seed(6)
    model = build_model(SMALL).eval()
    for module in model.modules():  # non-trivial running statistics, so folding matters
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = inference_module(model, torch.device("cpu"))
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in fast.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is unchanged
    x = torch.rand(2, 6, 64, 64, 32)
    with torch.no_grad():
        a, b = model(x), fast(x.contiguous(memory_format=torch.channels_last_3d))
    assert torch.allclose(a.features, b.features, rtol=1e-4, atol=1e-4)
    assert torch.allclose(a.cos_theta, b.cos_theta, atol=1e-6)
    assert torch.allclose(a.logit_map, b.logit_map, rtol=1e-4, atol=1e-4)
    low = inference_module(model, torch.device("cpu"), bf16=True)  # bf16 weights, as bf16 autocast rounds them
    assert low.backbone.conv1.weight.dtype == torch.bfloat16 and low.head.weight.dtype == torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        c = low(x.contiguous(memory_format=torch.channels_last_3d))
        d = fast(x.contiguous(memory_format=torch.channels_last_3d))  # fp32 weights rounded by autocast
    assert torch.equal(c.features, d.features) and torch.equal(c.cos_theta, d.cos_theta)


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, build_model(SMALL), replace(SMALL, width_factor=0.25), {"name": "mismatch"})
    with pytest.raises(InputError, match="weights do not match its config"):
        load_model(path)


def test_a_header_length_that_starts_like_a_pickle_still_loads(tmp_path):
    """safetensors files begin with the header length; 128 mod 256 makes the first byte 0x80."""
    model = build_model(SMALL)
    for pad in range(0, 300, 8):
        path = tmp_path / f"m{pad}.safetensors"
        save_model(path, model, SMALL, {"name": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            assert load_model(path).provenance["name"] == "x" * pad
            return
    pytest.fail("no provenance length gave a header starting with 0x80")


def test_instance_max_pooling_takes_the_strongest_position():
    torch.manual_seed(7)
    cfg = replace(SMALL, pooling="instance_max", loss="bce")
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 6, 64, 64, 32))
    assert torch.allclose(out.logit, out.logit_map.flatten(1).amax(dim=1), atol=1e-5)
    assert torch.allclose(probability(out, cfg), torch.sigmoid(out.logit_map.flatten(1)).amax(dim=1), atol=1e-6)
