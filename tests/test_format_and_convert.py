"""Native model format, converters, and the refusal of unsafe or broken checkpoints."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from cdcompress.core.errors import CheckpointError, ModelFormatError
from cdcompress.evaluation.evaluate import reconstruction
from cdcompress.models import convert_cd_release, convert_torchvision, load, save, student_architecture
from cdcompress.models.checkpoint import read_state_dict
from cdcompress.models.converters import decoder_from_state_dict
from cdcompress.models.vgg import VGG19_WIDTHS, VGGDecoder, VGGSpec
from cdcompress.surgery.modules import count_parameters

# PSNR (dB) of se{k} -> sd{k} from ../shared/reference/cd16x/README.md (images cropped to multiples of 16).
REFERENCE_PSNR = {
    1: (51.28, 46.91, 45.69),
    2: (29.72, 31.27, 29.91),
    3: (34.15, 28.27, 26.45),
    4: (29.78, 24.98, 23.29),
    5: (23.46, 21.24, 20.29),
}
REFERENCE_IMAGES = ("content/in2.jpg", "content/in4.jpg", "style/in3.jpg")


def test_released_students_reproduce_reference_psnr(released_model_dir: Path, images_dir: Path) -> None:
    model = load(released_model_dir)
    paths = [images_dir / name for name in REFERENCE_IMAGES]
    for level, expected in REFERENCE_PSNR.items():
        measured = [r.psnr_db for r in reconstruction(model, level, paths)]
        for got, want, name in zip(measured, expected, REFERENCE_IMAGES, strict=False):
            assert abs(got - want) <= 0.05, f"level {level} {name}: {got:.3f} dB vs reference {want}"


def test_released_conversion_keeps_branches_out_of_the_student(released_model_dir: Path) -> None:
    model = load(released_model_dir)
    assert count_parameters(model.encoders[5]) == 810_140
    assert count_parameters(model.encoders[5]) + count_parameters(model.branches[5]) == 964_188
    assert count_parameters(model.decoders[5]) == 810_003
    assert model.branches[1].widths == {"relu1_1": (24, 64)}
    assert model.branches[5].widths["relu5_1"] == (128, 512)
    assert not any("aux" in key or "relu" in key for key in model.encoders[5].state_dict())
    spec = json.loads((released_model_dir / "model.json").read_text())
    assert spec["source"]["kind"] == "cd-release" and len(spec["source"]["files_sha256"]) == 10


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = student_architecture(0.125, levels=(2, 3))
    path = save(model, tmp_path / "m")
    again = load(path)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        for level in (2, 3):
            torch.testing.assert_close(again.decoder(level)(again.encoder(level)(x)),
                                       model.decoder(level)(model.encoder(level)(x)), rtol=0, atol=0)
    with pytest.raises(ModelFormatError, match="already exists"):
        save(model, path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o777 & ~umask  # not the staging folder's private 0700
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging leftovers


def test_failed_save_leaves_the_previous_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    path = save(student_architecture(0.125, levels=(2,)), tmp_path / "m")
    before = sorted((p.name, p.read_bytes()) for p in path.iterdir())

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("cdcompress.models.format.save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        save(student_architecture(0.25, levels=(2,)), path, overwrite=True)
    assert sorted((p.name, p.read_bytes()) for p in path.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_corrupt_model_directory_is_detected(tmp_path: Path) -> None:
    path = save(student_architecture(0.125, levels=(1,)), tmp_path / "m")
    weights = path / "encoder1.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="checksum mismatch"):
        load(path)
    weights.unlink()
    with pytest.raises(ModelFormatError, match="missing weights file"):
        load(path)
    (path / "model.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="invalid JSON"):
        load(path)
    with pytest.raises(ModelFormatError, match="not a cdcompress model directory"):
        load(tmp_path)


class _RunsCode:
    """Pickles to a call of ``Path.touch`` — executing it would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for legacy in (False, True):
        evil = tmp_path / f"evil_{legacy}.pth"
        torch.save({"model": {"conv11.weight": torch.zeros(1)}, "payload": _RunsCode(marker)}, evil,
                   _use_new_zipfile_serialization=not legacy)
        with pytest.raises(CheckpointError, match="refused"):
            read_state_dict(evil)
        assert not marker.exists(), "unpickling executed code"
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(CheckpointError):
        read_state_dict(raw)
    assert not marker.exists()


def test_truncated_and_missing_checkpoints(tmp_path: Path, cd16x_dir: Path) -> None:
    truncated = tmp_path / "se5.pth"
    truncated.write_bytes((cd16x_dir / "se5.pth").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated"):
        read_state_dict(truncated)
    with pytest.raises(CheckpointError, match="no such file"):
        read_state_dict(tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="missing release file"):
        convert_cd_release(tmp_path)


def test_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    state = VGGDecoder(VGGSpec(2, (4, 4, 8))).state_dict()
    state["conv12.weight"] = torch.zeros(4, 5, 3, 3)
    with pytest.raises(CheckpointError, match=r"shape mismatch at conv\d\d.weight"):
        decoder_from_state_dict(state, "dec.pth")
    del state["conv12.weight"]
    with pytest.raises(CheckpointError, match="do not form a level-2 VGG cut"):
        decoder_from_state_dict(state, "dec.pth")


def test_torchvision_teacher_with_paper_style_decoders(tmp_path: Path) -> None:
    """torchvision VGG-19 features + full-width decoders named like sd{k} convert into one teacher."""
    import torchvision

    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])
    state = {f"features.{k}": v for k, v in features.state_dict().items() if int(k.split(".")[0]) <= 28}
    torch.save(state, tmp_path / "vgg19.pth")
    decoders = tmp_path / "decoders"
    decoders.mkdir()
    for level in (1, 2):
        dec = VGGDecoder(VGGSpec.vgg19(level))
        torch.save({"epoch": 1, "model": dec.state_dict()}, decoders / f"d{level}.pth")
    model = convert_torchvision(tmp_path / "vgg19.pth", decoders_dir=decoders)
    assert model.encoders[5].spec.widths == VGG19_WIDTHS and model.levels == [1, 2]
    assert model.decoders[2].spec == VGGSpec.vgg19(2)
    again = load(save(model, tmp_path / "teacher"))
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(again.encoder(2)(x), model.encoder(2)(x))
    with pytest.raises(CheckpointError, match="features.0.weight"):
        torch.save({"conv11.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
        convert_torchvision(tmp_path / "wrong.pth")
