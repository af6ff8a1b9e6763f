"""`cdcompress inspect`, `convert` and `eval recon` end to end, including their error paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cdcompress.cli import main


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(map(str, args)))
    return result.exit_code, result.output


def assert_one_line_error(code: int, output: str, needle: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], output


def test_inspect_builtin_teacher_and_student() -> None:
    code, out = run("inspect", "vgg19")
    assert code == 0, out
    assert "| encoder | 5 | 12,944,972 |" in out and "| decoder | 5 | 12,944,451 |" in out
    code, out = run("inspect", "vgg19-x0.25", "--size", "256", "256")
    assert code == 0 and "| encoder | 5 | 810,140 |" in out and "| decoder | 5 | 810,003 |" in out


def test_convert_inspect_eval_on_release(cd16x_dir: Path, images_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "cd16x"
    code, out = run("convert", "--from", "cd-release", cd16x_dir, "--out", out_dir)
    assert code == 0, out
    code, out = run("inspect", out_dir, "--json", tmp_path / "cost.json")
    assert code == 0, out
    assert "| encoder | 5 | 810,140 |" in out and "| decoder | 5 | 810,003 |" in out and "964,188" in out
    rows = json.loads((tmp_path / "cost.json").read_text())["parts"]
    enc5 = next(r for r in rows if r["part"] == "encoder" and r["level"] == 5)
    assert enc5["bytes"] == (out_dir / "encoder5.safetensors").stat().st_size and enc5["macs"] > 0
    code, out = run("eval", "recon", out_dir, "--level", "3", images_dir / "content/in2.jpg", "--json", tmp_path / "r.json")
    assert code == 0 and "34.15" in out, out
    assert json.loads((tmp_path / "r.json").read_text())[0]["ssim"] > 0.9
    code, out = run("convert", "--from", "cd-release", cd16x_dir, "--out", out_dir)
    assert_one_line_error(code, out, "already exists")


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    assert_one_line_error(*run("inspect", tmp_path / "nope"), "no such model directory")
    assert_one_line_error(*run("convert", "--from", "cd-release", tmp_path, "--out", tmp_path / "o"), "missing release file")
    assert_one_line_error(*run("convert", "--from", "torchvision", tmp_path / "x.pth", "--out", tmp_path / "o"), "no such file")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert_one_line_error(*run("eval", "recon", "vgg19-x0.25", "--level", "2", bad), "cannot decode image")
    assert_one_line_error(*run("convert", "--from", "cd-release", tmp_path, "--out", tmp_path / "o", "--levels", "7"),
                          "--levels")


@pytest.mark.parametrize("payload", ["code", "truncated"])
def test_cli_refuses_bad_checkpoints(tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "ran"
    src = tmp_path / "vgg19.pth"
    if payload == "code":
        class Evil:
            def __reduce__(self):
                return (Path.touch, (marker,))
        torch.save({"features.0.weight": Evil()}, src)
    else:
        torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, src)
        src.write_bytes(src.read_bytes()[:300])
    code, out = run("convert", "--from", "torchvision", src, "--out", tmp_path / "o")
    assert_one_line_error(code, out, "refused" if payload == "code" else "truncated")
    assert not marker.exists() and not (tmp_path / "o").exists()


_TORCH_PROBE = """
import sys
from cdcompress.cli import main
try:
    main(sys.argv[1:], prog_name="cdcompress")
except SystemExit:
    pass
print("TORCH_LOADED", "torch" in sys.modules)
"""


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["recipes"], ["recipes", "show", "wct_vgg19"],
                                  ["recipes", "show", "unet_denoise"], ["weights", "--help"], ["stylize", "--help"],
                                  ["export", "--help"], ["distill", "--help"], ["eval", "--help"], ["eval", "cost", "--help"],
                                  ["inspect", "--help"], ["convert", "--help"], ["stylize", "--content", "x.png"],
                                  ["distill", "--recipe", "no-such-recipe"]])
def test_help_listing_and_argument_errors_do_not_load_torch(args: list[str]) -> None:
    """Commands that compute nothing answer without importing torch (it takes seconds to load)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _TORCH_PROBE, *args], capture_output=True, text=True, timeout=120)
    assert "TORCH_LOADED False" in proc.stdout, (proc.stdout[-2000:], proc.stderr[-2000:])


def test_registries_declare_exactly_their_built_ins() -> None:
    """A recipe naming a built-in plug-in validates without imports, trusting ``provides``: it must be true, and the
    module that looks each axis up must have imported its built-ins (checked in a fresh interpreter per axis)."""
    from cdcompress.core import registry

    lookups = {"ARCHITECTURES": "cdcompress.models.pair", "IMPORTANCES": "cdcompress.surgery.slim",
               "OBJECTIVES": "cdcompress.distill.distiller", "TEACHER_SOURCES": "cdcompress.distill.teachers",
               "DATA_SOURCES": "cdcompress.distill.run"}
    for axis, module in lookups.items():
        probe = (f"import {module}\nfrom cdcompress.core.registry import {axis} as axis\n"
                 "built_in = {n for n in axis.names() if getattr(axis.get(n), '__module__', '').startswith('cdcompress.')}\n"
                 "assert axis.provides == built_in, (sorted(axis.provides), sorted(built_in))")
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (axis, proc.stderr[-1500:])
    with pytest.raises(registry.RegistryError, match="unknown objective 'reconstructoin'.*did you mean 'reconstruction'"):
        registry.OBJECTIVES.check("reconstructoin")


def test_command_table_matches_the_commands() -> None:
    """`cdcompress --help` lists commands from a table so their modules need not load; it must say what they say."""
    import click

    from cdcompress.cli.main import COMMANDS

    ctx = click.Context(main)
    for name, (_, _, short_help) in COMMANDS.items():
        assert main.get_command(ctx, name).get_short_help_str(limit=200) == short_help, name
    assert set(main.commands) == set(COMMANDS)


def test_stylize_is_the_function_and_stylization_the_package() -> None:
    """``cdcompress.stylize`` is one thing, the function, however the subpackage was reached first."""
    import types

    import cdcompress
    import cdcompress.stylization.pipeline as pipeline

    assert cdcompress.stylize is pipeline.stylize and isinstance(cdcompress.stylization, types.ModuleType)
    assert not callable(cdcompress.stylization)
    from cdcompress.models import student_architecture

    image = torch.rand(1, 3, 32, 32)
    result = cdcompress.stylize(student_architecture(0.25, levels=(1,)), image, image, levels=[1], tile=0)
    assert result.shape == image.shape
