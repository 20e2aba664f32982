import pytest
import torch

from harness.core.errors import UserError
from harness.models import ARCHITECTURES, build_model
from harness.recipe import ModelSpec
from harness.tricks import load_tricks

load_tricks()  # architectures from ablations/ too, whatever the order tests are collected in


@pytest.mark.parametrize("arch", ARCHITECTURES.names())
@pytest.mark.parametrize("channels, size", [(3, (32, 32)), (1, (28, 28)), (3, (20, 24))])
def test_every_architecture_fits_the_dataset(arch, channels, size):
    model = build_model(ModelSpec(arch=arch, width=4), num_classes=7, in_channels=channels,
                        image_size=size)
    out = model(torch.randn(2, channels, *size))
    assert out.shape == (2, 7)


def test_simple_cnn_is_the_tutorial_net():
    model = build_model(ModelSpec(arch="simplecnn"), num_classes=10)
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(6, 3, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,), (84, 120),
                      (84,), (10, 84), (10,)]


def test_resnet_depths_and_width():
    def count(arch, width):
        model = build_model(ModelSpec(arch=arch, width=width), num_classes=10)
        return sum(p.numel() for p in model.parameters())

    assert count("resnet34", 8) > count("resnet18", 8)
    # Width 64 is the paper's CIFAR ResNet-18: about 11.2 million parameters.
    assert 11.0e6 < count("resnet18", 64) < 11.3e6
    blocks = build_model(ModelSpec(arch="resnet34", width=4), 10).stages
    assert [len(stage) for stage in blocks] == [3, 4, 6, 3]


def test_unknown_parts_fail_before_building():
    with pytest.raises(UserError, match="unknown architecture 'resnet50'"):
        build_model(ModelSpec(arch="resnet50"), 10)
    with pytest.raises(UserError, match="unknown stem 'huge'"):
        build_model(ModelSpec(stem="huge"), 10)
    with pytest.raises(UserError, match="unknown initializer 'zeros'"):
        build_model(ModelSpec(init="zeros"), 10)
