"""A fuzz campaign over every file cdcompress reads from users: seeded mutations of valid inputs.

Each kind builds a valid input once (a tiny model directory, an exported bundle, the bundled recipes,
a corpus of images), then makes ``n`` mutated copies from one seed and feeds each to the loader the
user would reach. A case passes when it ends in either a one-line :class:`CDCompressError` (with nothing
written where the output would go) or a correct result; anything else (another exception type, a
multi-line message, a traceback from the CLI, a wrong picture) is a failure with a one-line reason.

Used by ``tests/test_fuzz.py`` (small ``n``) and ``benchmarks/fuzz_inputs.py`` (the counts table).
"""

from __future__ import annotations

import copy
import io
import json
import math
import random
import shutil
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from cdcompress.core.errors import CDCompressError

KINDS = ("model-json", "safetensors", "shapes", "bundle-manifest", "onnx-graph", "recipe", "image", "image-cli")
#: Values a mutation puts where a field was: wrong types, out-of-range numbers, hostile strings.
ODD_VALUES: tuple[Any, ...] = (None, True, False, 0, -1, 1, 7, 2**31, 2**40, -(2**63), 0.5, -0.0, 1e308, math.nan,
                               math.inf, "", "x", "../../../etc/passwd", "/dev/zero", "{name}{", "é\u202e", "1e-3",
                               [], [1], [1, 2, 3], ["a"], [[1]], {}, {"a": 1}, {"level": 1})

#: Longest acceptable error line: a message is read by a person (it names the problem, not the whole input).
MAX_MESSAGE = 1000


@dataclass
class Outcome:
    """How one case ended: ``error`` (a clean one-line refusal), ``correct`` or ``failure``."""

    kind: str
    case: str
    status: str
    detail: str = ""


@dataclass
class Counts:
    kind: str
    cases: int = 0
    errors: int = 0
    correct: int = 0
    failures: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.cases += 1
        if outcome.status == "error":
            self.errors += 1
        elif outcome.status == "correct":
            self.correct += 1
        else:
            self.failures.append(outcome)


# ----------------------------------------------------------------------------- oracle


def judge(kind: str, case: str, action: Callable[[], Any], check: Callable[[Any], str | None],
          out: Path | None = None) -> Outcome:
    """Run ``action``; a result must pass ``check`` (None = correct), an error must be one clean line."""
    try:
        result = action()
    except CDCompressError as exc:
        message = str(exc)
        if "\n" in message or not message or len(message) > MAX_MESSAGE:
            return Outcome(kind, case, "failure", f"multi-line, empty or {len(message)}-char message: {message!r}"[:300])
        if out is not None and out.exists():
            return Outcome(kind, case, "failure", f"{out} written although the case failed: {message}"[:300])
        return Outcome(kind, case, "error", message[:300])
    except Exception as exc:  # noqa: BLE001  (any other type is what the campaign looks for)
        return Outcome(kind, case, "failure", f"{type(exc).__name__}: {str(exc)[:200]}")
    problem = _checked(check)(result)
    return Outcome(kind, case, "correct" if problem is None else "failure", problem or "")


def judge_cli(kind: str, case: str, args: list[str], check: Callable[[], str | None], out: Path | None) -> Outcome:
    """A CLI run must exit 0 and pass ``check``, or exit 2 ending in its one ``error:`` line (after any progress
    lines), with no traceback and no output file."""
    from cdcompress.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    if result.exit_code == 0:
        problem = _checked(lambda _: check())(None)
        return Outcome(kind, case, "correct" if problem is None else "failure", problem or "")
    errors = [line for line in lines if line.startswith("error:")]
    # Progress lines the command printed before the failure (e.g. stylize's plan) may precede the one error line.
    clean = (result.exit_code == 2 and len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in result.output
             and isinstance(result.exception, SystemExit | None))
    if not clean or len(result.output) > MAX_MESSAGE:
        return Outcome(kind, case, "failure", f"exit {result.exit_code}: {result.output.strip()[-200:]!r} "
                                              f"{type(result.exception).__name__}")
    if out is not None and out.exists():
        return Outcome(kind, case, "failure", f"{out} written although the run failed")
    return Outcome(kind, case, "error", errors[0][:300])


# ----------------------------------------------------------------------------- generic mutations


def _paths(node: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


def _parent(doc: Any, path: tuple) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


def mutate_tree(doc: Any, rng: random.Random, values: tuple[Any, ...] = ODD_VALUES) -> tuple[Any, str]:
    """One random edit of a JSON/YAML document: replace, delete, add a key, or retype a value."""
    doc = copy.deepcopy(doc)
    path = rng.choice([p for p in _paths(doc) if p])
    parent, key = _parent(doc, path), path[-1]
    op = rng.choice(("replace", "replace", "delete", "add", "retype"))
    where = ".".join(map(str, path))
    if op == "delete":
        del parent[key]
        return doc, f"delete {where}"
    if op == "add" and isinstance(parent[key], dict):
        parent[key][rng.choice(("bogus", "extra", "level", "file", "__class__"))] = rng.choice(values)
        return doc, f"add key under {where}"
    if op == "retype":
        old = parent[key]
        parent[key] = str(old) if not isinstance(old, str) else [old]
        return doc, f"retype {where}"
    value = rng.choice(values)
    if isinstance(parent[key], int | float) and not isinstance(parent[key], bool) and rng.random() < 0.5:
        value = rng.choice((parent[key] + 1, parent[key] - 1, -parent[key], parent[key] * 1000, 0))
    parent[key] = copy.deepcopy(value)
    return doc, f"set {where}={value!r}"[:120]


def mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Truncate, flip bytes, splice garbage in or empty the data."""
    op = rng.choice(("truncate", "truncate", "flip", "flip", "insert", "append", "empty"))
    if op == "empty" or not data:
        return b"", "empty"
    if op == "truncate":
        cut = rng.randrange(len(data))
        return data[:cut], f"truncate at {cut}/{len(data)}"
    buf = bytearray(data)
    if op == "flip":
        count = rng.choice((1, 2, 8, 64))
        for _ in range(count):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        return bytes(buf), f"flip {count} bytes"
    junk = bytes(rng.randrange(256) for _ in range(rng.choice((1, 16, 300))))
    if op == "append":
        return data + junk, f"append {len(junk)} bytes"
    at = rng.randrange(len(data))
    return bytes(buf[:at]) + junk + bytes(buf[at:]), f"insert {len(junk)} bytes at {at}"


# ----------------------------------------------------------------------------- model directories


def tiny_model_dir(folder: Path) -> Path:
    """A 1/16-width VGG student, levels 1 and 2 (widths 4, 4, 8): a few kB of safetensors."""
    from cdcompress.models import save
    from cdcompress.models.converters import student_architecture

    torch.manual_seed(0)
    return save(student_architecture(1 / 16, levels=(1, 2)), folder / "tiny-model")


def _reconstructs(model: Any) -> str | None:
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        for level in model.levels:
            y = model.decoder(level)(model.encoder(level)(x))
            if tuple(y.shape) != (1, 3, 8, 8) or not bool(y.isfinite().all()):
                return f"level {level} reconstructs to {tuple(y.shape)} (finite: {bool(y.isfinite().all())})"
    return None


def _load_model(path: Path) -> Any:
    from cdcompress.models import load

    return load(path)


def _copy(base: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    return Path(shutil.copytree(base, dest))


def _rehash(folder: Path, manifest: str, listing: Callable[[dict], dict[str, dict]], name: str) -> None:
    """Record the new checksum of ``name`` so that loading reaches the parser, not the checksum check."""
    from cdcompress.core.digest import sha256_file

    doc = json.loads((folder / manifest).read_text())
    for entry_name, entry in listing(doc).items():
        if entry_name == name:
            entry["sha256"] = sha256_file(folder / name)
    (folder / manifest).write_text(json.dumps(doc))


def _model_parts(doc: dict) -> dict[str, dict]:
    return {p["file"]: p for p in doc["parts"]}


def model_json_cases(base: Path, work: Path, n: int, seed: int) -> Iterator[Outcome]:
    rng = random.Random(seed)
    for i in range(n):
        folder = _copy(base, work / "model")
        spec_file = folder / "model.json"
        if rng.random() < 0.2:
            data, what = mutate_bytes(spec_file.read_bytes(), rng)
            if rng.random() < 0.3:
                data, what = b"[" * 100_000, "100000 nested lists"
            spec_file.write_bytes(data)
        elif rng.random() < 0.1:
            doc, what = _inflate_widths(json.loads(spec_file.read_text()), rng)
            spec_file.write_text(json.dumps(doc))
        else:
            doc, what = mutate_tree(json.loads(spec_file.read_text()), rng)
            spec_file.write_text(json.dumps(doc))
        yield judge("model-json", f"{i}: {what}", lambda f=folder: _load_model(f), _reconstructs)


def _inflate_widths(doc: dict, rng: random.Random) -> tuple[dict, str]:
    """Every width of one part multiplied: a spec asking the loader to allocate far more than the file holds."""
    part = rng.choice([p for p in doc["parts"] if "spec" in p])
    factor = rng.choice((2, 64, 4096, 2**20))
    part["spec"]["widths"] = [w * factor for w in part["spec"]["widths"]]
    return doc, f"widths of {part['file']} x{factor}"


def _safetensors_header(data: bytes) -> tuple[dict, bytes]:
    length = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _with_header(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def mutate_safetensors(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Header-aware edits (length field, JSON header fields, offsets) or plain byte damage."""
    header, body = _safetensors_header(data)
    op = rng.choice(("length", "header", "header", "offsets", "bytes"))
    if op == "length":
        value = rng.choice((0, 1, len(data), 2**32, 2**63, 2**64 - 1, 100 * 2**20))
        return struct.pack("<Q", value) + data[8:], f"header length {value}"
    if op == "offsets":
        name = rng.choice([k for k in header if k != "__metadata__"])
        start, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = rng.choice(([end, start], [start, end + 4], [start, 2**62], [-1, end],
                                                   [start, start]))
        return _with_header(header, body), f"offsets of {name} -> {header[name]['data_offsets']}"
    if op == "header":
        mutated, what = mutate_tree(header, rng, (*ODD_VALUES, "F16", "BF16", "I64", "BOOL", "F8_E4M3", "C64",
                                                  [2**40, 2**40], [0], [-1, 3]))
        return _with_header(mutated, body), f"header: {what}"
    damaged, what = mutate_bytes(data, rng)
    return damaged, what


@dataclass(frozen=True)
class FileMutation:
    """One kind of campaign that damages a file of a copied folder: which files, how, and how it is judged.
    ``rehash`` is how often the checksum is fixed up, so the damage reaches the parser behind it."""

    kind: str
    folder: str
    pattern: str
    mutate: Callable[[bytes, random.Random], tuple[bytes, str]]
    index: str
    entries: Callable
    rehash: float
    run: Callable[[Path], Any]
    ok: Callable


def file_mutation_cases(spec: FileMutation, base: Path, work: Path, n: int, seed: int) -> Iterator[Outcome]:
    rng = random.Random(seed)
    files = sorted(p.name for p in base.glob(spec.pattern))
    for i in range(n):
        folder = _copy(base, work / spec.folder)
        name = rng.choice(files)
        data, what = spec.mutate((folder / name).read_bytes(), rng)
        (folder / name).write_bytes(data)
        if rng.random() < spec.rehash:
            _rehash(folder, spec.index, spec.entries, name)
        yield judge(spec.kind, f"{i}: {name} {what}", lambda f=folder: spec.run(f), spec.ok)


def safetensors_cases(base: Path, work: Path, n: int, seed: int) -> Iterator[Outcome]:
    spec = FileMutation("safetensors", "model", "*.safetensors", mutate_safetensors, "model.json", _model_parts,
                        0.85, _load_model, _reconstructs)
    return file_mutation_cases(spec, base, work, n, seed)


def shape_cases(base: Path, work: Path, n: int, seed: int) -> Iterator[Outcome]:
    """Well-formed weight files whose tensors do not fit the architecture (or fit it in another dtype)."""
    from safetensors.torch import load_file, save_file

    rng = random.Random(seed)
    files = sorted(p.name for p in base.glob("*.safetensors"))
    for i in range(n):
        folder = _copy(base, work / "model")
        name = rng.choice(files)
        state = load_file(str(folder / name))
        key = rng.choice(sorted(state))
        op = rng.choice(("grow", "shrink", "transpose", "flatten", "drop", "extra", "dtype", "scalar", "rename"))
        tensor = state[key]
        if op == "grow":
            state[key] = torch.zeros(*[d + rng.randint(0, 2) for d in tensor.shape], 1)
        elif op == "shrink" and tensor.numel() > 1:
            state[key] = tensor.reshape(-1)[: tensor.numel() // 2].clone()
        elif op == "transpose" and tensor.dim() >= 2:
            state[key] = tensor.transpose(0, 1).contiguous()
        elif op == "flatten":
            state[key] = tensor.reshape(-1).clone()
        elif op == "drop":
            del state[key]
        elif op == "extra":
            state[f"{key}.extra"] = torch.zeros(3)
        elif op == "dtype":
            state[key] = tensor.to(rng.choice((torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.bool)))
        elif op == "scalar":
            state[key] = torch.tensor(1.0)
        else:
            state[key + "_"] = state.pop(key)
        save_file(state, str(folder / name))
        _rehash(folder, "model.json", _model_parts, name)
        yield judge("shapes", f"{i}: {name} {op} {key}", lambda f=folder: _load_model(f), _reconstructs)


# ----------------------------------------------------------------------------- bundles


def tiny_bundle(model_dir: Path, folder: Path) -> Path:
    from cdcompress.export import export_bundle, load_profile

    return export_bundle(_load_model(model_dir), folder / "bundle", load_profile("onnx-dynamic"), [1, 2],
                         model_ref="tiny", model_dir=model_dir, echo=lambda _: None, progress=False).path


def _run_bundle(path: Path) -> Any:
    from cdcompress.export import OnnxBackend

    backend = OnnxBackend(path)
    x = torch.rand(1, 3, 8, 8)
    outputs = {}
    for level in backend.levels:
        backend.specs(level)
        outputs[level] = backend.decode(level, backend.encode(level, x))
    return outputs


def _bundle_ok(outputs: dict) -> str | None:
    for level, y in outputs.items():
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != (1, 3, 8, 8) or not bool(y.isfinite().all()):
            return f"level {level} gives {getattr(y, 'shape', y)}"
    return None


def _bundle_files(doc: dict) -> dict[str, dict]:
    return doc["files"]


def manifest_cases(base: Path, work: Path, n: int, seed: int) -> Iterator[Outcome]:
    rng = random.Random(seed)
    for i in range(n):
        folder = _copy(base, work / "bundle")
        manifest = folder / "manifest.json"
        if rng.random() < 0.15:
            data, what = mutate_bytes(manifest.read_bytes(), rng)
            manifest.write_bytes(data)
        else:
            doc, what = mutate_tree(json.loads(manifest.read_text()), rng,
                                    (*ODD_VALUES, "enc1.onnx", "../model/encoder1.safetensors", "/etc/hostname",
                                     "dynamic", [8, 8], [4, "w"]))
            manifest.write_text(json.dumps(doc))
        yield judge("bundle-manifest", f"{i}: {what}", lambda f=folder: _run_bundle(f), _bundle_ok)


def mutate_onnx(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Structural edits through the ONNX protobuf (shapes, nodes, initialisers, opset, external data) or byte damage."""
    import onnx

    if rng.random() < 0.3:
        return mutate_bytes(data, rng)
    model = onnx.load_from_string(data)
    graph = model.graph
    op = rng.choice(("input_dims", "drop_node", "initializer", "opset", "external", "rename_input", "op_type",
                     "output_dtype"))
    if op == "input_dims":
        dim = rng.choice(graph.input[0].type.tensor_type.shape.dim)
        dim.Clear()
        dim.dim_value = rng.choice((0, 1, 5, 2**31))
    elif op == "drop_node" and len(graph.node) > 1:
        del graph.node[rng.randrange(len(graph.node))]
    elif op == "initializer" and graph.initializer:
        init = rng.choice(graph.initializer)
        init.dims[:] = [rng.choice((1, 2, 3, 2**20)) for _ in init.dims] or [2]
    elif op == "opset":
        model.opset_import[0].version = rng.choice((1, 7, 99, 10**6))
    elif op == "external" and graph.initializer:
        init = rng.choice(graph.initializer)
        init.ClearField("raw_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", rng.choice(("../../etc/hostname", "/etc/hostname", "missing.bin"))),
                           ("length", "64")):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
    elif op == "rename_input":
        graph.input[0].name = "renamed"
    elif op == "op_type" and graph.node:
        rng.choice(graph.node).op_type = rng.choice(("NoSuchOp", "Conv", "Loop", "If"))
    else:
        graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.STRING
    return model.SerializeToString(), op


def onnx_cases(base: Path, work: Path, n: int, seed: int) -> Iterator[Outcome]:
    spec = FileMutation("onnx-graph", "bundle", "*.onnx", mutate_onnx, "manifest.json", _bundle_files, 0.9,
                        _run_bundle, _bundle_ok)
    return file_mutation_cases(spec, base, work, n, seed)


# ----------------------------------------------------------------------------- recipes

#: YAML that is not a recipe: alias bombs, tags, odd scalars.
YAML_GARBAGE = (
    "a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
    "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nname: *g\n",
    "!!python/object/apply:os.system ['echo pwned']\n",
    "name: !!python/name:os.system\n",
    "--- 1\n--- 2\n",
    "\t\tname: x\n",
    "name: [unclosed\n",
    "\x00\x01\x02",
    "\ufeffname: x\nlevels: [1]\n",
    "extends: extends\n",
    "extends: [wct_vgg19]\n",
    "extends: /etc/hostname\n",
)
_BOMB = ("teacher: {source: builtin, path: vgg19, kwargs: {a: &a [1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], "
         "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c], e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], "
         "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e], g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]}}\n")
#: Lines appended to a valid recipe (a later key replaces an earlier one): values only a whole-file view catches.
RECIPE_TAILS = (_BOMB + "name: *g\n", _BOMB + "levels: *g\n", _BOMB, "output: {dir: 'runs/{nme}'}\n",
                "output: {dir: '{name}{'}\n", "output: {dir: '{0}'}\n", "levels: [1, 1.5]\n", "seed: 1e400\n",
                "data: {train: [skimage], resize: 1e308, crop: 32}\n", "name: '" + "x" * 5000 + "'\n")
YAML_VALUES: tuple[Any, ...] = (*ODD_VALUES, "off", "yes", "1e3", "skimage", "auto", "cuda:99", "import", 10**30)


def _validate_recipe(path: Path) -> Any:
    from cdcompress.distill.recipe import check_paths, load_recipe

    recipe = load_recipe(path)
    check_paths(recipe, str(path))
    return recipe


def _recipe_ok(recipe: Any) -> str | None:
    """A recipe that validates must survive a round trip and name a usable output folder."""
    from cdcompress.distill.recipe import to_yaml, validate

    again = validate(yaml.safe_load(to_yaml(recipe)), "round-trip")
    if again != recipe:
        return "the resolved recipe does not validate to itself"
    Path(recipe.output.dir.format(name=recipe.name))  # what `distill` does with it
    return None


def recipe_cases(work: Path, n: int, seed: int) -> Iterator[Outcome]:
    from cdcompress.distill.recipe import bundled_recipes

    rng = random.Random(seed)
    recipes = bundled_recipes()
    names = sorted(recipes)
    for i in range(n):
        name = names[i % len(names)]
        text = recipes[name].read_text()
        roll = rng.random()
        if roll < 0.1:
            text, what = rng.choice(YAML_GARBAGE), "garbage"
        elif roll < 0.2:
            tail = rng.choice(RECIPE_TAILS)
            text, what = text + "\n" + tail, f"append {tail[:40]!r}"
        elif roll < 0.3:
            data, what = mutate_bytes(text.encode(), rng)
            text = data.decode("utf-8", "replace")
        else:
            doc, what = mutate_tree(yaml.safe_load(text), rng, YAML_VALUES)
            text = yaml.safe_dump(doc)
        path = work / "recipes" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        yield judge("recipe", f"{i}: {name} {what}"[:160], lambda p=path: _validate_recipe(p), _checked(_recipe_ok))


def _checked(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    """A check whose own exceptions are failures (the oracle must not crash on a strange result)."""
    def wrapped(result: Any) -> str | None:
        try:
            return check(result)
        except Exception as exc:  # noqa: BLE001
            return f"{type(exc).__name__} on a validated result: {str(exc)[:160]}"
    return wrapped


# ----------------------------------------------------------------------------- images

SIDE_W, SIDE_H = 40, 24


def _photo(w: int = SIDE_W, h: int = SIDE_H) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return (np.stack([x / max(1, w - 1), y / max(1, h - 1), 1 - x * y / max(1, w * h)], -1) * 255).round().astype(np.uint8)


def _encode(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@dataclass(frozen=True)
class Sample:
    """A valid (or deliberately unusable) image file and what loading it must give."""

    name: str
    data: bytes
    size: tuple[int, int] | None  # (height, width) upright; None: must be refused
    reference: np.ndarray | None = None  # expected HxWx3 in [0, 1] where exactly known
    tolerance: float = 0.0


def image_corpus() -> list[Sample]:
    """Every awkward kind the issue names, plus plain formats; references are computed independently."""
    rgb = Image.fromarray(_photo())
    photo = _photo().astype(np.float32) / 255
    samples = [Sample("rgb.png", _encode(rgb, "PNG"), (SIDE_H, SIDE_W), photo),
               Sample("rgb.jpg", _encode(rgb, "JPEG", quality=98), (SIDE_H, SIDE_W), photo, 0.03),
               Sample("rgb.bmp", _encode(rgb, "BMP"), (SIDE_H, SIDE_W), photo),
               Sample("rgb.tif", _encode(rgb, "TIFF"), (SIDE_H, SIDE_W), photo),
               Sample("cmyk.jpg", _encode(rgb.convert("CMYK"), "JPEG", quality=98), (SIDE_H, SIDE_W), photo, 0.04)]
    ramp = (np.arange(SIDE_H * SIDE_W, dtype=np.uint32).reshape(SIDE_H, SIDE_W) * 61 + 3).astype(np.uint16)
    samples.append(Sample("sixteen.png", _encode(Image.fromarray(ramp), "PNG"), (SIDE_H, SIDE_W),
                          np.repeat((ramp / 65535.0).astype(np.float32)[..., None], 3, 2), 1e-6))
    adaptive = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    indices = np.asarray(adaptive).copy()
    indices[:, : SIDE_W // 2] = 0  # index 0 is the transparent one: the whole left half and wherever else it is used
    palette = Image.fromarray(indices, "P")
    palette.putpalette(adaptive.getpalette())
    expected = np.asarray(palette.convert("RGB"), np.float32) / 255
    expected[indices == 0] = 1.0  # transparent -> composited on white
    samples.append(Sample("palette_transparent.png", _encode(palette, "PNG", transparency=0), (SIDE_H, SIDE_W), expected))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        upright = (SIDE_W, SIDE_H) if orientation in (5, 6, 7, 8) else (SIDE_H, SIDE_W)
        reference = np.asarray(_transpose(rgb, orientation), np.float32) / 255
        samples.append(Sample(f"exif{orientation}.png", _encode(rgb, "PNG", exif=exif.tobytes()), upright, reference))
        samples.append(Sample(f"exif{orientation}.jpg", _encode(rgb, "JPEG", quality=98, exif=exif.tobytes()), upright,
                              reference, 0.03))
    frames = [Image.fromarray(np.full((SIDE_H, SIDE_W, 3), v, np.uint8)) for v in (30, 200, 90)]
    first = np.full((SIDE_H, SIDE_W, 3), 30 / 255, np.float32)
    samples.append(Sample("animated.gif", _encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
                          (SIDE_H, SIDE_W), first, 1 / 255))
    samples.append(Sample("animated.webp", _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                                                   lossless=True), (SIDE_H, SIDE_W), first, 1 / 255))
    line = Image.fromarray(np.tile(_photo(100_000, 1), (1, 1, 1)))
    samples.append(Sample("line_1x100000.png", _encode(line, "PNG"), (1, 100_000), _photo(100_000, 1) / np.float32(255)))
    samples.append(Sample("gray_alpha.png", _encode(rgb.convert("LA"), "PNG"), (SIDE_H, SIDE_W)))
    samples += [Sample("empty.png", b"", None), Sample("not_an_image.jpg", b"name: a recipe\nlevels: [1]\n", None),
                Sample("eps.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", None),
                Sample("bomb.png", _png_header(40_000, 40_000), None)]
    return samples


def _transpose(img: Image.Image, orientation: int) -> Image.Image:
    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}.get(orientation)
    return img if method is None else img.transpose(method)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header(width: int, height: int) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _png_chunk(b"IEND", b""))


def _png_resized(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """The same PNG with another size in IHDR (checksum fixed, so the size itself is what is hostile)."""
    width, height = rng.choice(((0, 24), (40, 0), (1, 1), (41, 24), (40, 23), (2**31 - 1, 1), (65536, 65536),
                                (2**31 - 1, 2**31 - 1), (12_000, 12_000)))
    body = struct.pack(">II", width, height) + data[24:29]
    return data[:16] + body + struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF) + data[33:], \
        f"IHDR {width}x{height}"


def mutate_image(sample: Sample, rng: random.Random) -> tuple[bytes, str, bool]:
    """Bytes, what was done, and whether the sample's expectations still hold (only when unchanged)."""
    if rng.random() < 0.3:
        return sample.data, "as is", True
    if sample.name.endswith(".png") and sample.data[:8] == b"\x89PNG\r\n\x1a\n" and rng.random() < 0.3:
        data, what = _png_resized(sample.data, rng)
        return data, what, False
    data, what = mutate_bytes(sample.data, rng)
    return data, what, False


def _image_ok(path: Path, sample: Sample, intact: bool) -> Callable[[torch.Tensor], str | None]:
    from cdcompress.data.images import image_size

    def check(tensor: torch.Tensor) -> str | None:
        if tensor.dtype != torch.float32 or tensor.dim() != 4 or tensor.shape[:2] != (1, 3):
            return f"got {tensor.dtype} {tuple(tensor.shape)}"
        if not bool(tensor.isfinite().all()) or float(tensor.min()) < 0 or float(tensor.max()) > 1:
            return "values outside [0, 1]"
        got = tuple(tensor.shape[-2:])
        if got != image_size(path):
            return f"decoded {got} but the header says {image_size(path)}"
        if not intact:
            return None
        if sample.size is None:
            return "an unusable sample was decoded"
        if got != sample.size:
            return f"decoded {got}, expected {sample.size} upright"
        if sample.reference is not None:
            err = float(np.abs(tensor[0].permute(1, 2, 0).numpy() - sample.reference).mean())
            if err > sample.tolerance + 1e-6:
                return f"pixels differ from the reference by {err:.4f} on average"
        return None
    return _checked(check)


def image_cases(work: Path, n: int, seed: int) -> Iterator[Outcome]:
    from cdcompress.data.images import load_image

    rng = random.Random(seed)
    corpus = image_corpus()
    for i in range(n):
        sample = corpus[i % len(corpus)]
        data, what, intact = mutate_image(sample, rng)
        path = work / "images" / f"{i}_{sample.name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        yield judge("image", f"{i}: {sample.name} {what}", lambda p=path: load_image(p), _image_ok(path, sample, intact))
        path.unlink()


def image_cli_cases(model_dir: Path, work: Path, n: int, seed: int) -> Iterator[Outcome]:
    """The stylize command's input path (content or style role) on mutated images, level 1 (stride 1)."""
    rng = random.Random(seed)
    corpus = [s for s in image_corpus() if "100000" not in s.name]  # 100000 px wide: slow to stylize, no new path
    good = work / "images" / "good.png"
    good.parent.mkdir(parents=True, exist_ok=True)
    good.write_bytes(corpus[0].data)
    for i in range(n):
        sample = corpus[i % len(corpus)]
        data, what, intact = mutate_image(sample, rng)
        path = work / "images" / f"cli{i}_{sample.name}"
        path.write_bytes(data)
        out = work / "images" / f"out{i}.png"
        role = rng.choice(("content", "style"))
        content, style = (path, good) if role == "content" else (good, path)
        args = ["stylize", "--model", model_dir, "--content", content, "--style", style, "--levels", "1", "--out", out]

        def check(out: Path = out, content: Path = content, sample: Sample = sample, intact: bool = intact,
                  role: str = role) -> str | None:
            from cdcompress.data.images import image_size

            if not out.is_file():
                return "exit 0 without an output file"
            with Image.open(out) as result:
                got = result.size[::-1]
            want = image_size(content)
            if got != want:
                return f"output {got} for a {want} content image"
            return "an unusable sample was stylized" if intact and role == "style" and sample.size is None else None
        yield judge_cli("image-cli", f"{i}: {sample.name} as {role}, {what}", args, check, out)
        path.unlink()
        out.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the campaign


def run_campaign(work: Path, n: dict[str, int], seed: int = 0) -> dict[str, Counts]:
    """Every kind in ``n`` with that many cases; ``work`` is scratch space (base inputs are built there once)."""
    work.mkdir(parents=True, exist_ok=True)
    needs_model = {"model-json", "safetensors", "shapes", "bundle-manifest", "onnx-graph", "image-cli"} & set(n)
    model_dir = tiny_model_dir(work / "base") if needs_model else None
    bundle = tiny_bundle(model_dir, work / "base") if {"bundle-manifest", "onnx-graph"} & set(n) else None
    generators: dict[str, Callable[[int, int], Iterator[Outcome]]] = {
        "model-json": lambda k, s: model_json_cases(model_dir, work, k, s),
        "safetensors": lambda k, s: safetensors_cases(model_dir, work, k, s),
        "shapes": lambda k, s: shape_cases(model_dir, work, k, s),
        "bundle-manifest": lambda k, s: manifest_cases(bundle, work, k, s),
        "onnx-graph": lambda k, s: onnx_cases(bundle, work, k, s),
        "recipe": lambda k, s: recipe_cases(work, k, s),
        "image": lambda k, s: image_cases(work, k, s),
        "image-cli": lambda k, s: image_cli_cases(model_dir, work, k, s),
    }
    results = {}
    for kind in KINDS:
        if kind in n:
            counts = Counts(kind)
            for outcome in generators[kind](n[kind], seed):
                counts.add(outcome)
            results[kind] = counts
    return results


def format_table(results: dict[str, Counts]) -> str:
    lines = ["| kind | cases | one-line errors | correct results | failures |", "|---|---:|---:|---:|---:|"]
    for counts in results.values():
        lines.append(f"| {counts.kind} | {counts.cases} | {counts.errors} | {counts.correct} | {len(counts.failures)} |")
    total = [sum(getattr(c, a) for c in results.values()) for a in ("cases", "errors", "correct")]
    lines.append(f"| **all** | {total[0]} | {total[1]} | {total[2]} | {sum(len(c.failures) for c in results.values())} |")
    return "\n".join(lines)
