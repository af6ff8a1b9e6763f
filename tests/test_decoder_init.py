"""Stage-3 decoder inits: ``folded`` composes the trained output branch Q into the slimmed decoder's first conv."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import cdcompress
from cdcompress.errors import CDCompressError
from cdcompress.models import VGGDecoder, VGGEncoder, VGGSpec


def _vgg_distiller(level: int) -> cdcompress.Distiller:
    torch.manual_seed(0)
    spec = VGGSpec.vgg19(level)
    return cdcompress.apply(VGGEncoder(spec), VGGDecoder(spec), slim=0.25, taps=None)


@pytest.mark.parametrize("level", [1, 3])
def test_folded_first_conv_is_the_collaborators_on_embedded_features(level: int) -> None:
    d = _vgg_distiller(level)
    with torch.no_grad():  # a branch that is not the identity, as after stage 2
        for branch in d.branches.values():
            branch.weight.normal_(0, 0.3)
            branch.bias.normal_(0, 0.3)
    decoder = d.fold_output_branch(copy.deepcopy(d.decoder_init))
    first = decoder.plan[0]
    kept = d.slimmed.kept.get(f"decoder.{first}", list(range(getattr(d.collaborator, first).out_channels)))
    image = torch.rand(2, 3, 32, 40)
    with torch.no_grad():
        student = d.student(image)
        embedded = d.embedded_features(image)[1]
        ours = getattr(decoder, first)(student)
        theirs = getattr(d.collaborator, first)(embedded)[:, kept]
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)  # exact up to float32 summation order
    pruned = getattr(d.decoder_init, first)(student)
    assert (pruned - theirs).abs().max() > 1e-2  # the plain slice is not


def test_folded_init_trains_and_is_refused_for_other_pairs() -> None:
    d = _vgg_distiller(2)
    images = [torch.rand(2, 3, 32, 32) for _ in range(3)]
    decoder, result = d.train_decoder(images, cdcompress.TrainConfig(steps=3, lr=1e-3), init="folded")
    assert isinstance(decoder, VGGDecoder) and result.steps == 3

    encoder = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    other = cdcompress.apply(encoder, nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 1)))
    with pytest.raises(CDCompressError, match="needs a VGG encoder/decoder pair"):
        other.train_decoder(images, cdcompress.TrainConfig(steps=1), init="folded")
    with pytest.raises(CDCompressError, match="pruned, folded, random"):
        other.train_decoder(images, cdcompress.TrainConfig(steps=1), init="zeros")
