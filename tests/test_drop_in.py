"""The drop-in student: Q kept after stage 2 so the teacher's own decoder reads the student unchanged."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo import GNUNetDecoder, GNUNetEncoder, TokenDecoder, TokenEncoder, conv_gn

import cdcompress
from cdcompress.evaluation.metrics import psnr
from cdcompress.models.vgg import VGGDecoder, VGGEncoder, VGGSpec
from cdcompress.surgery.drop_in import DropInEncoder, drop_in, producing_layers
from cdcompress.surgery.embed import flatten_outputs


class LatentEncoder(nn.Module):
    """A U-Net/VAE-style encoder ending in a latent conv: nothing non-linear after its last layer."""

    def __init__(self, width: int = 16, latent: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_gn(3, width), conv_gn(width, 2 * width, stride=2))
        self.latent = nn.Conv2d(2 * width, latent, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.latent(self.body(x))


class LatentDecoder(nn.Module):
    def __init__(self, width: int = 16, latent: int = 8) -> None:
        super().__init__()
        self.inp = nn.Conv2d(latent, 2 * width, 3, padding=1)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.body = conv_gn(width, width)
        self.head = nn.Conv2d(width, 3, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.up(F.silu(self.inp(z)))))


class SharedConvEncoder(nn.Module):
    """Returns a conv's output that ALSO feeds the next layer: folding Q into it would change the second output."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.second = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.first(x)
        return s, self.second(s)


def vgg_pair(level: int = 2) -> tuple[VGGEncoder, VGGDecoder]:
    torch.manual_seed(0)
    spec = VGGSpec(level, (8, 8, 16)[: level + 1] if level == 2 else (8,))
    return VGGEncoder(spec).eval(), VGGDecoder(spec).eval()


def images(count: int = 16, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random images (low-frequency noise upsampled): learnable, unlike white noise."""
    coarse = torch.rand(count, 3, size // 8, size // 8, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def max_gap(a: object, b: object) -> float:
    fa, fb = flatten_outputs(a), flatten_outputs(b)
    assert fa.keys() == fb.keys()
    return max(float((fa[k] - fb[k]).abs().max()) for k in fa)


def agree(first: nn.Module, second: nn.Module, x: torch.Tensor) -> float:
    """Largest output gap relative to the output's scale."""
    with torch.no_grad():
        out = second(x)
        gap = max_gap(first(x), out)
    return gap / max(float(t.abs().max()) for t in flatten_outputs(out).values())


def forms(d: cdcompress.Distiller, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """The folded and appended drop-in students built in ``dtype`` (float64: the folded weights carry no rounding)."""
    student = copy.deepcopy(d.student).to(dtype)
    embedding = {name: copy.deepcopy(q).to(dtype) for name, q in d.output_embedding().items()}
    x = torch.rand(d.example_shape, dtype=dtype)
    return drop_in(student, embedding, x, "folded"), drop_in(student, embedding, x, "appended")


def test_vgg_student_keeps_q_appended_after_relu() -> None:
    encoder, decoder = vgg_pair()
    d = cdcompress.apply(encoder, decoder, slim=0.5)
    x = images(2)
    auto, appended = d.drop_in_encoder("auto"), d.drop_in_encoder("appended")
    assert isinstance(auto, DropInEncoder) and isinstance(auto.student, VGGEncoder)  # relu2_1 is last: nothing folds
    with torch.no_grad():
        trained_view = d.embedded_features(x)[1]  # exactly what the collaborator read in stage 2
        out = appended(x)
    assert out.shape == encoder(x).shape and torch.equal(out, trained_view)
    assert agree(auto, appended, x) == 0.0
    with pytest.raises(cdcompress.CDCompressError, match="cannot be folded exactly"):
        d.drop_in_encoder("folded")


@pytest.mark.parametrize("pair", ["latent-conv", "tokens-linear"])
def test_folded_and_appended_agree(pair: str) -> None:
    torch.manual_seed(0)
    encoder, decoder = (LatentEncoder(), LatentDecoder()) if pair == "latent-conv" else (TokenEncoder(), TokenDecoder())
    d = cdcompress.apply(encoder, decoder, slim=0.5, example_inputs=(torch.rand(1, 3, 32, 32),))
    folded, appended = d.drop_in_encoder("folded"), d.drop_in_encoder("appended")
    assert not isinstance(folded, DropInEncoder) and type(folded) is type(encoder)  # a plain student, teacher-wide output
    last = folded.latent if pair == "latent-conv" else folded.fc2
    teacher_last = encoder.latent if pair == "latent-conv" else encoder.fc2
    assert last.weight.shape[0] == teacher_last.weight.shape[0]
    gap32 = agree(folded, appended, images(2))
    gap64 = agree(*forms(d, torch.float64), images(2).double())
    # float64: the same function up to summation order (~1e-16 relative); float32: the folded weights are rounded
    # once to float32 (~6e-8 relative each, summed over a few hundred products), far below 1e-5.
    assert gap64 < 1e-12 and gap32 < 1e-5, (gap64, gap32)


def test_only_exact_folds_are_made() -> None:
    """A conv whose output is returned AND feeds the next layer keeps Q appended; the last conv folds."""
    torch.manual_seed(0)
    student = SharedConvEncoder()
    x = torch.rand(1, 3, 16, 16)
    assert producing_layers(student, x) == {"output_0": "first", "output_1": "second"}
    embedding = {"output_0": nn.Conv2d(8, 12, 1), "output_1": nn.Conv2d(8, 12, 1)}
    auto = drop_in(student, embedding, x, "auto")
    assert isinstance(auto, DropInEncoder) and list(auto.embedding) == ["output_0"]
    assert agree(auto, drop_in(student, embedding, x, "appended"), x) < 1e-5
    with pytest.raises(cdcompress.CDCompressError, match=r"output\(s\) \['output_0'\]"):
        drop_in(student, embedding, x, "folded")
    with pytest.raises(cdcompress.CDCompressError, match=r"no embedding branch for output\(s\) \['output_1'\]"):
        drop_in(student, {"output_0": embedding["output_0"]}, x)
    with pytest.raises(cdcompress.CDCompressError, match="form 'sideways'"):
        drop_in(student, embedding, x, "sideways")  # type: ignore[arg-type]


def test_in_place_activation_after_conv_is_not_folded() -> None:
    """An in-place ReLU returns the conv's own tensor object: the version counter shows it was changed."""
    student = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True))
    assert producing_layers(student, torch.rand(1, 3, 8, 8)) == {"output": "1"}
    student = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    assert producing_layers(student, torch.rand(1, 3, 8, 8)) == {"output": "0"}


def test_teacher_decoder_reads_drop_in_student() -> None:
    """After a short real distillation the teacher's own decoder reads the drop-in student as well as the
    collaborator read Q·F' in training (it IS that computation); the raw student does not even fit its input."""
    torch.manual_seed(0)
    encoder, decoder = LatentEncoder(), LatentDecoder()
    train = images(32)
    teacher_out = decoder(encoder(train[:1]))
    assert teacher_out.shape == train[:1].shape
    fit_decoder(encoder, decoder, train)
    d = cdcompress.apply(encoder, decoder, slim=0.5, example_inputs=(train[:1],))
    held_out = images(8, seed=1)
    with torch.no_grad():
        before = psnr(decoder(d.drop_in_encoder()(held_out)).clamp(0, 1), held_out)
    d.fit([train[i:i + 8] for i in range(0, 32, 8)] * 20, cdcompress.TrainConfig(steps=80, lr=3e-3, log_every=80))
    with torch.no_grad():
        collab = psnr(d.predict(held_out).clamp(0, 1), held_out)
        drop = {form: psnr(decoder(d.drop_in_encoder(form)(held_out)).clamp(0, 1), held_out)
                for form in ("folded", "appended")}
        teacher = psnr(decoder(encoder(held_out)).clamp(0, 1), held_out)
        with pytest.raises(RuntimeError):
            decoder(d.deployable()(held_out))  # C'=2 latent channels: the teacher's decoder wants 8
    assert abs(drop["folded"] - collab) < 1e-3 and abs(drop["appended"] - collab) < 1e-3, (drop, collab)
    print(f"teacher {teacher:.2f} dB, drop-in {drop}, collaborator with Q {collab:.2f}, before stage 2 {before:.2f}")
    assert collab > before + 5 and collab > teacher - 6, (collab, teacher, before)


def fit_decoder(encoder: nn.Module, decoder: nn.Module, data: torch.Tensor, steps: int = 150) -> None:
    """A teacher pair that reconstructs (a collaborator must be a trained decoder)."""
    optimiser = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=3e-3)
    for step in range(steps):
        batch = data[(step * 8) % 32:(step * 8) % 32 + 8]
        loss = F.mse_loss(decoder(encoder(batch)), batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    encoder.eval()
    decoder.eval()


def test_vgg_drop_in_round_trips(tmp_path: Path) -> None:
    encoder, decoder = vgg_pair()
    d = cdcompress.apply(encoder, decoder, slim=0.5)
    path = d.save_drop_in(tmp_path / "drop_in")
    spec = json.loads((path / "model.json").read_text())
    assert {p["role"] for p in spec["parts"]} == {"encoder", "decoder", "embedding"}
    model = cdcompress.load(path)
    x = images(2)
    with torch.no_grad():
        assert torch.equal(model.encoder(2)(x), d.drop_in_encoder()(x))
        features = encoder(x)
        assert torch.equal(model.decoder(2)(features), decoder(features))  # the teacher's decoder, unslimmed
    exported = cdcompress.export.export_bundle(model, tmp_path / "bundle", echo=lambda _: None, progress=False)
    assert exported.rows and all(r.ok and r.error <= 1e-4 for r in exported.rows)
    graphs = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["parts"]
    assert graphs["enc2"]["channels"] == graphs["dec2"]["channels"] == 16  # the teacher's width between the graphs
    assert graphs["enc2"]["spec"]["widths"] == [4, 4, 8]  # the student inside: its halos, its cost
    # Stylizing reads the teacher-width features; exact tiles (halos from the student inside) match untiled.
    content, style = images(1, 64, seed=1), images(1, 64, seed=2)
    untiled = cdcompress.stylize(model, content, style, levels=[2], tile=0)
    tiled = cdcompress.stylize(model, content, style, levels=[2], tile=32, cache_features=True)
    assert untiled.shape == content.shape and torch.allclose(tiled, untiled, atol=1e-5)


@pytest.mark.parametrize("pair", ["latent-conv", "gn-unet-tuple"])
def test_module_drop_in_round_trips(pair: str, tmp_path: Path) -> None:
    """Folded (plain module, teacher-wide last layer) and appended (1x1 maps rebuilt from the spec) both reload."""
    torch.manual_seed(0)
    make_enc, make_dec = (LatentEncoder, LatentDecoder) if pair == "latent-conv" else (GNUNetEncoder, GNUNetDecoder)
    encoder, decoder = make_enc(), make_dec()
    d = cdcompress.apply(encoder, decoder, slim=0.5, example_inputs=(torch.rand(1, 3, 32, 32),))
    path = d.save_drop_in(tmp_path / "drop_in")
    spec = json.loads((path / "model.json").read_text())
    assert spec["architecture"]["teacher_decoder"] is True
    assert ("embedding" in {p["role"] for p in spec["parts"]}) == (pair == "gn-unet-tuple")
    model = cdcompress.load(path, encoder=make_enc, decoder=make_dec)
    x = images(2)
    with torch.no_grad():
        want = d.drop_in_encoder()(x)
        assert max_gap(model.encoder()(x), want) == 0.0
        assert torch.equal(model.decoder()(want), decoder(want))
    # The bundle: the student's graph emits the teacher's features, the ORIGINAL decoder's graph reads them.
    exported = cdcompress.export.export_bundle(model, tmp_path / "bundle", echo=lambda _: None, progress=False)
    assert exported.rows and all(r.ok and r.error <= 1e-4 for r in exported.rows)
    from cdcompress.export.pair import PairRunner

    image = images(1, 48, seed=5)
    with torch.no_grad():
        want = decoder(d.drop_in_encoder()(image))
    assert torch.allclose(PairRunner(tmp_path / "bundle")(image), want, atol=1e-4)


def test_recipe_saves_drop_in_beside_student(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from test_recipes import VALID

    from cdcompress.cli import main
    from cdcompress.distill.recipe import RecipeError, load_recipe

    path = tmp_path / "tiny.yaml"
    path.write_text(VALID.replace("student: {width: 0.5}", "student: {width: 0.5, drop_in: auto}"))
    assert load_recipe(path, ["student.drop_in=off"]).student.drop_in == "off"  # YAML's bare off is not False
    with pytest.raises(RecipeError, match="student.drop_in"):
        load_recipe(path, ["student.drop_in=sideways"])
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["distill", "--recipe", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    student, drop = cdcompress.load(out / "student"), cdcompress.load(out / "drop_in")
    assert isinstance(drop.encoder(1), DropInEncoder) and drop.encoder(1).student.spec == student.encoder(1).spec
    x = images(1)
    with torch.no_grad():
        narrow = student.encoder(1)(x)
        wide = drop.encoder(1)(x)
        (q,) = drop.encoder(1).embedding.values()
        assert narrow.shape[1] == 32 and wide.shape[1] == 64 and torch.equal(wide, q(narrow))
        assert any(torch.equal(wide, b(narrow)) for b in student.branches[1].values())  # the Q stage 2 trained
        assert drop.decoder(1)(wide).shape == x.shape  # the collaborator, which read Q·F' in stage 2


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
RELEASE, WCT, STYLE = SHARED / "reference" / "cd16x", SHARED / "reference" / "wct-vgg19", SHARED / "images" / "style"


@pytest.mark.skipif(not (RELEASE / "se3.pth").is_file() or not (WCT / "feature_invertor_conv3_1.pth").is_file()
                    or not STYLE.is_dir(), reason="../shared reference weights/images not available")
def test_released_se3_is_a_drop_in_for_the_wct_decoder(tmp_path: Path) -> None:
    """The benchmark on small images: SE3 + its conv31_aux read by the teacher's decoder, far above chance."""
    from test_benchmarks import run_benchmark

    docs = tmp_path / "drop_in.md"
    docs.write_text("# Drop-in\n\nintro\n\n## Benchmark: old\n\nold table\n")
    out = run_benchmark("drop_in_wct.py", "--max-side", "256", "--resize", "torch-antialias", "--docs", docs)
    rows = {line.split(" | ")[0].strip("| "): float(line.split(" | ")[2]) for line in out.splitlines()
            if line.startswith("| ") and "PSNR" not in line}
    teacher, drop = rows["teacher (VGG-19 -> its decoder)"], rows["drop-in SE3 (+conv31_aux) -> teacher's decoder"]
    assert 20 < drop < teacher, rows
    text = docs.read_text()
    assert text.startswith("# Drop-in\n\nintro") and "old table" not in text and "--max-side 256" in text


# ----------------------------------------------------------------------------- latent interface


def test_latent_interface_keeps_the_output_width_with_a_frozen_identity() -> None:
    """Slimming(latent=True): the latent conv keeps the teacher's 8 channels, its branch is the identity and stays
    so through training, and the teacher's decoder reads the plain student exactly as the collaborator did."""
    torch.manual_seed(0)
    encoder, decoder = LatentEncoder(), LatentDecoder()
    train = images(32)
    fit_decoder(encoder, decoder, train)
    d = cdcompress.apply(encoder, decoder, slim=cdcompress.Slimming(width=0.5, latent=True), example_inputs=(train[:1],))
    assert d.slimmed.widths()["encoder.latent"] == 8 and d.slimmed.widths()["encoder.body.0.0"] == 8
    assert "encoder.latent" in d.slimmed.protected
    branch = d.output_embedding()["output"]
    assert not branch.weight.requires_grad
    held_out = images(8, seed=1)
    with torch.no_grad():
        before = psnr(decoder(copy.deepcopy(d.student)(held_out)).clamp(0, 1), held_out)
    d.fit([train[i:i + 8] for i in range(0, 32, 8)] * 10, cdcompress.TrainConfig(steps=40, lr=3e-3, log_every=40))
    assert torch.equal(branch.weight[:, :, 0, 0], torch.eye(8)) and torch.equal(branch.bias, torch.zeros(8))
    student = d.drop_in_encoder()
    assert not isinstance(student, DropInEncoder)  # nothing appended: the student itself speaks the teacher's latent
    with torch.no_grad():
        assert max_gap(decoder(student(held_out)), d.predict(held_out)) < 1e-5
        after = psnr(decoder(student(held_out)).clamp(0, 1), held_out)
    assert after > before, (before, after)


def test_latent_interface_refuses_an_output_it_cannot_keep() -> None:
    from cdcompress.core.errors import CDCompressError

    class Pooled(nn.Module):  # the output is a pooled, concatenated mix: no single layer produces it
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.a(x), self.b(x)], 1)

    class Dec(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Conv2d(16, 3, 1)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.head(z)

    with pytest.raises(CDCompressError, match="latent interface"):
        cdcompress.apply(Pooled(), Dec(), slim=cdcompress.Slimming(width=0.5, latent=True))
