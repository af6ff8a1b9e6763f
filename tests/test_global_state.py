"""Nothing the library does changes process-wide state the caller did not hand it: torch's global RNG above all.

``apply`` promises that its seed reaches a generator of its own; a recipe run seeds a scoped stream and gives the
caller's back. These tests watch the global RNG from outside and, where a reseed could hide, from inside.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import cdcompress
from cdcompress.distill.decoder import starting_decoder
from cdcompress.surgery.modules import reinitialize
from cdcompress.surgery.slim import Slimming


class Gain(nn.Module):
    """A layer ``cdcompress`` does not know: its own ``reset_parameters`` draws from torch's default generator and
    records what the global RNG looked like at that moment."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels, 1, 1))
        self.seen: list[tuple[int, torch.Tensor]] = []

    def reset_parameters(self) -> None:
        self.seen.append((torch.initial_seed(), torch.get_rng_state()))
        nn.init.normal_(self.scale, 1.0, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def pair() -> tuple[nn.Module, nn.Module]:
    encoder = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), Gain(16))
    decoder = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1))
    return encoder, decoder


def global_rng() -> tuple[int, torch.Tensor]:
    return torch.initial_seed(), torch.get_rng_state()


def assert_same(before: tuple[int, torch.Tensor], after: tuple[int, torch.Tensor]) -> None:
    assert before[0] == after[0], "torch's global seed was changed"
    assert torch.equal(before[1], after[1]), "torch's global RNG state was read-advanced or reseeded"


def test_reinitialising_an_unknown_layer_never_reseeds_the_global_rng() -> None:
    """The layer's own reset runs (its distribution), its draws come from the caller's generator, and even while it
    runs the global RNG is the caller's, not a reseeded fork."""
    torch.manual_seed(1234)
    outside = global_rng()
    layer = Gain(8)
    reinitialize(nn.Sequential(layer), torch.Generator().manual_seed(7))
    first = layer.scale.detach().clone()
    assert_same(outside, layer.seen[-1])  # during the reset
    assert_same(outside, global_rng())  # and after it
    torch.manual_seed(99)  # another global stream: the same generator seed still gives the same weights
    reinitialize(nn.Sequential(layer), torch.Generator().manual_seed(7))
    assert torch.equal(first, layer.scale) and not torch.equal(first, torch.ones_like(first))


def test_apply_with_random_init_leaves_the_global_rng_alone() -> None:
    """A pair holding such a layer, slimmed and re-initialised by ``apply``: the global RNG is unchanged, before,
    during and after, and the student's weights depend on ``seed`` only."""
    encoder, decoder = pair()
    torch.manual_seed(5)
    before = global_rng()
    first = cdcompress.apply(encoder, decoder, slim=Slimming(0.5, init="random"), taps=None, seed=3)
    assert_same(before, global_rng())
    gain = first.student[3]
    assert gain.seen and all(s[0] == before[0] and torch.equal(s[1], before[1]) for s in gain.seen)
    torch.manual_seed(6)
    second = cdcompress.apply(encoder, decoder, slim=Slimming(0.5, init="random"), taps=None, seed=3)
    for a, b in zip(first.student.parameters(), second.student.parameters(), strict=True):
        assert torch.equal(a, b)


def test_stage_three_random_decoder_comes_from_the_distillers_seed() -> None:
    """``init='random'`` for the stage-3 decoder drew from (and advanced) the global RNG."""
    encoder, decoder = pair()
    distiller = cdcompress.apply(encoder, decoder, slim=0.5, taps=None, seed=4)
    torch.manual_seed(11)
    before = global_rng()
    first = starting_decoder(distiller.decoder_start(), "random")
    assert_same(before, global_rng())
    torch.manual_seed(12)
    second = starting_decoder(distiller.decoder_start(), "random")
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_recipe_run_gives_the_callers_rng_back(tmp_path: Path) -> None:
    """``run_recipe`` seeds torch with the recipe's seed for the run only; the caller's stream is as it was."""
    from cdcompress.distill.recipe import load_recipe
    from cdcompress.distill.run import run_recipe

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    torch.manual_seed(2024)
    torch.rand(3)  # a stream somewhere in the middle, not at a fresh seed
    before = global_rng()
    run_recipe(load_recipe(recipe), tmp_path / "run")
    assert_same(before, global_rng())


TINY = """
name: tiny
seed: 3
levels: [1]
teacher: {source: builtin, path: vgg19, pretrained: none}
collaborator: {source: train}
student: {width: 0.5, init: random}
data: {train: [skimage], resize: 40, crop: 32}
stages:
  collaborator: {steps: 2, batch: 2}
  distill: {steps: 2, batch: 2}
  decoder: {steps: 2, batch: 2, init: random}
output: {checkpoint_every: 0}
"""


def test_the_run_scope_reseeds_inside_and_restores() -> None:
    """Inside the run's scope draws follow the recipe's seed (reproducible runs); outside, the caller's stream."""
    from cdcompress.distill.run import seeded_rng

    torch.manual_seed(8)
    before = global_rng()
    with seeded_rng(3, "cpu"):
        inside = torch.rand(4)
    with seeded_rng(3, "cpu"):
        assert torch.equal(inside, torch.rand(4))
    assert_same(before, global_rng())
