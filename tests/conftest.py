"""Shared fixtures: the paper's released checkpoints and real photos from ../shared (skipped when absent), and a
self-contained stand-in student for tests that need a working model but not the released numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
CD16X = SHARED / "reference" / "cd16x"
IMAGES = SHARED / "images"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="where the training, stylization and bundle tests run: cpu "
                     "(default) or cuda; tests marked cuda also run on a GPU machine without it")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> str:
    """The device chosen with ``pytest --device`` (cpu by default); skips when it is not available here."""
    name = str(pytestconfig.getoption("--device"))
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"--device {name}: PyTorch sees no CUDA GPU here")
    return name


@pytest.fixture(scope="session")
def cd16x_dir() -> Path:
    if not (CD16X / "se5.pth").is_file():
        pytest.skip("../shared/reference/cd16x is not available")
    return CD16X


@pytest.fixture(scope="session")
def images_dir() -> Path:
    if not (IMAGES / "content").is_dir():
        pytest.skip("../shared/images is not available")
    return IMAGES


@pytest.fixture(scope="session")
def released_model_dir(cd16x_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The released 16x students converted once per session into the native format."""
    from cdcompress.models import convert_cd_release, save

    return save(convert_cd_release(cd16x_dir), tmp_path_factory.mktemp("models") / "cd16x")


def random_student() -> torch.nn.Module:
    """A 1/4-width five-level VGG-19 student with scale-preserving random weights (torch's default init collapses
    deep features to their biases): the released students' shapes, made in the test."""
    from cdcompress.distill.teachers import scale_preserving_init
    from cdcompress.models import student_architecture

    torch.manual_seed(0)
    student = student_architecture(0.25)
    for part in [*student.encoders.values(), *student.decoders.values()]:
        scale_preserving_init(part)
    return student.eval()


@pytest.fixture(scope="session")
def random_student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`random_student` saved as a model directory, for CLI runs that need no released weights."""
    from cdcompress.models import save

    return save(random_student(), tmp_path_factory.mktemp("models") / "random-student")


@pytest.fixture(scope="module")
def content(images_dir: Path) -> torch.Tensor:
    """A real-photo crop whose sides are multiples of neither the tiles nor the level-5 stride."""
    from cdcompress.data.images import load_image

    return load_image(images_dir / "content/in4.jpg")[..., 100:250, 60:241]


@pytest.fixture(scope="module")
def style(images_dir: Path) -> torch.Tensor:
    from cdcompress.data.images import load_image

    return torch.nn.functional.interpolate(load_image(images_dir / "style/in2.jpg"), size=(96, 96), mode="area")
