"""Stage 2, the collaborative distillation itself, and the ``apply`` entry point.

``apply(teacher, collaborator)`` slims a copy of the teacher into the student, hooks embedding
branches Q onto the chosen taps and every encoder output, and returns a :class:`Distiller` that
trains student + branches with

    L = L_collab(collaborator(Q·F'_out)) + beta * Σ_taps MSE(Q·F'_tap, F_tap)

while teacher and collaborator stay frozen (and the caller's modules untouched: they are copied).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import CDCompressError
from ..core.registry import OBJECTIVES, build, split_reference
from ..data.batches import Batch, as_batch
from ..surgery.drop_in import DropInEncoder, drop_in
from ..surgery.drop_in import Form as DropInForm
from ..surgery.embed import (
    OUTPUT,
    EmbeddingBranches,
    auto_taps,
    branch_key,
    call_counts,
    channels_of,
    flatten_outputs,
    io_channels,
    is_token_feature,
)
from ..surgery.modules import EncoderDecoderPair, freeze, reinitialize
from ..surgery.slim import Slimmer, Slimming, SlimResult, WidthSpec, resolve_importance, slim_pair, vgg_mirror_widths
from .branch_init import fit_branches
from .decoder import StudentDecoderStart, starting_decoder, train_decoder
from .distributed import from_main, is_main
from .losses import FeatureExtractor, total
from .objectives import Objective, ObjectiveContext
from .trainer import TrainConfig, Trainer, TrainResult


class Distiller:
    """Student encoder + embedding branches trained through a frozen collaborator (stage 2)."""

    name = "distill"

    def __init__(
        self,
        teacher: nn.Module,
        collaborator: nn.Module,
        slimmed: SlimResult,
        branches: EmbeddingBranches,
        features: Sequence[str],
        template: Any,
        perceptual_taps: Sequence[str],
        objective: Objective | None,
        beta: float,
        example_shape: tuple[int, ...] = (1, 3, 64, 64),
        seed: int = 0,
    ) -> None:
        self.teacher = freeze(teacher)
        self.collaborator = freeze(collaborator)
        self.student = slimmed.encoder
        self.decoder_init = slimmed.decoder
        self.slimmed = slimmed
        self.branches = branches
        self.features = list(features)  # taps and encoder outputs, each with its own branch
        self.template = template  # the encoder's output structure, holding feature names
        self.objective = objective
        self.beta = beta
        self.example_shape = example_shape
        self.seed = seed  # stage 3's random decoder init draws from a generator seeded with it
        self.trained_decoder: nn.Module | None = None  # set by fit_decoder (stage 3); what save_student() writes
        self._optimizer_state: Mapping[torch.Tensor, dict] = {}  # the last fit's, continued by the next (fit)
        self.init_branches = True  # False keeps the random Q (torch's default init); see prepare()
        self.latent = False  # a latent interface (Slimming(latent=True)): output branches are the frozen identity
        self._branches_fitted = False  # Q is least-squares initialised once, before the first fit's first step
        self.quantize = "off"  # "int8": the student and its decoder train fake-quantized (enable_int8)
        self._teacher_features = FeatureExtractor(self.teacher, list(dict.fromkeys([*self.features, *perceptual_taps])))
        self._student_features = FeatureExtractor(self.student, self.features)
        self.perceptual = FeatureExtractor(self.teacher, list(perceptual_taps))

    # ---------------------------------------------------------------- Task protocol
    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "branches": self.branches}

    def set_train(self, mode: bool) -> None:
        self.student.train(mode)
        self.branches.train(mode)

    @property
    def needs_prepare(self) -> bool:
        """Whether the next fit must draw a batch for :meth:`prepare` (only before Q's least-squares init, or while an
        INT8 student has no activation ranges yet)."""
        return (self.init_branches and not self._branches_fitted) or self._needs_calibration()

    def enable_int8(self) -> None:
        """Train the student as its INT8 graph will run (quantization-aware): weights and activations fake-quantized
        in the exporter's scheme (:mod:`~cdcompress.surgery.fake_quant`), activation ranges calibrated on the first
        batch; stage 3's decoder likewise. The saved student holds float weights and, in ``model.json``, the ranges
        ``cdcompress export --int8`` then uses."""
        from ..surgery import fake_quant

        try:
            fake_quant.attach_fake_quant(self.student)
        except fake_quant.QuantizationError as exc:
            raise CDCompressError(f"quantize int8: {exc}") from None
        self.quantize = "int8"

    def _needs_calibration(self) -> bool:
        from ..surgery import fake_quant

        return self.quantize == "int8" and not all(q.calibrated for q in fake_quant.quantizers(self.student).values())

    def prepare(self, batch: Batch) -> None:
        """Before the first step of the first fit: an INT8 student's activation ranges calibrated on ``batch``, then
        each branch Q set to the least-squares map from the student's features to the teacher's on it (see
        :mod:`~cdcompress.distill.branch_init`); later calls keep both."""
        if self._needs_calibration():
            from ..surgery import fake_quant

            fake_quant.calibrate(self.student, [batch.input])
        if not (self.init_branches and not self._branches_fitted):
            return
        self.set_train(False)
        with torch.no_grad():
            student, teacher = self._student_features(batch.input), self._teacher_features(batch.input)
        fitted = [n for n in self.features if self.branches[branch_key(n)].weight.requires_grad]  # latent: frozen identity
        fit_branches({branch_key(n): self.branches[branch_key(n)] for n in fitted},
                     {branch_key(n): student[n] for n in fitted}, {branch_key(n): teacher[n] for n in fitted})
        self._branches_fitted = True

    def embedded_features(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], Any]:
        """Q·F' at every tap/output, and the embedded outputs in the encoder's own structure."""
        raw = self._student_features(images)
        embedded = {name: self.branches[branch_key(name)](f) for name, f in raw.items()}
        return embedded, _restructure(self.template, embedded)

    def losses(self, batch: Batch | torch.Tensor) -> dict[str, torch.Tensor]:
        batch = as_batch(batch)
        with torch.no_grad():
            teacher = self._teacher_features(batch.input)
        embedded, outputs = self.embedded_features(batch.input)
        terms: dict[str, torch.Tensor] = {}
        per_tap = {f"embed/{name}": F.mse_loss(q, teacher[name]) for name, q in embedded.items()}
        terms["embed"] = self.beta * sum(per_tap.values())
        terms.update(per_tap)
        if self.objective is not None:
            ctx = ObjectiveContext(batch.input, outputs, teacher, self.collaborator, self.perceptual,
                                   batch.target if batch.paired else None)
            terms.update(self.objective(ctx))
        terms["total"] = total(terms)
        return terms

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen collaborator's output on the student's embedded features (stage 2's held-out curve)."""
        return self.collaborator(self.embedded_features(images)[1])

    def sample_titles(self, batch: Batch) -> list[str]:
        """The titles of :meth:`samples`' views, in their order (the sample grids' header)."""
        titles = ["input", "teacher pair", "collaborator on Q·F'"]
        return [*titles, "target"] if batch.paired else titles

    def samples(self, batch: Batch) -> list[torch.Tensor]:
        views = [batch.input, self.collaborator(self.teacher(batch.input))]
        views.append(self.collaborator(self.embedded_features(batch.input)[1]))
        return [*views, batch.target] if batch.paired else views

    # ---------------------------------------------------------------- training API
    def fit(
        self,
        data: object,
        config: TrainConfig,
        run_dir: str | Path | None = None,
        resume: bool = False,
        held_out: Sequence[torch.Tensor | Batch] = (),
    ) -> TrainResult:
        """Stage 2: train student and branches (teacher and collaborator frozen).

        ``data``: a DataLoader or any iterable of batches (image tensors, or ``(input, target)`` pairs for
        image-to-image tasks), a factory returning one, or a :class:`~cdcompress.data.batches.CropSampler`; see
        :func:`cdcompress.data.batches.batches` for what exact resume needs. ``held_out`` images (or pairs) with
        ``config.eval_every`` give a learning curve: PSNR through the collaborator (``result.curve``).

        Successive calls continue one optimisation: the optimiser state (Adam's moments and step counts)
        carries over, so at a constant rate two fits of 100 steps train exactly like one of 200 on the same
        batches; each call's schedule (warm-up, cosine) spans that call's ``steps``. ``resume=True`` takes the
        checkpoint's state instead; :meth:`reset_optimizer` starts the next call afresh. Before the first step
        of the first call, :meth:`prepare` sets Q to its least-squares map (docs/residual_pairs.md)."""
        self.to(config.device)
        trainer = Trainer(self, data, config, run_dir, held_out)
        if not resume:
            trainer.continue_optimizer(self._optimizer_state)
        result = trainer.fit(resume=resume)
        self._optimizer_state = trainer.optimizer.state
        return result

    def reset_optimizer(self) -> None:
        """Make the next :meth:`fit` start with a fresh optimiser (e.g. a deliberate restart with new settings)."""
        self._optimizer_state = {}

    def to(self, device: str | torch.device) -> Distiller:
        """Every module of the distillation on ``device`` (in place: they are this distiller's own copies)."""
        for module in (self.teacher, self.collaborator, self.student, self.branches, self.decoder_init):
            module.to(device)
        return self

    def fit_decoder(
        self,
        data: object,
        config: TrainConfig,
        init: str = "pruned",
        lambda_p: float = 1.0,
        run_dir: str | Path | None = None,
        resume: bool = False,
        name: str = "decoder",
        held_out: Sequence[torch.Tensor | Batch] = (),
    ) -> tuple[nn.Module, TrainResult]:
        """Stage 3: a small decoder for the frozen student, started as ``init`` says (``pruned`` | ``folded`` |
        ``random``, see :func:`~cdcompress.distill.decoder.starting_decoder`) and judged, as in stage 1, by pixel +
        perceptual loss on the teacher's features (the teacher pair shown in samples). Returns ``(decoder, result)``;
        the decoder is also what :meth:`save_student` writes by default."""
        decoder = starting_decoder(self.decoder_start(), init)
        if self.quantize == "int8":
            self._int8_decoder(decoder, data)
        reference = EncoderDecoderPair(self.teacher, self.collaborator)
        result = train_decoder(name, self.deployable(), decoder, data, config, self.teacher, self.perceptual.taps,
                               lambda_p, run_dir, resume, reference, held_out)
        self.trained_decoder = decoder
        return decoder, result

    def decoder_start(self) -> StudentDecoderStart:
        """What stage 3 starts a decoder from: the slimmed collaborator, the collaborator and the output Q."""
        single = isinstance(self.template, str)
        return StudentDecoderStart(self.decoder_init, self.collaborator,
                                   self.branches[branch_key(self.template)] if single else None,
                                   self.slimmed.kept, self.seed)

    def _int8_decoder(self, decoder: nn.Module, data: object) -> None:
        """Fake-quantize stage 3's decoder, its ranges calibrated on one batch's features (and their WCT maps), as the
        INT8 encoder gives them; a resumed stage 3 then reads the trained ranges from its checkpoint."""
        from ..data.batches import batches
        from ..surgery import fake_quant
        from .quantize import calibrate_decoder

        batch = next(batches(data, 0, 1)).to(next(self.student.parameters()).device)
        if self._needs_calibration():  # stage 2 did not run
            fake_quant.calibrate(self.student, [batch.input])
        try:
            fake_quant.attach_fake_quant(decoder)
        except fake_quant.QuantizationError as exc:
            raise CDCompressError(f"quantize int8: {exc}") from None
        calibrate_decoder(self.deployable(), decoder, [batch.input], fake_quant.DEFAULT_PERCENTILE)

    def deployable(self) -> nn.Module:
        """The student encoder alone: no branches, frozen copy (fake-quantized when the student trains for INT8)."""
        return freeze(copy.deepcopy(self.student))

    def output_embedding(self) -> dict[str, nn.Module]:
        """Each encoder output's branch Q, keyed as :func:`~cdcompress.surgery.embed.flatten_outputs` names the outputs."""
        return {name: self.branches[branch_key(feature)] for name, feature in _flat_template(self.template).items()}

    def drop_in_encoder(self, form: DropInForm = "auto") -> nn.Module:
        """The student with its output Q kept: it emits the teacher's features, so the teacher's own decoder
        (``self.collaborator``, or any model of the teacher's features) reads it unchanged. ``form``: ``auto`` folds Q
        into the last layer where exact (see :mod:`cdcompress.surgery.drop_in`), ``folded`` requires that,
        ``appended`` never folds."""
        if self.latent:  # the outputs already have the teacher's widths and an identity branch: nothing to keep
            return copy.deepcopy(self.student).eval()
        example = torch.rand(self.example_shape, generator=torch.Generator().manual_seed(self.seed))
        return drop_in(self.student, self.output_embedding(), example, form)

    def save_drop_in(self, path: str | Path, form: DropInForm = "auto", overwrite: bool = False) -> Path:
        """Write the drop-in student with the teacher's ORIGINAL decoder as a model directory (same families as
        :meth:`save_student`; a module-family directory records that its decoder is the teacher's, unslimmed)."""
        from ..models.format import CDModel, save, save_pair
        from ..models.vgg import VGGDecoder, VGGEncoder

        encoder, decoder = self.drop_in_encoder(form), freeze(copy.deepcopy(self.collaborator))
        inner = encoder.student if isinstance(encoder, DropInEncoder) else encoder
        meta = {"source": {"kind": "cdcompress-drop-in", "form": form}}
        if isinstance(inner, VGGEncoder) and isinstance(decoder, VGGDecoder):
            level = inner.spec.level
            return save(CDModel(encoders={level: encoder}, decoders={level: decoder}, meta=meta), path, overwrite=overwrite)
        widths = {**self.slimmed.widths(), **_layer_widths(inner)}
        return save_pair(encoder, decoder, path, teacher=(self.teacher, self.collaborator), widths=widths,
                         example_shape=self.example_shape, meta=meta, overwrite=overwrite, teacher_decoder=True)

    def save_student(self, path: str | Path, decoder: nn.Module | None = None, overwrite: bool = False) -> Path:
        """Write the student and its decoder as a model directory.

        The decoder is ``decoder`` when given, else the one this distiller's :meth:`fit_decoder` (stage 3)
        trained; with neither, saving is refused: the slimmed collaborator (``decoder_init``) was never trained
        for this student, so a saved model would decode garbage (pass ``decoder=distiller.decoder_init`` to save
        that untrained starting point on purpose). A VGG pair is saved in the ``vgg`` family (with its embedding
        branches); any other pair in the ``module`` family with the slimmed widths recorded, loadable with
        ``cdcompress.load(path, encoder=teacher_factory, decoder=collaborator_factory)``."""
        from ..models.format import CDModel, save, save_pair
        from ..models.vgg import VGGDecoder, VGGEncoder

        decoder = decoder if decoder is not None else self.trained_decoder
        if decoder is None:
            raise CDCompressError("Distiller.save_student: no trained decoder for the student; run distiller.fit_decoder(...) "
                                  "(stage 3) first or pass decoder=... (decoder=distiller.decoder_init saves it untrained)")
        decoder = freeze(copy.deepcopy(decoder))
        encoder = self.deployable()
        report = {"slimming": {"layers": [layer.as_dict() for layer in self.slimmed.layers],
                               "encoder_parameters": list(self.slimmed.encoder_params),
                               "decoder_parameters": list(self.slimmed.decoder_params)}}
        if self.slimmed.budget is not None:
            report["slimming"]["budget"] = self.slimmed.budget.as_dict()
        if isinstance(encoder, VGGEncoder) and isinstance(decoder, VGGDecoder):
            level = encoder.spec.level
            model = CDModel(encoders={level: encoder}, decoders={level: decoder}, meta={"source": report})
            if self.quantize == "int8":
                from ..export.int8_record import with_trained_ranges

                model = with_trained_ranges(model, "distill")
            model.branches[level] = portable_branches(self.branches)
            return save(model, path, overwrite=overwrite)
        return save_pair(encoder, decoder, path, teacher=(self.teacher, self.collaborator), widths=self.slimmed.widths(),
                         example_shape=self.example_shape, meta={"source": {"kind": "cdcompress-apply", **report}},
                         overwrite=overwrite)


def portable_branches(branches: EmbeddingBranches) -> EmbeddingBranches:
    """A plain copy of the trained branches for the model directory (kept beside the student)."""
    copy_ = EmbeddingBranches(branches.widths, branches.token_taps)
    copy_.load_state_dict(branches.state_dict())
    return copy_



def _flat_template(template: Any) -> dict[str, str]:
    """The encoder's outputs named as :func:`flatten_outputs` names them -> the feature (branch) serving each."""
    if isinstance(template, str):
        return {OUTPUT: template}
    if isinstance(template, (tuple, list)):
        return {f"{OUTPUT}_{i}": name for i, name in enumerate(template)}
    return {f"{OUTPUT}_{key}": name for key, name in template.items()}


def _layer_widths(encoder: nn.Module) -> dict[str, int]:
    """Absolute widths of an encoder's layers as they are now (a folded output layer has the teacher's width)."""
    return {f"encoder.{name}": int(m.out_features if isinstance(m, nn.Linear) else m.out_channels)
            for name, m in encoder.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))}


def _restructure(template: Any, embedded: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(template, str):
        return embedded[template]
    if isinstance(template, (tuple, list)):
        return type(template)(embedded[name] for name in template)
    return {key: embedded[name] for key, name in template.items()}


def _output_template(outputs: Any, sources: Mapping[str, str]) -> Any:
    """The encoder's output structure with feature names in place of tensors."""
    names = [sources[name] for name in flatten_outputs(outputs)]
    if isinstance(outputs, torch.Tensor):
        return names[0]
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(names)
    return {key: name for key, name in zip(outputs, names, strict=True)}


def _resolve_taps(teacher: nn.Module, taps: str | Sequence[str] | None, example: torch.Tensor) -> list[str]:
    if taps is None:
        return []
    if taps == "auto":
        return auto_taps(teacher, example)
    if isinstance(taps, str):
        taps = [taps]
    modules = dict(teacher.named_modules())
    unknown = [t for t in taps if t not in modules and not t.startswith(OUTPUT)]
    if unknown:
        raise CDCompressError(f"unknown tap(s) {unknown}; taps name submodules of the encoder (see named_modules())")
    counts = call_counts(teacher, example)
    shared = {t: counts[t] for t in taps if counts.get(t, 0) > 1}
    if shared:
        raise CDCompressError(f"tap(s) {shared} run more than once per forward (a shared module, e.g. a block's one "
                              "ReLU); a hook would see only the last call: tap a module that runs once")
    return [t for t in taps if not t.startswith(OUTPUT)]


def _build_branches(
    teacher: nn.Module, student: nn.Module, taps: list[str], example: torch.Tensor, generator: torch.Generator
) -> tuple[EmbeddingBranches, list[str], Any]:
    """One branch per tap and per encoder output; an output that IS a tap's tensor shares its branch.

    Returns the branches, the feature names they serve (taps, then unshared outputs) and the
    encoder's output structure expressed in those names.
    """
    with torch.no_grad():
        t_out_raw, s_out_raw = teacher(example), student(example)
        t_feats, s_feats = FeatureExtractor(teacher, taps)(example), FeatureExtractor(student, taps)(example)
    t_outputs, s_outputs = flatten_outputs(t_out_raw), flatten_outputs(s_out_raw)
    features = list(taps)
    sources: dict[str, str] = {}
    for name, feature in t_outputs.items():
        shared = next((t for t in taps if t_feats[t].shape == feature.shape and torch.equal(t_feats[t], feature)), None)
        sources[name] = shared or name
        if shared is None:
            features.append(name)
            t_feats[name], s_feats[name] = feature, s_outputs[name]
    widths = {branch_key(n): (channels_of(s_feats[n]), channels_of(t_feats[n])) for n in features}
    tokens = {branch_key(n): is_token_feature(t_feats[n]) for n in features}
    return EmbeddingBranches(widths, tokens, generator), features, _output_template(t_out_raw, sources)


def identity_outputs(branches: EmbeddingBranches, template: Any) -> None:
    """A latent interface: every encoder output's branch is the identity and frozen, so the collaborator reads the
    student's own outputs in stage 2 and the deployed student needs no Q."""
    for feature in _flat_template(template).values():
        branch = branches[branch_key(feature)]
        student_width, teacher_width = io_channels(branch)
        if student_width != teacher_width:
            raise CDCompressError(f"latent interface: output {feature!r} has {student_width} channels in the student "
                                  f"and {teacher_width} in the teacher; keep its producing layer unslimmed")
        with torch.no_grad():
            branch.weight.copy_(torch.eye(teacher_width).reshape(branch.weight.shape))
            if branch.bias is not None:
                branch.bias.zero_()
        branch.requires_grad_(False)


def _is_vgg_pair(teacher: nn.Module, collaborator: nn.Module) -> bool:
    from ..models.vgg import VGGDecoder, VGGEncoder

    return isinstance(teacher, VGGEncoder) and isinstance(collaborator, VGGDecoder)


def _cut_to_budget(teacher: nn.Module, collab: nn.Module, channels: int, slimming: Slimming,
                   cut: Callable[[WidthSpec | Slimmer], SlimResult],
                   mirror: Callable[[WidthSpec], WidthSpec] | None) -> SlimResult:
    """The pair slimmed to the widths that meet ``slimming.target`` (searched on copies; see width_search).

    Under several processes, rank 0's widths are used everywhere: a latency measurement differs between processes,
    and every replica must have the same architecture."""
    from .width_search import find_widths

    search = from_main(find_widths(teacher, collab, channels, cut, slimming.target, slimming.calibration, mirror)
                       if is_main() else None)
    slimmed = cut(search.widths)
    slimmed.budget = search
    return slimmed


def resolve_objective(objective: str | Mapping[str, Any] | Objective | None, options: Mapping[str, Any]) -> Objective | None:
    """A registered objective by name or ``{name, kwargs}`` (``options`` added to its kwargs), or the caller's own."""
    if objective is None:
        return None
    if callable(objective):
        if options:
            raise CDCompressError(f"objective options {sorted(options)} configure a named objective, not a callable")
        return objective
    name, kwargs = split_reference(objective)
    return build(OBJECTIVES, {"name": name, "kwargs": {**kwargs, **options}})


def apply(
    model: nn.Module,
    collaborator: nn.Module,
    *,
    slim: WidthSpec | Slimmer | Slimming = 0.5,
    objective: str | Mapping[str, Any] | Objective | None = "reconstruction",
    taps: str | Sequence[str] | None = "auto",
    beta: float = 1.0,
    example_inputs: tuple[torch.Tensor, ...] | None = None,
    seed: int = 0,
    quantize: str = "off",
    **objective_options: Any,
) -> Distiller:
    """Prepare collaborative distillation of encoder ``model`` against its decoder ``collaborator``.

    ``slim``: a width ratio, ``{layer: ratio | width}``, a :class:`~cdcompress.surgery.slim.Slimmer`, or a
    :class:`~cdcompress.surgery.slim.Slimming` (importance criterion, ``round_to``, protected layers, init).
    ``objective``: a registered name (``reconstruction``, ``style-transfer``, ``feature-kd`` = the
    embedding loss only, the KD baseline), ``{name, kwargs}``, or a callable
    ``(ObjectiveContext) -> {term: loss}``; further keywords (``lambda_p``, ``lambda_s``,
    ``perceptual_taps``) configure a named objective. ``taps``: submodule names that get embedding
    branches, ``"auto"`` (the last activation before each downsampling) or ``None``; every encoder
    output always gets one. ``beta`` weighs the embedding loss against the collaborator's: 1 (equal weighting)
    is what our recipes measured best at CPU budgets (docs/reproduction_wct_baselines.md); the authors' script has
    10, which the same study found worse there. ``example_inputs`` (a tuple) is what torch-pruning traces. ``seed`` seeds the
    slimming and the branch initialisation through a generator of its own (a :class:`~cdcompress.surgery.slim.Slimming`
    passed as ``slim`` keeps its own seed for the importance criterion): torch's global RNG is neither read,
    advanced nor reseeded. The caller's modules are copied, never changed. ``quantize="int8"`` trains the student (and
    stage 3's decoder) for INT8, see :meth:`Distiller.enable_int8`.
    """
    if quantize not in ("off", "int8"):
        raise CDCompressError(f"quantize must be 'off' or 'int8', got {quantize!r}")
    slimming = Slimming.of(slim, seed)
    chosen = resolve_objective(objective, objective_options)
    teacher = freeze(copy.deepcopy(model).cpu())
    collab = freeze(copy.deepcopy(collaborator).cpu())
    if example_inputs is None:
        example_inputs = (torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed)),)
    if not isinstance(example_inputs, tuple):
        raise CDCompressError("example_inputs must be a tuple, e.g. (torch.rand(1, 3, 64, 64),)")
    example = example_inputs[0]
    tap_names = _resolve_taps(teacher, taps, example)
    importance = resolve_importance(slimming.importance, slimming.seed)
    mirror = (lambda spec: vgg_mirror_widths(spec, teacher.spec.convs)) if _is_vgg_pair(teacher, collab) else None

    def cut(width: WidthSpec | Slimmer) -> SlimResult:
        return slim_pair(teacher, collab, tuple(example_inputs), width, importance, slimming.keep, slimming.seed,
                         slimming.calibration_loss(), slimming.round_to, slimming.latent)

    if slimming.target is not None:
        slimmed = _cut_to_budget(teacher, collab, int(example.shape[1]), slimming, cut, mirror)
    else:
        width = slimming.width
        slimmed = cut(mirror(width) if mirror is not None and isinstance(width, Mapping) else width)
    generator = torch.Generator().manual_seed(seed)  # the caller's global RNG is neither read nor advanced
    if slimming.init == "random":
        reinitialize(slimmed.encoder, generator)
        reinitialize(slimmed.decoder, generator)
    for p in slimmed.encoder.parameters():
        p.requires_grad_(True)
    branches, features, template = _build_branches(teacher, slimmed.encoder, tap_names, example, generator)
    if slimming.latent:
        identity_outputs(branches, template)
    perceptual_taps = getattr(chosen, "perceptual_taps", None)
    distiller = Distiller(teacher, collab, slimmed, branches, features, template,
                          features if perceptual_taps is None else perceptual_taps, chosen, beta,
                          tuple(int(d) for d in example.shape), seed)
    distiller.latent = slimming.latent
    if quantize == "int8":
        distiller.enable_int8()
    return distiller
