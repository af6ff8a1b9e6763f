"""The Python API refuses what a recipe refuses, in one line, on construction; and it does not save, calibrate or
label things in ways that look right and are not (an untrained decoder, a made-up Taylor target, an int8 label on
float32 graphs)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import cdcompress
from cdcompress.core.errors import CDCompressError
from cdcompress.distill.recipe import RecipeError, load_recipe
from cdcompress.distill.trainer import TrainConfig
from cdcompress.export.errors import ExportError
from cdcompress.export.manifest import bundle_precision, level_precisions
from cdcompress.surgery.slim import Slimming, SlimmingError

# --------------------------------------------------------------------------- TrainConfig

BAD_CONFIGS = {
    "log_every": (0, "log_every must be > 0"),
    "steps": (2.5, "steps must be an integer"),
    "lr": (float("nan"), "lr must be a finite number"),
    "weight_decay": (-0.1, "weight_decay must be >= 0"),
    "warmup_steps": (-1, "warmup_steps must be >= 0"),
    "gamma": (0.0, "gamma must be > 0"),
    "checkpoint_every": (-2, "checkpoint_every must be >= 0"),
    "sample_count": (0, "sample_count must be > 0"),
    "workers": (-1, "workers must be >= 0"),
    "device": ("gpu", "device must be cpu, cuda, cuda:N or mps"),
    "amp": (False, "amp must be one of off, bf16, fp16"),
    "optimizer": ("sgd", "optimizer must be one of adam, adamw"),
    "channels_last": (1, "channels_last must be True or False"),
    "accumulate": (True, "accumulate must be an integer"),
    "lr_floor": (1.5, "lr_floor must be <= 1 (a share of lr)"),
}


@pytest.mark.parametrize("field", sorted(BAD_CONFIGS))
def test_train_config_refuses_a_bad_field_in_one_line(field: str) -> None:
    value, message = BAD_CONFIGS[field]
    with pytest.raises(CDCompressError) as error:
        TrainConfig(**{"steps": 3, field: value})
    text = str(error.value)
    assert message in text and "\n" not in text and text.startswith("training config: ")


def test_step_schedule_needs_a_step_size() -> None:
    with pytest.raises(CDCompressError, match="schedule 'step' needs step_size > 0"):
        TrainConfig(steps=3, schedule="step")
    assert TrainConfig(steps=3, schedule="step", step_size=2).step_size == 2


RECIPE = """
name: shared-rules
levels: [1]
teacher: {source: builtin, path: vgg19, pretrained: none}
data: {train: [skimage]}
stages:
  distill: {steps: 4}
  decoder: {steps: 4}
"""
#: TrainConfig field -> where a recipe sets it.
RECIPE_KEYS = {"steps": "stages.distill.steps", "lr": "stages.distill.lr", "weight_decay": "stages.distill.weight_decay",
               "warmup_steps": "stages.distill.warmup_steps", "grad_clip": "stages.distill.grad_clip",
               "accumulate": "stages.distill.accumulate", "checkpoint_every": "output.checkpoint_every",
               "sample_every": "output.sample_every", "log_every": "output.log_every", "eval_every": "output.eval_every",
               "workers": "data.workers", "device": "device", "lr_floor": "stages.distill.lr_floor"}


SHARED_CASES = [(field, value) for field in sorted(RECIPE_KEYS)
                for value in (("cuda:x", "gpu", "cuda:1", "mps") if field == "device" else (0, -1, 1))]


@pytest.mark.parametrize(("field", "value"), SHARED_CASES)
def test_python_api_and_recipes_refuse_the_same_values(field: str, value: object, tmp_path: Path) -> None:
    """One set of rules: a value the recipe schema refuses, TrainConfig refuses, and the other way round."""
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    recipe_refuses = python_refuses = False
    try:
        load_recipe(path, [f"{RECIPE_KEYS[field]}={value}"])
    except RecipeError:
        recipe_refuses = True
    try:
        TrainConfig(**{"steps": 3, field: value})
    except CDCompressError:
        python_refuses = True
    assert recipe_refuses == python_refuses, (field, value, recipe_refuses)


# --------------------------------------------------------------------------- Slimming

BAD_SLIMMINGS = {
    "width": ({"width": 1.5}, "width ratio 1.5 must be in (0, 1]"),
    "round_to": ({"round_to": 0}, "round_to must be an integer >= 1"),
    "seed": ({"seed": "one"}, "seed must be an integer"),
    "keep": ({"keep": "conv11"}, "keep must be a list of layer names"),
    "init": ({"init": "zeros"}, "init must be 'pruned' or 'random'"),
    "importance": ({"importance": "l3"}, "l3"),
    "taylor": ({"importance": "taylor"}, "needs calibration data"),
    "calibration": ({"importance": "taylor", "calibration": [1, 2, 3]}, "calibration must be images"),
}


@pytest.mark.parametrize("case", sorted(BAD_SLIMMINGS))
def test_slimming_refuses_a_bad_field_on_construction(case: str) -> None:
    kwargs, message = BAD_SLIMMINGS[case]
    with pytest.raises(CDCompressError) as error:
        Slimming(**kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


class Segmenter(nn.Module):
    """Encoder then a one-channel head: a pair whose output is a mask, not its input image."""

    def __init__(self, head: bool) -> None:
        super().__init__()
        self.layers = (nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 1, 3, padding=1)) if head
                       else nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_taylor_calibrates_on_the_callers_inputs_and_targets() -> None:
    """The old calibration used one random image as its own target: for a mask-producing pair that broadcasts
    [1, 1, H, W] against [1, 3, H, W] (a warning, and a loss of the wrong task). Given (inputs, targets) it scores
    the pair's own task, warning-free; targets of the wrong shape fail in one line."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 32, 32, generator=generator)
    masks = (images.mean(1, keepdim=True) > 0.5).float()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distiller = cdcompress.apply(Segmenter(False), Segmenter(True), taps=None, objective="feature-kd",
                                     slim=Slimming(0.5, importance="taylor", calibration=(images, masks)))
    assert distiller.student.layers[2].out_channels == 8
    with pytest.raises(SlimmingError, match=r"pair outputs \(4, 1, 32, 32\) but the targets are \(4, 3, 32, 32\)"):
        cdcompress.apply(Segmenter(False), Segmenter(True), taps=None, objective="feature-kd",
                         slim=Slimming(0.5, importance="taylor", calibration=images))


def test_a_recipe_with_taylor_importance_calibrates_on_its_training_data(tmp_path: Path) -> None:
    from cdcompress.distill.run import run_recipe

    path = tmp_path / "taylor.yaml"
    path.write_text(RECIPE.replace("levels: [1]", "levels: [1]\ncollaborator: {source: train}\n"
                                                  "student: {width: 0.5, importance: taylor}")
                    .replace("data: {train: [skimage]}", "data: {train: [skimage], resize: 40, crop: 32}")
                    .replace("stages:", "stages:\n  collaborator: {steps: 1, batch: 2}")
                    .replace("steps: 4}", "steps: 1, batch: 2}") + "output: {checkpoint_every: 0}\n")
    result = run_recipe(load_recipe(path), tmp_path / "run")
    assert (result.run_dir / "student" / "model.json").is_file()


# --------------------------------------------------------------------------- Distiller.save


def test_save_refuses_the_untrained_slimmed_decoder(tmp_path: Path) -> None:
    """Without ``decoder=`` the slimmed collaborator was written, never trained for the student; now the stage-3
    decoder this distiller trained is saved, and with none, saving is refused in one line."""
    encoder, decoder = Segmenter(False), nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                                       nn.Conv2d(16, 3, 3, padding=1))
    distiller = cdcompress.apply(encoder, decoder, slim=0.5, taps=None)
    with pytest.raises(CDCompressError, match="no trained decoder") as error:
        distiller.save_student(tmp_path / "untrained")
    assert "\n" not in str(error.value) and not (tmp_path / "untrained").exists()
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    trained, _ = distiller.fit_decoder([images], TrainConfig(steps=1, lr=1e-2))
    distiller.save_student(tmp_path / "student")
    saved = cdcompress.load(tmp_path / "student", encoder=lambda: Segmenter(False), decoder=lambda: nn.Sequential(
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1)))
    for a, b in zip(saved.decoder().state_dict().values(), trained.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(),
                                                      distiller.decoder_init.state_dict().values(), strict=True))


# --------------------------------------------------------------------------- INT8 manifests


def test_manifest_states_each_levels_precision() -> None:
    """An INT8 bundle keeps float32 graphs for levels past its gate; its manifest said ``precision: int8`` for all."""
    old_int8 = {"levels": [1, 5], "precision": "int8", "int8_levels": [5]}
    assert level_precisions(old_int8) == {"1": "fp32", "5": "int8"}  # manifests written before level_precision
    assert level_precisions({"levels": [1, 2], "precision": "fp16"}) == {"1": "fp16", "2": "fp16"}
    assert bundle_precision({"1": "fp32", "5": "int8"}) == "mixed" and bundle_precision({"5": "int8"}) == "int8"
    with pytest.raises(ExportError, match="'level_precision' must give each of levels"):
        level_precisions({"levels": [1, 5], "precision": "mixed", "level_precision": {"1": "int4"}})


# --------------------------------------------------------------------------- one meaning per name


def test_feature_kd_refuses_options_instead_of_ignoring_them(tmp_path: Path) -> None:
    """``feature-kd`` has no collaborator term, so an option for one is a mistake said in one line (it used to be
    swallowed by a ``**_`` catch-all), from Python and from a recipe alike."""
    with pytest.raises(CDCompressError, match=r"objective 'feature-kd' takes no option\(s\) \['lambda_p'\]"):
        cdcompress.apply(Segmenter(False), Segmenter(True), taps=None, objective="feature-kd", lambda_p=1.0)
    assert cdcompress.apply(Segmenter(False), Segmenter(True), taps=None, objective="feature-kd").objective is None
    path = tmp_path / "kd.yaml"
    path.write_text(RECIPE + "collaborator: {source: train}\nobjective: {kind: feature-kd, kwargs: {lambda_p: 1.0}}\n")
    from cdcompress.distill.run import run_recipe

    with pytest.raises(CDCompressError, match=r"takes no option\(s\) \['lambda_p'\]"):
        run_recipe(load_recipe(path, ["stages.collaborator.steps=1", "stages.collaborator.batch=2", "data.resize=64",
                                      "data.crop=32", "collaborator.min_psnr=0"]), tmp_path / "run")


def test_apply_and_recipes_default_to_the_same_beta() -> None:
    """One default for the embedding weight: the one our recipes measured best (docs/reproduction_wct_baselines.md),
    in the Python API and the recipe schema alike."""
    import inspect

    from cdcompress.distill.recipe import EmbedSpec

    assert inspect.signature(cdcompress.apply).parameters["beta"].default == EmbedSpec().beta == 1.0
