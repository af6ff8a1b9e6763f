"""benchmarks/drop_in_wct.py --student: a cdcompress drop-in model directory measured exactly like the released SE3.

The student here IS the released SE3 with its conv31_aux, saved as a cdcompress drop-in model directory beside a run
config: its row must equal the SE3 row image for image (same images, resize, crop, decoder and PSNR code).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_benchmarks import run_benchmark

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
RELEASE, WCT, STYLE = SHARED / "reference" / "cd16x", SHARED / "reference" / "wct-vgg19", SHARED / "images" / "style"
NEEDS_SHARED = pytest.mark.skipif(not (RELEASE / "se3.pth").is_file() or not (WCT / "feature_invertor_conv3_1.pth").is_file()
                                  or not STYLE.is_dir(), reason="../shared reference weights/images not available")
SE3_ROW = "drop-in SE3 (+conv31_aux) -> teacher's decoder"


def _bench():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import drop_in_wct
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    return drop_in_wct


def test_differences_are_dotted_yaml_overrides() -> None:
    bench = _bench()
    base = {"levels": [1, 2, 3], "student": {"drop_in": "off", "width": 0.25}, "stages": {"distill": {"steps": 300}}}
    run = {"levels": [3], "student": {"drop_in": "auto", "width": 0.25}, "stages": {"distill": {"steps": 1200}}}
    assert bench._differences(base, run) == [("levels", "[3]"), ("student.drop_in", "auto"),
                                             ("stages.distill.steps", "1200")]


def test_without_student_the_options_are_unchanged() -> None:
    args = _bench().parse_args([])
    assert args.student == [] and args.docs is None


@NEEDS_SHARED
def test_student_row_equals_se3_row_for_se3_itself(tmp_path: Path) -> None:
    from cdcompress.distill.recipe import load_recipe, to_yaml
    from cdcompress.models import CDModel, convert_cd_release, save
    from cdcompress.models.converters import convert_wct_pytorch
    from cdcompress.surgery.drop_in import drop_in

    released = convert_cd_release(RELEASE, levels=(3,)).eval()
    student = drop_in(released.encoder(3), {"output": released.branches[3]["relu3_1"]}, torch.rand(1, 3, 64, 64),
                      "appended")
    teacher = convert_wct_pytorch(WCT).eval()
    run = tmp_path / "run"
    save(CDModel(encoders={3: student}, decoders={3: teacher.decoder(3)}), run / "drop_in")
    (run / "config.yaml").write_text(to_yaml(load_recipe("wct_vgg19_cpu", ["levels=[3]", "student.drop_in=auto"])))
    docs = tmp_path / "drop_in.md"
    docs.write_text("# Drop-in\n\nintro\n\n## Benchmark: old\n\nold table\n")

    out = run_benchmark("drop_in_wct.py", "--max-side", "128", "--resize", "torch-antialias", "--student",
                        run / "drop_in", "--docs", docs)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[3].split() for line in out.splitlines()
            if line.startswith("| ") and " | torch-antialias | " in line}
    ours = "our drop-in student (cdcompress, 300 steps) -> teacher's decoder"
    assert list(rows) == ["teacher (VGG-19 -> its decoder)", SE3_ROW, ours, "released pair (SE3 -> SD3)"], rows
    assert rows[ours] == rows[SE3_ROW] and len(rows[ours]) == 4
    text = docs.read_text()
    assert text.startswith("# Drop-in\n\nintro") and "old table" not in text
    assert "### Our distilled level-3 student as a drop-in" in text and "equal to the teacher's decoder" in text
    assert f"--recipe wct_vgg19_cpu --set 'levels=[3]' --set student.drop_in=auto --out {run}" in text
    assert "| 35,164 | 51,804 |" in text  # SE3 and the student alike: plain encoder, then with Q (64 -> 256)
