"""The VGG family: architecture facts, torchvision equivalence, taps and cuts."""

from __future__ import annotations

import pytest
import torch
import torchvision

from cdcompress.models.converters import IMAGENET_MEAN, IMAGENET_STD, TORCHVISION_CONV_INDEX, torchvision_to_encoder_state
from cdcompress.models.vgg import VGGDecoder, VGGEncoder, VGGSpec, conv_names, level_taps
from cdcompress.surgery.modules import count_parameters


def test_teacher_and_student_parameter_counts() -> None:
    # Figures from the paper's release README: VGG-19 to relu5_1 and its mirror; the 16x students.
    assert count_parameters(VGGEncoder(VGGSpec.vgg19(5))) == 12_944_972
    assert count_parameters(VGGDecoder(VGGSpec.vgg19(5))) == 12_944_451
    quarter = VGGSpec.vgg19(5).scaled(0.25)
    assert quarter.widths == (16, 16, 32, 32, 64, 64, 64, 64, 128, 128, 128, 128, 128)
    assert count_parameters(VGGEncoder(quarter)) == 810_140
    assert count_parameters(VGGDecoder(quarter)) == 810_003


@pytest.mark.parametrize("level,count", [(1, 1), (2, 3), (3, 5), (4, 9), (5, 13)])
def test_conv_names_per_level(level: int, count: int) -> None:
    names = conv_names(level)
    assert len(names) == count and names[-1] == f"conv{level}1"


def test_spec_validation_rejects_bad_widths() -> None:
    with pytest.raises(ValueError, match="needs 5 widths"):
        VGGSpec(3, (8, 8, 8))
    with pytest.raises(ValueError, match="positive"):
        VGGSpec(1, (0,))
    with pytest.raises(ValueError, match="level"):
        VGGSpec(6)
    assert VGGSpec.from_dict(VGGSpec(2, (4, 4, 8)).to_dict()) == VGGSpec(2, (4, 4, 8))


def test_matches_torchvision_vgg19_layer_by_layer() -> None:
    """With zero padding and folded ImageNet normalisation, every relu{k}_1 equals torchvision's."""
    torch.manual_seed(0)
    # torchvision's own VGG-19 feature stack ("E" config), without the costly classifier head.
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"]).eval()
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    encoder = VGGEncoder(VGGSpec.vgg19(5, padding="zeros")).eval()
    encoder.load_state_dict(torchvision_to_encoder_state(state, "torchvision"))
    for name, index in zip(conv_names(5), TORCHVISION_CONV_INDEX, strict=False):
        theirs = features[index]
        ours = getattr(encoder, name)
        assert (ours.in_channels, ours.out_channels, ours.kernel_size) == (
            theirs.in_channels, theirs.out_channels, theirs.kernel_size)
    x = torch.rand(2, 3, 48, 64)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    relu_index = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29}
    with torch.no_grad():
        ours = encoder.features(x, level_taps(5))
        for tap, index in relu_index.items():
            theirs = features[: index + 1]((x - mean) / std)
            torch.testing.assert_close(ours[tap], theirs, rtol=1e-4, atol=1e-5)


def test_reflection_padding_differs_from_zero_padding_only_at_borders() -> None:
    torch.manual_seed(0)
    reflect = VGGEncoder(VGGSpec(1, (8,), "reflect"))
    zeros = VGGEncoder(VGGSpec(1, (8,), "zeros"))
    zeros.load_state_dict(reflect.state_dict())
    x = torch.rand(1, 3, 16, 16)
    a, b = reflect(x), zeros(x)
    torch.testing.assert_close(a[..., 1:-1, 1:-1], b[..., 1:-1, 1:-1])
    assert not torch.allclose(a, b)


def test_decoder_mirrors_encoder_shapes() -> None:
    for level in range(1, 6):
        spec = VGGSpec.vgg19(level).scaled(0.125)
        x = torch.rand(1, 3, 32, 48)
        features = VGGEncoder(spec)(x)
        assert features.shape == (1, spec.out_channels, 32 // spec.stride, 48 // spec.stride)
        assert VGGDecoder(spec)(features).shape == x.shape


def test_truncated_encoder_equals_prefix_of_deeper_one() -> None:
    torch.manual_seed(0)
    deep = VGGEncoder(VGGSpec.vgg19(4).scaled(0.25)).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        tapped = deep.features(x, ["relu2_1", "relu3_1"])
        torch.testing.assert_close(deep.truncated(3)(x), tapped["relu3_1"])
        torch.testing.assert_close(deep.truncated(2)(x), tapped["relu2_1"])


def test_unknown_tap_is_reported() -> None:
    with pytest.raises(KeyError, match="relu9_9"):
        VGGEncoder(VGGSpec(2, (4, 4, 8))).features(torch.rand(1, 3, 8, 8), ["relu9_9"])
