"""A crafted checkpoint that runs code when unpickled, fed to every way cdcompress reads weights.

Each path must refuse it with one line (exit 2) and the payload must never run. Covered elsewhere:
``read_state_dict`` on new/legacy/raw pickles (test_format_and_convert), ``convert --from torchvision``
(test_cli_foundation) and trainer checkpoints on resume (test_engine).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from test_cli_foundation import assert_one_line_error, run
from test_format_and_convert import _RunsCode

from cdcompress.core.digest import sha256_file
from cdcompress.models import save
from cdcompress.models.format import SPEC_FILE
from cdcompress.models.resolve import resolve_model


def _craft(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"conv11.weight": torch.zeros(1), "payload": _RunsCode(marker)}, path)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "payload_ran"
    yield path
    assert not path.exists(), "a crafted checkpoint executed code"


@pytest.fixture
def crafted_model_dir(tmp_path: Path, marker: Path) -> Path:
    """A valid model directory whose level-2 encoder weights were swapped for a crafted pickle,
    with the manifest's file name and checksum updated so loading reaches the unpickler."""
    torch.manual_seed(0)
    folder = save(resolve_model("vgg19-x0.25")[0], tmp_path / "model")
    spec = json.loads((folder / SPEC_FILE).read_text())
    entry = next(e for e in spec["parts"] if e["role"] == "encoder" and int(e["level"]) == 2)
    (folder / entry["file"]).unlink()
    entry["file"] = "encoder2.pt"
    entry["sha256"] = sha256_file(_craft(folder / entry["file"], marker))
    (folder / SPEC_FILE).write_text(json.dumps(spec))
    return folder


@pytest.mark.parametrize(
    "command",
    [
        ["inspect", "{model}"],
        ["stylize", "--model", "{model}", "--content", "{image}", "--style", "{image}", "--out", "{tmp}/o.png"],
        ["eval", "cost", "{model}", "--levels", "2"],
        ["export", "{model}", "--out", "{tmp}/bundle"],
    ],
    ids=lambda c: c[0] if c[0] != "eval" else "eval-cost",
)
def test_model_directory_with_a_crafted_weights_file(command: list[str], crafted_model_dir: Path, tmp_path: Path,
                                                     marker: Path) -> None:
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (120, 30, 200)).save(image)
    args = [a.format(model=crafted_model_dir, image=image, tmp=tmp_path) for a in command]
    code, out = run(*args)
    if "no such option" in out or "Usage:" in out:
        pytest.fail(f"the CLI rejected the arguments themselves: {out}")
    assert_one_line_error(code, out, "refused")


def test_safetensors_named_file_with_pickle_inside_is_not_unpickled(tmp_path: Path, marker: Path) -> None:
    torch.manual_seed(0)
    folder = save(resolve_model("vgg19-x0.25")[0], tmp_path / "model")
    spec = json.loads((folder / SPEC_FILE).read_text())
    entry = spec["parts"][0]
    entry["sha256"] = sha256_file(_craft(folder / entry["file"], marker))  # pickle bytes under a .safetensors name
    (folder / SPEC_FILE).write_text(json.dumps(spec))
    code, out = run("inspect", folder)
    assert_one_line_error(code, out, entry["file"])


def test_converting_a_crafted_release_folder(tmp_path: Path, marker: Path) -> None:
    for name in [f"{kind}{k}.pth" for kind in ("se", "sd") for k in range(1, 6)]:
        _craft(tmp_path / "release" / name, marker)
    code, out = run("convert", "--from", "cd-release", tmp_path / "release", "--out", tmp_path / "o")
    assert_one_line_error(code, out, "refused")
    assert not (tmp_path / "o").exists()


TEACHERS = {
    "torchvision": "{{source: torchvision, path: {evil}/vgg19.pth}}",
    "cd-release": "{{source: cd-release, path: {evil}/release}}",
    "model": "{{source: model, path: {model}}}",
    "builtin-cached": "{{source: builtin, path: vgg19, pretrained: auto}}",
}


@pytest.mark.parametrize("teacher", sorted(TEACHERS))
def test_distill_teachers_from_crafted_files(teacher: str, crafted_model_dir: Path, tmp_path: Path, marker: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    evil = tmp_path / "evil"
    _craft(evil / "vgg19.pth", marker)
    for name in [f"{kind}{k}.pth" for kind in ("se", "sd") for k in range(1, 6)]:
        _craft(evil / "release" / name, marker)
    # The built-in teacher picks up ImageNet weights from torch's hub cache: plant a crafted file there.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    from cdcompress.distill.teachers import torchvision_cache_file

    _craft(torchvision_cache_file(), marker)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: crafted_teacher
        levels: [2]
        teacher: {TEACHERS[teacher].format(evil=evil, model=crafted_model_dir)}
        collaborator: {{source: train}}
        student: {{width: 0.25}}
        data: {{train: [skimage], eval: [skimage-heldout], resize: 40, crop: 32, eval_size: 48}}
        stages:
          collaborator: {{steps: 1, batch: 2}}
          distill: {{steps: 1, batch: 2}}
          decoder: {{steps: 1, batch: 2}}
        """))
    code, out = run("distill", "--recipe", recipe, "--out", tmp_path / "run")
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "refused" in lines[0] and "Traceback" not in out, out
