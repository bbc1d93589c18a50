"""immulib.networks: the family check, the immunized block, the split forward, float32 features."""

import copy

import pytest
import torch
from deep_helpers import TINY, tiny, tiny_data
from torch import nn

from immulib import deep_eval, networks
from immulib.deep_objective import feature_gram
from immulib.regularizers import r_ill, r_well

pytestmark = pytest.mark.filterwarnings(
    "ignore::immulib.regularizers.NonUniqueSingularValueWarning"
)


@pytest.fixture(scope="module", params=list(TINY))
def model(request):
    return tiny(request.param)


def test_trainable_set_is_exactly_layer4_for_resnet():
    m = tiny("resnet18")
    block = {f"layer4.{n}" for n, _ in m.layer4.named_parameters()}
    assert set(networks.freeze(m, train_head=False)) == block
    assert {n for n, p in m.named_parameters() if p.requires_grad} == block
    assert set(networks.freeze(m)) == block | {"fc.weight", "fc.bias"}
    assert (
        networks.architecture(m) == "resnet" and networks.immunized_block(m) is m.layer4
    )


def test_trainable_set_is_exactly_the_last_block_for_vit():
    m = tiny("vit_tiny_patch16_224")
    last = len(m.blocks) - 1
    block = {f"blocks.{last}.{n}" for n, _ in m.blocks[last].named_parameters()}
    assert set(networks.freeze(m, train_head=False)) == block
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == block
    assert not any(
        n.startswith("norm.") or n.startswith("blocks.0.") for n in trainable
    )
    assert set(networks.freeze(m)) == block | {"head.weight", "head.bias"}


@pytest.mark.parametrize(
    "name, kwargs",
    [("mobilenetv3_small_050", {}), ("efficientnet_b0", {}), ("convnext_atto", {})],
)
def test_other_families_are_refused_by_name_even_with_a_blocks_sequential(name, kwargs):
    import timm

    m = timm.create_model(name, num_classes=3, **kwargs)
    assert name.startswith("convnext") or isinstance(
        m.blocks, nn.Sequential
    )  # what fooled the old check
    with pytest.raises(TypeError, match=type(m).__name__):
        networks.architecture(m)
    with pytest.raises(TypeError, match="ResNet"):
        networks.create_model(name, num_classes=3)
    with pytest.raises(TypeError, match="Linear"):
        networks.immunized_block(nn.Linear(3, 3))


def test_split_forward_equals_timm_forward(model):
    model.eval()
    x = tiny_data(5).images
    with torch.no_grad():
        feats, logits = networks.FeaturesAndLogits(model)(x)
        assert torch.allclose(logits, model(x), atol=1e-6)
        z = networks.forward_to_block(model, x)
        assert torch.equal(networks.forward_from_block(model, z)[0], feats)


def test_regularizer_gradients_reach_only_the_immunized_block(model):
    m = copy.deepcopy(model).eval()
    networks.freeze(m)
    feats, _ = networks.FeaturesAndLogits(m)(tiny_data(16).images)
    (r_ill(feature_gram(feats[:8])) + r_well(feature_gram(feats[8:]))).backward()
    in_block = set(networks.trainable_parameter_names(m, train_head=False))
    for name, p in m.named_parameters():
        if name in in_block:
            assert p.grad is not None
        else:
            assert p.grad is None or not bool(p.grad.any()), name
    assert any(
        bool(p.grad.abs().sum() > 0) for n, p in m.named_parameters() if n in in_block
    )


def test_spectral_features_stay_float32_under_bfloat16_autocast(model):
    """Issue 12: the features feeding a Gram matrix are computed with autocast off."""
    model.eval()
    x = tiny_data(12).images
    net = networks.FeaturesAndLogits(model)
    with torch.no_grad():
        ref, _ = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bare = model.forward_head(
                model.forward_features(x), pre_logits=True
            )  # what autocast does
            feats, _ = net(x)
            lib, _ = deep_eval.extract_features(model, tiny_data(12))
    assert not torch.allclose(
        bare.float(), ref, rtol=1e-4, atol=1e-5
    )  # the context really rounds
    assert feats.dtype == torch.float32 and lib.dtype == torch.float32
    assert torch.equal(feats, ref) and torch.equal(lib, ref)
    k_ref = float(torch.linalg.cond(feature_gram(ref)))
    assert float(torch.linalg.cond(feature_gram(feats))) == k_ref


def test_bfloat16_features_are_refused_by_the_gram_matrix():
    with pytest.raises(TypeError, match="float32"):
        feature_gram(torch.randn(4, 3).bfloat16())


def test_check_inputs_names_channels_size_and_labels():
    r, v = tiny("resnet18"), tiny("vit_tiny_patch16_224")
    x = tiny_data(4).images
    networks.check_inputs(r, x, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="3-channel.*1 channels"):
        networks.check_inputs(r, torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="img_size"):
        networks.check_inputs(v, torch.randn(2, 1, 24, 24))
    with pytest.raises(ValueError, match="labels .* 3 classes"):
        networks.check_inputs(r, x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="B × C × H × W"):
        networks.check_inputs(r, torch.randn(16, 16))


def test_create_model_is_seeded_and_checks_arguments():
    a, b, c = tiny(seed=0), tiny(seed=0), tiny(seed=1)
    assert all(
        torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=False)
    )
    assert any(
        not torch.equal(p, q)
        for p, q in zip(a.parameters(), c.parameters(), strict=False)
    )
    with pytest.raises(ValueError, match="model_name"):
        networks.create_model("no_such_model", num_classes=3)
    with pytest.raises(TypeError, match="num_classes"):
        networks.create_model("resnet18", num_classes=2.5)
    with pytest.raises(TypeError, match="pretrained"):
        networks.create_model("resnet18", num_classes=2, pretrained="yes")
