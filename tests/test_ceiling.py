"""The least-squares output-layer solve (cdcompress.evaluation.ceiling) on real photos and real decoders."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from skimage import data
from torch import nn

from cdcompress.core.errors import CDCompressError
from cdcompress.evaluation.ceiling import conv_columns, linear_ceiling, refit_output_conv
from cdcompress.evaluation.metrics import reconstruction_psnr
from cdcompress.models.vgg import VGGDecoder, VGGEncoder, VGGSpec


def photo_crops(count: int, side: int = 64) -> list[torch.Tensor]:
    photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    return [photo[..., 40 * i: 40 * i + side, 50 * i: 50 * i + side] for i in range(count)]


def signed_pairs_encoder() -> nn.Module:
    """relu(x) and relu(-x) per channel at the centre tap: lossless, so a linear 3x3 read-out can invert it."""
    conv = nn.Conv2d(3, 6, 3, padding=1, padding_mode="reflect")
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(3):
            conv.weight[c, c, 1, 1], conv.weight[3 + c, c, 1, 1] = 1.0, -1.0
        conv.bias.zero_()
    return nn.Sequential(conv, nn.ReLU())


def grey_encoder() -> nn.Module:
    """One channel of luminance: colour is lost, so no decoder can reach the first encoder's ceiling."""
    conv = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))
        conv.bias.zero_()
    return nn.Sequential(conv, nn.ReLU())


def test_refit_recovers_what_the_features_keep_and_no_more() -> None:
    train, held_out = [torch.cat(photo_crops(4))], photo_crops(2, 96)
    torch.manual_seed(0)
    lossless = linear_ceiling(signed_pairs_encoder(), nn.Conv2d(6, 3, 3, padding=1, padding_mode="reflect"), train,
                              held_out)
    lossy = linear_ceiling(grey_encoder(), nn.Conv2d(1, 3, 3, padding=1, padding_mode="reflect"), train, held_out)
    assert lossless > 60, lossless  # exact inversion up to float rounding
    assert 10 < lossy < 35, lossy


def test_refit_beats_the_adam_trained_decoder_it_starts_from() -> None:
    """The solve is the pixel-MSE optimum on its batches: it can only lower the training loss of a level-1
    VGG decoder (reflection-padded conv, no output ReLU) that Adam trained on the same batches."""
    torch.manual_seed(0)
    spec = VGGSpec(1, (8,), "reflect", output_relu=False)
    encoder, decoder = VGGEncoder(spec).eval(), VGGDecoder(spec)
    batch = torch.cat(photo_crops(4))
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    for _ in range(100):
        loss = F.mse_loss(decoder(encoder(batch)), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = copy.deepcopy(decoder)
    refit_output_conv(encoder, decoder, [batch], pixels_per_image=64 * 64)
    with torch.no_grad():
        before = F.mse_loss(trained(encoder(batch)), batch).item()
        after = F.mse_loss(decoder(encoder(batch)), batch).item()
    assert after < before
    assert reconstruction_psnr(encoder, decoder, photo_crops(2, 96)) > reconstruction_psnr(encoder, trained, photo_crops(2, 96))


@pytest.mark.parametrize("padding_mode,stride", [("zeros", 1), ("reflect", 1), ("zeros", 2), ("replicate", 2)])
def test_conv_columns_reproduce_the_conv(padding_mode: str, stride: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 5, 3, stride=stride, padding=1, padding_mode=padding_mode)
    x = torch.randn(2, 4, 17, 13)
    weight = torch.cat([conv.weight.flatten(1).T, conv.bias[None]], 0)  # [C*k*k + 1, out]
    expected = conv(x)
    got = (conv_columns(conv, x) @ weight).transpose(1, 2).reshape(expected.shape)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_refit_refuses_a_decoder_with_an_activation_after_its_last_conv() -> None:
    spec = VGGSpec(1, (8,), "reflect")  # output_relu=True: the released students' decoders
    with pytest.raises(CDCompressError, match="linear output layer"):
        refit_output_conv(VGGEncoder(spec), VGGDecoder(spec), [torch.cat(photo_crops(2))])
