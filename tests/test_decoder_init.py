"""Stage-3 decoder inits: ``folded`` composes the trained output branch Q into the slimmed decoder's first conv."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import cdcompress
from cdcompress.core.errors import CDCompressError
from cdcompress.distill.decoder import fold_output_branch
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
    decoder = fold_output_branch(d.decoder_start(), copy.deepcopy(d.decoder_init))
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
    decoder, result = d.fit_decoder(images, cdcompress.TrainConfig(steps=3, lr=1e-3), init="folded")
    assert isinstance(decoder, VGGDecoder) and result.steps == 3

    encoder = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    other = cdcompress.apply(encoder, nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 1)))
    with pytest.raises(CDCompressError, match="needs a VGG encoder/decoder pair"):
        other.fit_decoder(images, cdcompress.TrainConfig(steps=1), init="folded")
    with pytest.raises(CDCompressError, match="pruned, folded, random"):
        other.fit_decoder(images, cdcompress.TrainConfig(steps=1), init="zeros")


def test_learning_curve_records_held_out_psnr_for_stages_2_and_3(tmp_path) -> None:
    """eval_every: held-out PSNR at step 0, every N steps and at the end, in the result and in metrics.jsonl."""
    import json

    d = _vgg_distiller(2)
    train = [torch.rand(2, 3, 32, 32) for _ in range(5)]
    held_out = [torch.rand(1, 3, 32, 48), torch.rand(1, 3, 48, 32)]
    result = d.fit(train, cdcompress.TrainConfig(steps=5, lr=1e-3, eval_every=2), tmp_path, held_out=held_out)
    assert [r["step"] for r in result.curve] == [0, 2, 4, 5]
    assert all(5 < r["heldout/psnr"] < 60 for r in result.curve)
    with torch.no_grad():  # the last point is the collaborator decoding the trained student's Q·F'
        from cdcompress.evaluation.metrics import psnr

        expected = sum(psnr(d.predict(x).clamp(0, 1), x) for x in held_out) / 2
    assert abs(result.curve[-1]["heldout/psnr"] - expected) < 1e-3
    assert all("total" in h for h in result.history)  # loss history stays loss records only
    _, decoded = d.fit_decoder(train, cdcompress.TrainConfig(steps=3, eval_every=3), held_out=held_out, run_dir=tmp_path)
    assert [r["step"] for r in decoded.curve] == [0, 3]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in records if "heldout/psnr" in r] == [
        ("distill", 0), ("distill", 2), ("distill", 4), ("distill", 5), ("decoder", 0), ("decoder", 3)]
    no_curve = d.fit(train, cdcompress.TrainConfig(steps=2, lr=1e-3), held_out=held_out)
    assert no_curve.curve == []  # eval_every 0: no evaluation cost


def test_recipe_stages_cover_the_schema_in_order() -> None:
    """Every stage a recipe can configure has a runner, run in the paper's order (collaborator, student, decoder)."""
    from cdcompress.distill.recipe import StagesSpec
    from cdcompress.distill.stages import STAGES

    assert [stage.key for stage in STAGES] == list(StagesSpec.model_fields) == ["collaborator", "distill", "decoder"]
