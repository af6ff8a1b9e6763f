"""The README's own-pair example runs exactly as printed (copy-paste), and matches examples/own_pair.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_own_pair_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Your own encoder–decoder pair"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README lost its own-pair example"
    return match.group(1)


def test_readme_example_is_the_example_script() -> None:
    assert readme_own_pair_block() == (ROOT / "examples" / "own_pair.py").read_text()


@pytest.mark.slow
def test_readme_own_pair_example_runs(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(readme_own_pair_block())
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    psnr = float(re.search(r"student PSNR on the training photo: ([\d.]+)", done.stdout).group(1))
    assert psnr > 20, done.stdout[-2000:]  # a trained student, not noise
    assert (tmp_path / "out/student/model.json").is_file() and (tmp_path / "out/bundle/manifest.json").is_file()
    assert "decoder.head | 3 | 3 | protected" in done.stdout
