"""Distillation recipes: one YAML file describes a whole run, validated before any work starts.

A recipe is read with ``yaml.safe_load`` (aliases refused), merged over the recipe it ``extends:``, patched by
``--set a.b.c=value`` overrides, then validated by a pydantic schema that forbids unknown keys.
Every problem becomes one :class:`RecipeError` line naming the recipe, the key path and the fix
(with a did-you-mean for misspelt keys). Nothing in a recipe is evaluated: components are chosen
by registry name, or by an explicit ``import: package.module:callable`` for user models.
"""

from __future__ import annotations

import copy
import difflib
import os
import string
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..core.errors import CDCompressError, RegistryError, short_repr
from ..core.registry import DATA_SOURCES, IMPORTANCES, OBJECTIVES, TEACHER_SOURCES
from .settings import (
    AMP_MODES,
    DECODER_INITS,
    OPTIMIZERS,
    SCHEDULES,
    SYNC_BATCHNORM,
    bound,
    device_problem,
)

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the cdcompress package


class RecipeError(CDCompressError):
    """A recipe that cannot be used as written."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


Width = float | int | dict[str, float | int]


class PluginName(_Strict):
    """``{name: ..., kwargs: {...}}``: a registered plug-in with its arguments."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


PluginRef = str | PluginName


def _registered(registry: Any, value: Any) -> Any:
    """Registry names are checked while validating, so a typo is a recipe error, not a crash mid-run."""
    try:
        registry.check(value if isinstance(value, str) else value.name)
    except RegistryError as exc:
        raise ValueError(str(exc)) from None
    return value


def registered_in(registry: Any) -> AfterValidator:
    """A field validator: the value names a plug-in of ``registry`` (a name or ``{name, kwargs}``)."""
    return AfterValidator(lambda value: _registered(registry, value))


def plugin_reference(value: PluginRef) -> str | dict[str, Any]:
    """A validated reference as :func:`cdcompress.core.registry.split_reference` reads it."""
    return value if isinstance(value, str) else value.model_dump()


class TeacherSpec(_Strict):
    """Where the teacher (and possibly its decoders) come from: a registered teacher source."""

    source: Annotated[str, registered_in(TEACHER_SOURCES)] = Field(
        description="model | wct-vgg19 | wct-pytorch | cd-release | torchvision | builtin | bundled | import | "
                    "a registered user source")
    path: str = Field(description="model dir | WCT folder or auto | release dir | torchvision .pth | builtin or bundled name | "
                                  "package.module:callable")
    variant: Literal["student", "base"] = "student"
    pretrained: Literal["auto", "none"] = "auto"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class CollaboratorSpec(_Strict):
    source: Literal["teacher", "train"] = "teacher"
    min_psnr: float = Field(15.0, ge=0, description="stop before stage 2 when the teacher's decoder reconstructs the eval "
                                                     "images worse than this (dB): it is not a trained collaborator; 0 = off")


class StudentSpec(_Strict):
    width: Width = 0.25
    level_width: dict[int, dict[str, float | int]] = Field(default_factory=dict)
    importance: Annotated[PluginRef, registered_in(IMPORTANCES)] = "l1"
    round_to: int = Field(1, ge=1)
    init: Literal["pruned", "random"] = "pruned"
    keep: list[str] = Field(default_factory=list)
    latent: bool = Field(False, description="keep the encoder's outputs at the teacher's width (a latent interface): "
                                            "their layers are not slimmed and their branches are the frozen identity")
    target: dict[str, Any] | None = Field(
        None, description="a budget instead of a width (cdcompress.core.budget.Budget's fields): the widths are searched to "
                          "meet it (width and level_width are then not used), e.g. {macs: '50%', size: 512} or "
                          "{latency_ms: 40, runtime: bundle}")
    quantize: Literal["off", "int8"] = Field(
        "off", description="int8: stage 2 and stage 3 train the student fake-quantized in the INT8 exporter's scheme "
                           "(quantization-aware); the saved student carries the activation ranges `export --int8` uses")
    drop_in: Literal["off", "auto", "folded", "appended"] = Field(
        "off", description="also save drop_in/: the student with its output embedding Q kept (folded into the last "
                           "layer where exact, else appended), paired with the collaborator (the teacher's decoder)")

    @field_validator("drop_in", "quantize", mode="before")
    @classmethod
    def _off_is_not_a_boolean(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare ``off`` as False; that can only mean "off"."""
        return "off" if value is False else value

    @model_validator(mode="after")
    def _quantized_students_are_not_drop_in(self) -> StudentSpec:
        if self.quantize != "off" and self.drop_in != "off":
            raise ValueError("quantize int8 and drop_in exclude each other (a drop-in student keeps the float "
                             "teacher's decoder); set one of them to off")
        return self

    @field_validator("target")
    @classmethod
    def _target_is_a_budget(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """The Budget's own rules (torch-free), so a recipe refuses exactly what the Python API refuses."""
        from ..core.budget import Budget, BudgetError

        if value is not None:
            try:
                Budget.of(value)
            except BudgetError as exc:
                raise ValueError(str(exc).removeprefix("budget: ")) from None
        return value

    @field_validator("width")
    @classmethod
    def _width_range(cls, value: Width) -> Width:
        for v in value.values() if isinstance(value, dict) else [value]:
            if isinstance(v, float) and not 0 < v <= 1:
                raise ValueError(f"width ratio {v} must be in (0, 1]")
            if isinstance(v, int) and v < 1:
                raise ValueError(f"absolute width {v} must be >= 1")
        return value


class EmbedSpec(_Strict):
    """The branches Q: where they tap, their weight, and how they start (``lstsq``: the least-squares map from
    student to teacher features on the first training batch; ``random``: torch's default init)."""

    taps: Literal["level", "auto", "none"] | list[str] = "level"
    beta: float = Field(1.0, ge=0)  # as apply(): equal weighting, measured best at our budgets
    init: Literal["lstsq", "random"] = "lstsq"


class ObjectiveSpec(_Strict):
    """A registered objective (``reconstruction``, ``style-transfer``, ``feature-kd`` or a user's) and its options:
    ``lambda_p``/``lambda_s``/``perceptual_taps`` reach the objectives that take them, ``kwargs`` a user's."""

    kind: Annotated[str, registered_in(OBJECTIVES)] = "reconstruction"
    lambda_p: float = Field(1.0, ge=0)
    lambda_s: float = Field(10.0, ge=0)
    perceptual_taps: list[str] | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)


class DataSpec(_Strict):
    source: Annotated[PluginRef, registered_in(DATA_SOURCES)] = "images"
    train: list[str] = Field(min_length=1)
    style: list[str] = Field(default_factory=list)
    eval: list[str] = Field(default_factory=list)
    resize: int = Field(300, gt=0)
    crop: int = Field(256, gt=0)
    workers: int = Field(0, **bound("workers"))
    eval_size: int = Field(512, gt=0)

    @model_validator(mode="after")
    def _crop_fits(self) -> DataSpec:
        if self.crop > self.resize:
            raise ValueError(f"crop {self.crop} is larger than resize {self.resize}")
        return self


class StageSpec(_Strict):
    enabled: bool = True
    steps: int | None = Field(None, **bound("steps"))
    epochs: float | None = Field(None, gt=0)
    batch: int = Field(16, gt=0)
    lr: float = Field(1e-4, **bound("lr"))
    optimizer: Literal[OPTIMIZERS] = "adam"
    weight_decay: float = Field(0.0, **bound("weight_decay"))
    schedule: Literal[SCHEDULES] = "constant"
    lr_floor: float = Field(0.0, le=1, **bound("lr_floor"))
    warmup_steps: int = Field(0, **bound("warmup_steps"))
    grad_clip: float = Field(0.0, **bound("grad_clip"))
    amp: Literal[AMP_MODES] = "off"
    channels_last: bool = False
    lambda_p: float | None = Field(None, ge=0)
    accumulate: int = Field(1, **bound("accumulate"))
    sync_batchnorm: Literal[SYNC_BATCHNORM] = "auto"

    @field_validator("sync_batchnorm", mode="before")
    @classmethod
    def _sync_batchnorm_switch(cls, value: Any) -> Any:
        """``true``/``false`` in YAML are the switch's on/off."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_off_is_not_a_boolean(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare ``off`` (or ``no``/``false``) as False; that can only mean "off"."""
        return "off" if value is False else value

    @model_validator(mode="after")
    def _length_given(self) -> StageSpec:
        if self.enabled and self.steps is None and self.epochs is None:
            raise ValueError("give steps or epochs")
        return self


class DecoderTrainingSpec(StageSpec):
    """A stage that trains a decoder (stage 1's collaborator, stage 3's small decoder)."""

    refit_output: bool = Field(False, description="after training, solve the decoder's output conv by least squares "
                                                  "(the pixel-MSE optimum given the layers before it; a level-1 VGG "
                                                  "decoder's whole conv); needs a decoder with a linear output")


class DecoderStageSpec(DecoderTrainingSpec):
    init: Literal[DECODER_INITS] = "pruned"


class StagesSpec(_Strict):
    collaborator: DecoderTrainingSpec = Field(default_factory=lambda: DecoderTrainingSpec(enabled=False))
    distill: StageSpec
    decoder: DecoderStageSpec


class OutputSpec(_Strict):
    dir: str = "runs/{name}"

    @field_validator("dir")
    @classmethod
    def _only_name_placeholder(cls, value: str) -> str:
        """``{name}`` is the one placeholder: any other would only fail (or format a huge string) when the run starts."""
        try:
            fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(value) if f is not None]
        except ValueError as exc:
            raise ValueError(f"{exc}; write braces as {{{{ }}}}, and {{name}} for the recipe's name") from None
        if any(f != "name" or spec or conv for f, spec, conv in fields):
            raise ValueError("the only placeholder allowed is {name} (the recipe's name); write other braces as {{ }}")
        return value
    checkpoint_every: int = Field(500, **bound("checkpoint_every"))
    sample_every: int = Field(0, **bound("sample_every"))
    log_every: int = Field(10, **bound("log_every"))
    eval_every: int = Field(0, **bound("eval_every"))  # held-out PSNR learning curve (heldout.png) every N steps of each stage


class Recipe(_Strict):
    name: str
    description: str = ""
    seed: int = 0
    device: str = "cpu"
    levels: list[int] = Field(min_length=1)
    teacher: TeacherSpec
    collaborator: CollaboratorSpec = Field(default_factory=CollaboratorSpec)
    student: StudentSpec = Field(default_factory=StudentSpec)
    embed: EmbedSpec = Field(default_factory=EmbedSpec)
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    data: DataSpec
    stages: StagesSpec
    output: OutputSpec = Field(default_factory=OutputSpec)

    @field_validator("levels")
    @classmethod
    def _levels_valid(cls, value: list[int]) -> list[int]:
        if any(k not in range(1, 6) for k in value) or len(set(value)) != len(value):
            raise ValueError("levels must be distinct integers in 1..5")
        return sorted(value)

    @field_validator("device")
    @classmethod
    def _device_known(cls, value: str) -> str:
        problem = device_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _style_data(self) -> Recipe:
        if self.objective.kind == "style-transfer" and not self.data.style:
            raise ValueError("the style-transfer objective needs data.style folders")
        return self


# --------------------------------------------------------------------------- locating recipes


def recipe_dirs() -> list[Path]:
    """Where bundled recipes live: $CDCOMPRESS_RECIPES, the checkout's recipes/, or the installed share/."""
    import sys

    candidates = [os.environ.get("CDCOMPRESS_RECIPES"), PACKAGE_ROOT.parent / "recipes",
                  Path(sys.prefix) / "share" / "cdcompress" / "recipes"]
    return [Path(c) for c in candidates if c and Path(c).is_dir()]


def bundled_recipes() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in recipe_dirs():
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def find_recipe(ref: str | Path, relative_to: Path | None = None) -> Path:
    """A recipe by path, by path relative to another recipe, or by bundled name."""
    path = Path(ref)
    for candidate in ([relative_to / path] if relative_to else []) + [path]:
        if candidate.is_file():
            return candidate
    bundled = bundled_recipes()
    name = path.stem if path.suffix in (".yaml", ".yml") else str(ref)
    if name in bundled:
        return bundled[name]
    hint = difflib.get_close_matches(name, bundled, n=1)
    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise RecipeError(f"recipe {ref}: not found{suggestion}; pass a YAML path or one of: {', '.join(sorted(bundled))}")


# --------------------------------------------------------------------------- loading


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.safe_load`` without aliases: ``*name`` lets a few lines expand into millions of values (a "billion
    laughs") that validation, error messages and ``recipes show`` would then walk; recipes reuse with ``extends:``."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} is not allowed in a recipe (write the "
                                              "value out, or use extends:)", event.start_mark)
        return super().compose_node(parent, index)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_RecipeLoader)  # noqa: S506  (a SafeLoader without aliases)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise RecipeError(f"recipe {path}: invalid YAML{where} ({problem}); fix the syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"recipe {path}: cannot read ({exc}); check the file") from None
    if data is None:
        raise RecipeError(f"recipe {path}: empty file; see `cdcompress recipes show demo` for an example")
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` wins; nested mappings merge key by key, lists and scalars are replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_raw(ref: str | Path, _seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Path]:
    """The recipe's mapping with ``extends:`` chains resolved (cycles refused)."""
    path = find_recipe(ref, _seen[-1].parent if _seen else None).resolve()
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path))
        raise RecipeError(f"recipe {path}: extends itself ({chain}); remove the cycle")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data, path
    if not isinstance(parent, str):
        raise RecipeError(f"recipe {path}: extends must be a recipe name or path, got {parent!r}")
    base, _ = load_raw(parent, (*_seen, path))
    return deep_merge(base, data), path


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; values are parsed as YAML scalars/lists (``1e-3``, ``[1,2]``)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"recipe {source}: override {item!r} must look like a.b.c=value")
        try:
            value = yaml.load(text, Loader=_RecipeLoader) if text.strip() else None  # noqa: S506
        except yaml.YAMLError:
            raise RecipeError(f"recipe {source}: override {item!r} has an unparsable value; quote it") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"recipe {source}: override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at ``loc`` (for did-you-mean)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = field.annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _format_error(error: dict[str, Any], source: str) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _known_keys(Recipe, loc)
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        suggestion = f"did you mean {hint[0]!r}?" if hint else f"valid keys here: {', '.join(known)}"
        return f"recipe {source}: unknown key {key!r}; {suggestion}"
    if kind == "missing":
        return f"recipe {source}: missing required key {key!r}; add it (see `cdcompress recipes show demo`)"
    got = error.get("input")
    shown = short_repr(got) if not isinstance(got, dict) else "a mapping"
    message = error["msg"].removeprefix("Value error, ")
    return f"recipe {source}: {key}: {message} (got {shown}); fix the value"


def validate(data: dict[str, Any], source: str) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # Report the most specific problem first: unknown keys, then missing ones, then values.
        order = {"extra_forbidden": 0, "missing": 1}
        first = sorted(errors, key=lambda e: order.get(e["type"], 2))[0]
        raise RecipeError(_format_error(first, source)) from None


def load_recipe(ref: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Find, merge, override and validate a recipe (no file-system checks; see :func:`check_paths`)."""
    data, path = load_raw(ref)
    data = apply_overrides(data, list(overrides or []), str(ref))
    return validate(data, str(ref))


_WHERE_TO_GET = {
    "model": "get the paper's WCT teacher with `cdcompress weights download wct-vgg19` (then --set teacher.path=<the "
             "printed folder>) or convert a local copy with `cdcompress convert --from wct-pytorch DIR --out MODEL_DIR`",
    "cd-release": "point it at the folder holding the released se{k}.pth/sd{k}.pth files",
    "torchvision": "get vgg19-dcbb9e9d.pth with `cdcompress weights download vgg19`",
    "wct-pytorch": "point it at a folder of vgg_normalised_conv{k}_1.pth / feature_invertor_conv{k}_1.pth files "
                   "(`cdcompress weights download wct-vgg19` fetches them; ../shared/reference/wct-vgg19 has levels 1-3)",
}


def check_paths(recipe: Recipe, source: str) -> None:
    """Every file and folder the run needs exists and every dataset is non-empty."""
    from ..data.batches import image_paths
    from ..models.resolve import is_builtin

    teacher = recipe.teacher
    if teacher.source in _WHERE_TO_GET and not Path(teacher.path).exists():
        raise RecipeError(f"recipe {source}: teacher.path {teacher.path!r} does not exist; {_WHERE_TO_GET[teacher.source]}")
    if teacher.source == "wct-vgg19":
        from ..models.weights import require_wct

        try:
            require_wct(teacher.path)
        except CDCompressError as exc:
            raise RecipeError(f"recipe {source}: {exc}") from None
    if teacher.source == "builtin" and not is_builtin(teacher.path):
        raise RecipeError(f"recipe {source}: teacher.path {teacher.path!r} is not a built-in architecture (try vgg19)")
    if teacher.source == "bundled":
        from ..models.bundled import bundled_teacher

        try:
            bundled_teacher(teacher.path)
        except CDCompressError as exc:
            raise RecipeError(f"recipe {source}: teacher.path: {exc}") from None
    if teacher.source == "import" and ":" not in teacher.path:
        raise RecipeError(f"recipe {source}: teacher.path must be package.module:callable for source import")
    for key in ("train", "style", "eval"):
        for folder in getattr(recipe.data, key):
            if folder in ("skimage", "skimage-heldout"):
                continue
            try:
                image_paths(folder) if Path(folder).is_dir() or not Path(folder).is_file() else None
            except CDCompressError as exc:
                raise RecipeError(f"recipe {source}: data.{key}: {exc}") from None


def to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="python"), sort_keys=False)
