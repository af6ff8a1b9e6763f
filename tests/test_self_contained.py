"""The stylization core on weights and photos made here, so a clone without ../shared still checks what it ships.

The test bodies are test_stylize.py's own (imported, so pytest runs them again with this module's fixtures):
tiled == untiled for WCT and AdaIN with and without the feature cache, five levels from a file, alpha 0 == the
autoencoder, colour preservation, PNG/grid outputs, auto tiling, backends without geometry and the user errors.
The model is a 1/4-width VGG-19 student with scale-preserving random weights (torch's default init collapses deep
features to their biases); the photos are scikit-image's bundled ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import random_student
from PIL import Image
from test_stylize import (  # noqa: F401  (collected here with the fixtures below)
    test_accumulated_statistics_equal_direct,
    test_alpha_zero_is_the_autoencoder,
    test_auto_tiling_from_budget,
    test_backend_without_geometry_runs_untiled_only,
    test_errors_are_user_errors,
    test_full_cascade_tiled_from_file_equals_untiled,
    test_geometry_follows_the_architecture,
    test_png_and_grid_outputs,
    test_preserve_color_keeps_chroma,
    test_tiled_encoder_features_match_untiled,
    test_tiled_equals_untiled,
)

from cdcompress.data.batches import skimage_photos
from cdcompress.data.images import load_image
from cdcompress.models import CDModel


@pytest.fixture(scope="module")
def model() -> CDModel:
    return random_student()


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The layout test_stylize expects (content/, style/ with in2-in4.jpg), filled with scikit-image's photos."""
    root = tmp_path_factory.mktemp("skimage")
    photos = skimage_photos(root / "photos")
    for folder, names, picks in (("content", ("in2.jpg", "in4.jpg"), (0, 1)), ("style", ("in2.jpg", "in3.jpg"), (2, 3))):
        (root / folder).mkdir()
        for name, pick in zip(names, picks, strict=True):
            image = load_image(photos[pick])
            Image.fromarray((image[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(root / folder / name)
    return root


@pytest.fixture(scope="module")
def content(images_dir: Path) -> torch.Tensor:
    return load_image(images_dir / "content/in4.jpg")[..., 100:250, 60:241]


@pytest.fixture(scope="module")
def style(images_dir: Path) -> torch.Tensor:
    return F.interpolate(load_image(images_dir / "style/in2.jpg"), size=(96, 96), mode="area")
