"""The experiment file's schema: one YAML file describes one sweep.

Every block forbids unknown keys, so a typo is an error that names the valid keys instead of a
setting that is silently ignored. Relative paths are kept as written here and resolved against
the experiment file's folder by :mod:`tunevlseg.config.loader`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tunevlseg.catalog import LEARNERS, MODELS
from tunevlseg.data.unseen import duplicate_problems
from tunevlseg.learners.hclip_options import HCLIP_OPTIONS, hclip_problems
from tunevlseg.learners.options import (
    INIT_CHOICES,
    OPTIONS,
    TEXT_INITS,
    option_problems,
)
from tunevlseg.learners.vlpt_options import VLPT_OPTIONS, vlpt_problems
from tunevlseg.train.settings import monitor_mode

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
"""Names that become study names, folder names and SLURM job names: no spaces, no shell."""
SAFE_TEXT = r"^[^\x00-\x1f\x7f]*$"
"""No control characters (a newline in an sbatch value would start a new script line)."""
ProtocolMonitor = Literal["val_dice", "val_loss"]
"""What the LR scheduler and early stopping may watch (both are logged every validation)."""


class Strict(BaseModel):
    """A block of the experiment file: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(Strict):
    """A pretrained segmentation model to tune."""

    name: str = Field(description="model family: " + ", ".join(MODELS))
    pretrained: str | None = Field(
        default=None, description="local folder or Hugging Face hub id (default per family)"
    )
    label: str | None = Field(default=None, description="short name in study names")
    image_size: int | None = Field(default=None, ge=32, le=2048)
    synthetic: bool = Field(
        default=False,
        description="write a tiny randomly initialised model at `pretrained` if it is absent "
        "(demo and tests)",
    )

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
        return name

    @field_validator("label")
    @classmethod
    def _label_is_a_name(cls, label: str | None) -> str | None:
        if label is not None and not re.match(NAME_PATTERN, label):
            raise ValueError(f"{label!r} may only use letters, digits, '_', '.', '-'")
        return label

    @model_validator(mode="after")
    def _synthetic_needs_folder(self) -> ModelEntry:
        if self.synthetic and self.pretrained is None:
            raise ValueError("a synthetic model needs `pretrained:` (the folder to write it to)")
        return self

    @property
    def key(self) -> str:
        return self.label or self.name

    @property
    def resolved_pretrained(self) -> str:
        return self.pretrained or MODELS[self.name].default_pretrained


class LearnerEntry(Strict):
    """A context learner; ``space`` overrides its search space, ``options`` fixes settings.

    ``datasets`` restricts the learner to some of the file's data sets, because a paper's
    table need not have every row on every set (TuneVLSeg's E2E rows exist only for the
    natural sets); the names are checked against ``datasets:`` in :mod:`tunevlseg.config.checks`.
    """

    name: str
    label: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="name in study names and tables, for two entries of one learner (e.g. "
        "MaPLe with two initialisations: labels maple-gaussian and maple-text)",
    )
    space: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    datasets: list[str] | None = Field(
        default=None,
        description="run this learner only on these data sets (names from `datasets:`); "
        "default: every data set",
    )

    @property
    def key(self) -> str:
        """The entry's name in study names: its label, else the learner's name."""
        return self.label or self.name

    @field_validator("name")
    @classmethod
    def _known_learner(cls, name: str) -> str:
        if name not in LEARNERS:
            raise ValueError(f"unknown learner {name!r}; known learners: {', '.join(LEARNERS)}")
        return name

    @field_validator("options")
    @classmethod
    def _known_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        unknown = set(options) - set(LEARNER_OPTIONS)
        if unknown:
            valid = ", ".join(f"{k} ({v})" for k, v in LEARNER_OPTIONS.items())
            raise ValueError(f"unknown option(s) {sorted(unknown)}; valid options: {valid}")
        inits = INIT_CHOICES.get(info.data.get("name", ""), TEXT_INITS)
        if "init" in options and options["init"] not in inits:
            raise ValueError(f"init must be {' | '.join(inits)}, got {options['init']!r}")
        problems = option_problems(info.data.get("name"), options)  # no name: it was refused
        if problems:
            raise ValueError("; ".join(problems))
        return options

    @field_validator("options")
    @classmethod
    def _own_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """A learner's own options (vlpt's, hclip's) only on that learner, with valid values:
        the learner's rules, written once beside it and checked here without torch."""
        learner = info.data.get("name")  # absent when the name itself was refused
        problems = []
        for owner, names, rules in OWN_OPTIONS:
            given = {key: value for key, value in options.items() if key in names}
            if given and learner not in (None, owner):
                problems.append(
                    f"option(s) {', '.join(sorted(given))} belong to {owner}, not {learner}"
                )
            else:
                problems += rules(given)
        if problems:
            raise ValueError("; ".join(problems))
        return options


OWN_OPTIONS = (("vlpt", VLPT_OPTIONS, vlpt_problems), ("hclip", HCLIP_OPTIONS, hclip_problems))
"""Options only one learner takes: (learner, option descriptions, the rules of their values)."""


LEARNER_OPTIONS = {
    "init": "text context initialisation: embedding | gaussian | layerwise; "
    "vpt: uniform | gaussian",
    **VLPT_OPTIONS,
    **OPTIONS,
    **HCLIP_OPTIONS,
}


UPSAMPLER_INPUT_MODELS = ("cris",)
"""Model families whose upsampler can read another map than its default
(``model.upsampler_input``); CLIPSeg's reads its decoder's last map, with no choice."""


class DatasetEntry(Strict):
    """A data set on disk."""

    name: str = Field(pattern=NAME_PATTERN)
    root: Path
    category: str = Field(default="Other", description="column group in the result tables")
    format: Literal["medvlsm", "natural"] = "medvlsm"
    prompt_key: str | None = Field(
        default=None, description="prompt key (p0..pN) for MedVLSM sets; default data.prompt_key"
    )
    synthetic: bool = Field(
        default=False, description="write a small synthetic set at `root` if it is absent"
    )
    unseen_classes: list[str] | None = Field(
        default=None,
        description="this data set's own data.unseen_classes (natural sets); [] = none unseen",
    )

    @field_validator("unseen_classes")
    @classmethod
    def _unseen_form(cls, names: list[str] | None) -> list[str] | None:
        return _unseen_names_form(names)


class ModelSettings(Strict):
    """Settings shared by every model of the sweep (grid axes: ``model.<key>``)."""

    n_ctx: int = Field(default=4, ge=1, le=64, description="context tokens per prompt")
    use_upsampler: bool = True
    vision_prompts_in_decoder: bool = Field(
        default=True,
        description="visual prompt tokens go on through CLIPSeg's decoder and are dropped only "
        "before the reshape to the patch grid (the paper's eq. 8, as the authors' code does); "
        "false drops them before the decoder. No effect without visual prompts (CRIS, CoOp)",
    )
    prompt_suffix: str = Field(
        default="",
        description="appended to every text prompt before it is tokenized, in training, "
        "validation and test alike (the paper's authors append '.'); '' leaves prompts as read",
    )
    upsampler_padding: Literal["zeros", "replicate"] = Field(
        default="zeros",
        description="border padding of the upsampler's 5x5 convolution: zeros, or replicate "
        "(the edge pixels repeated, as the authors' code does)",
    )
    upsampler_input: Literal["projector", "decoder"] = Field(
        default="projector",
        description="CRIS only: the map its upsampler reads, projector = the projector's "
        "stride-4 map (256 channels), decoder = the decoder output (512 channels at stride 16, "
        "narrowed to 64 by a 1x1 convolution; the authors' head). CLIPSeg studies keep "
        "projector, and a file without a CRIS model may not set decoder",
    )

    @field_validator("prompt_suffix")
    @classmethod
    def _suffix_is_plain_text(cls, suffix: str) -> str:
        """A newline or tab in a suffix is a quoting slip, not a prompt anyone means."""
        bad = sorted({repr(c) for c in suffix if ord(c) < 32 or ord(c) == 127})
        if bad:
            raise ValueError(
                f"prompt_suffix contains the control character(s) {', '.join(bad)}; use plain "
                "text such as '.'"
            )
        return suffix


class AugmentationSettings(Strict):
    """The training augmentation (``data.augmentation``); evaluation never augments.

    The defaults are the TuneVLSeg paper's augmentation as this package always ran it: each
    transform with probability 0.5, zeros outside the warped image. A protocol that differs
    (another probability, edge pixels repeated into the border) is set here rather than in
    code, so that it is part of the study's stored definition and of each trial's identity.
    """

    affine_p: float = Field(
        default=0.5, ge=0, le=1, description="probability of the scale/translate/rotate warp"
    )
    color_p: float = Field(
        default=0.5, ge=0, le=1, description="probability of the brightness/contrast change"
    )
    border_mode: Literal["constant", "replicate"] = Field(
        default="constant",
        description="pixels the warp brings in from outside the image: constant = zeros "
        "(image and mask), replicate = the nearest edge pixel",
    )


class DataSettings(Strict):
    """Data settings shared by every data set (grid axes: ``data.<key>``)."""

    prompt_key: str = Field(default="p1", pattern=r"^p\d+$")
    num_workers: int = Field(default=4, ge=0, le=64)
    train_fraction: float | None = Field(default=None, gt=0, le=1)
    val_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="natural sets without a test split (what `tvls-data binarize` writes): "
        "this share of the train images, held out by image with a fixed data seed, is the "
        "validation split and the official val split is the test split, so model selection "
        "never sees test images; no effect on MedVLSM sets or sets with annotations/test",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="decoded, resized images cached here once per (data set, size); best on "
        "node-local disk, e.g. /tmp/tvls-cache; none = decode every epoch",
    )
    augmentation: AugmentationSettings = AugmentationSettings()
    unseen_classes: list[str] = Field(
        default_factory=list,
        description="natural (multi-class) sets: classes whose samples are left out of training "
        "and validation and tested like the others (the zero_shot table: mIoU on seen and "
        "unseen classes, hIoU); class folder names or their natural spelling ('potted plant' "
        "for potted_plant); a data set's own `unseen_classes:` replaces this list",
    )

    @field_validator("unseen_classes")
    @classmethod
    def _unseen_form(cls, names: list[str]) -> list[str]:
        return _unseen_names_form(names) or []


def _unseen_names_form(names: list[str] | None) -> list[str] | None:
    """The form of an unseen-class list: real names, each class once (up to spelling). Whether
    they are classes of the data set is known only with its files (the launch's preflight)."""
    problems = duplicate_problems(names or [])
    if problems:
        raise ValueError("; ".join(f"[{index}] {message}" for index, message in problems))
    return names


class SchedulerSettings(Strict):
    """ReduceLROnPlateau (``training.scheduler``): the LR times ``factor`` after ``patience``
    epochs without improvement of ``monitor``. The defaults are what every trial always used.
    """

    monitor: ProtocolMonitor | None = Field(
        default=None, description="val_dice | val_loss; null = search.objective"
    )
    factor: float = Field(default=0.5, gt=0, lt=1, description="LR multiplier on a plateau")
    patience: int = Field(default=3, ge=0, description="epochs without improvement first")


class EarlyStoppingSettings(Strict):
    """Early stopping (``training.early_stopping``).

    ``training.patience`` stays the short form of ``patience`` here (the shipped experiment
    files use it); giving both with different values is an error (see
    :mod:`tunevlseg.config.checks`), so neither silently wins.
    """

    monitor: ProtocolMonitor | None = Field(
        default=None, description="val_dice | val_loss; null = search.objective"
    )
    patience: int | None = Field(
        default=None, ge=1, description="epochs without improvement; null = training.patience"
    )


class TrainingSettings(Strict):
    """The training loop of one trial (grid axes: ``training.<key>``)."""

    max_epochs: int = Field(default=200, ge=1)
    min_epochs: int = Field(
        default=0, ge=0, description="epochs before early stopping may end a trial; 0 = none"
    )
    patience: int = Field(
        default=10,
        ge=1,
        description="early-stopping patience in epochs (short form of early_stopping.patience)",
    )
    batch_size: int = Field(default=32, ge=1)
    effective_batch_size: int = Field(default=32, ge=1)
    precision: Literal["auto", "32", "16-mixed", "bf16-mixed"] = "auto"
    seed: int = 0
    dice_smooth: float = Field(
        default=1.0,
        gt=0,
        description="smoothing of the loss's soft Dice term, (2·overlap + s) / (sum + s): 1.0 "
        "here, 1e-5 in the authors' code (MONAI's DiceCELoss)",
    )
    scheduler: SchedulerSettings = SchedulerSettings()
    early_stopping: EarlyStoppingSettings = EarlyStoppingSettings()

    @field_validator("min_epochs")
    @classmethod
    def _min_within_max(cls, min_epochs: int, info: ValidationInfo) -> int:
        """A field validator (not a model one) so the error names ``training.min_epochs``."""
        max_epochs = info.data.get("max_epochs")  # absent when it failed validation itself
        if max_epochs is not None and min_epochs > max_epochs:
            raise ValueError(f"min_epochs ({min_epochs}) must be at most max_epochs ({max_epochs})")
        return min_epochs

    @property
    def stopping_patience(self) -> int:
        """Early-stopping patience: ``early_stopping.patience``, else ``patience``."""
        if self.early_stopping.patience is not None:
            return self.early_stopping.patience
        return self.patience

    @model_validator(mode="after")
    def _batch_fits(self) -> TrainingSettings:
        if self.effective_batch_size < self.batch_size:
            raise ValueError("effective_batch_size must be at least batch_size")
        return self


class NoPruner(Strict):
    """Every trial runs until early stopping or ``max_epochs`` (the paper's protocol)."""

    name: Literal["none"] = "none"


class AshaPruner(Strict):
    """Asynchronous successive halving (Li et al., MLSys 2020; Optuna's
    ``SuccessiveHalvingPruner``): at epochs ``min_resource * reduction_factor**k`` a trial goes on
    only if it is in the top ``1 / reduction_factor`` of the trials that reached that epoch."""

    name: Literal["asha"]
    min_resource: int = Field(default=1, ge=1, description="epochs before the first rung")
    reduction_factor: int = Field(default=3, ge=2, description="keep the top 1/reduction_factor")
    min_early_stopping_rate: int = Field(default=0, ge=0, description="skip this many rungs")
    bootstrap_count: int = Field(
        default=0,
        ge=0,
        description="trials that must reach a rung before any goes past it; the first ones are "
        "pruned there (a task cannot wait for others), so keep 0 unless the budget is large",
    )


class HyperbandPruner(Strict):
    """Hyperband (Li et al., JMLR 2018): several successive-halving brackets of different
    aggressiveness; each trial is assigned to one bracket by its number."""

    name: Literal["hyperband"]
    min_resource: int = Field(default=1, ge=1, description="epochs before the first rung")
    max_resource: int | None = Field(
        default=None, ge=1, description="epochs of a full trial; null = training.max_epochs"
    )
    reduction_factor: int = Field(default=3, ge=2)
    bootstrap_count: int = Field(default=0, ge=0)


class MedianPruner(Strict):
    """Stop a trial whose best value so far is worse than the median of the other trials'
    values at the same epoch."""

    name: Literal["median"]
    n_startup_trials: int = Field(
        default=5, ge=0, description="finished trials before anything is pruned"
    )
    n_warmup_steps: int = Field(default=0, ge=0, description="epochs of a trial never pruned")
    interval_steps: int = Field(default=1, ge=1, description="check every this many epochs")
    n_min_trials: int = Field(
        default=1, ge=1, description="trials that must have reached the epoch to compare with"
    )


class WilcoxonPruner(Strict):
    """Stop a trial whose per-image validation scores are significantly worse than the best
    trial's (a one-sided Wilcoxon signed-rank test over the validation images, paired by image;
    Optuna's ``WilcoxonPruner``)."""

    name: Literal["wilcoxon"]
    p_threshold: float = Field(default=0.1, gt=0, lt=1, description="prune below this p-value")
    n_startup_steps: int = Field(
        default=2, ge=0, description="validation images compared before a test is trusted"
    )
    n_warmup_epochs: int = Field(default=1, ge=0, description="epochs of a trial never pruned")


PrunerSettings = Annotated[
    NoPruner | AshaPruner | HyperbandPruner | MedianPruner | WilcoxonPruner,
    Field(discriminator="name"),
]
PRUNER_NAMES = ("none", "asha", "hyperband", "median", "wilcoxon")


class SearchSettings(Strict):
    """How each study is searched."""

    n_trials: int = Field(default=20, ge=1, le=100_000)
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = 0
    n_startup_trials: int = Field(default=5, ge=0)
    objective: Literal["val_dice", "val_iou", "val_loss"] = Field(
        default="val_dice",
        description="validation metric a study optimises and the best checkpoint is chosen by: "
        "val_dice and val_iou are maximised, val_loss (Dice + 0.2 BCE) minimised",
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        description="re-runs of a trial whose process died or met an "
        "infrastructure error (lost node, storage outage, out of memory)",
    )
    max_failures: int = Field(
        default=3,
        ge=1,
        description="trials failed by an error of their own (configuration, "
        "data, a bug: not retried) after which a study stops taking new trials",
    )
    space: dict[str, Any] = Field(
        default_factory=dict, description="overrides for every learner that has the parameter"
    )
    pruner: PrunerSettings = Field(
        default_factory=NoPruner,
        description="stop bad trials early: none | asha | hyperband | median | wilcoxon, "
        "e.g. {name: asha, min_resource: 1, reduction_factor: 3}",
    )

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_name_alone(cls, pruner: Any) -> Any:
        """``pruner: asha`` is short for ``pruner: {name: asha}``."""
        if isinstance(pruner, str):
            return {"name": pruner}
        if isinstance(pruner, dict) and "name" not in pruner:
            raise ValueError(f"a pruner needs a `name:` ({', '.join(PRUNER_NAMES)})")
        return pruner

    @property
    def direction(self) -> str:
        """Optuna's direction for the objective: overlap scores up, the loss down.

        Every consumer (study creation, progress, the collector's best trial, plots,
        importances) reads it from here, so a minimised objective is minimised everywhere.
        """
        return "minimize" if monitor_mode(self.objective) == "min" else "maximize"


SBATCH_KEY = r"^[a-z][a-z0-9-]*$"


class SlurmSettings(Strict):
    """Site settings for the array tasks; every value is quoted in the job script."""

    partition: str | None = Field(default=None, pattern=SAFE_TEXT)
    account: str | None = Field(default=None, pattern=SAFE_TEXT)
    qos: str | None = Field(default=None, pattern=SAFE_TEXT)
    gpus: int = Field(default=1, ge=0, le=16, description="GPUs per task (--gres=gpu:N)")
    gpu_type: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    cpus_per_task: int = Field(default=8, ge=1)
    mem_gb: float = Field(default=32, gt=0)
    constraint: str | None = Field(default=None, pattern=SAFE_TEXT)
    signal_delay_s: int = Field(
        default=120, ge=10, description="USR2 this long before the time limit, to checkpoint"
    )
    max_array_size: int | None = Field(
        default=None, ge=1, description="default: MaxArraySize from `scontrol show config`"
    )
    extra: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="more sbatch options, e.g. {reservation: gpu-week}"
    )
    collector_partition: str | None = Field(default=None, pattern=SAFE_TEXT)
    collector_timeout_min: int = Field(default=60, ge=1)

    @field_validator("extra")
    @classmethod
    def _safe_extra(cls, extra: dict[str, Any]) -> dict[str, Any]:
        for key, value in extra.items():
            if not re.match(SBATCH_KEY, key):
                raise ValueError(f"{key!r} is not an sbatch option name (lowercase, digits, '-')")
            if isinstance(value, str) and not re.match(SAFE_TEXT, value):
                raise ValueError(f"{key}: control characters are not allowed")
        reserved = {"array", "output", "error", "signal", "dependency", "job-name", "open-mode"}
        clash = sorted(reserved & set(extra))
        if clash:
            raise ValueError(f"{', '.join(clash)} are set by tunevlseg and cannot be overridden")
        return extra


class ContainerSettings(Strict):
    """Run each task inside an Apptainer image (``apptainer exec --nv``)."""

    image: Path | None = Field(default=None, description="the .sif file; none = host Python")
    binds: list[str] = Field(default_factory=list, description="extra bind paths (src[:dst])")
    apptainer: str = Field(default="apptainer", pattern=r"^[A-Za-z0-9_./-]+$")

    @field_validator("binds")
    @classmethod
    def _safe_binds(cls, binds: list[str]) -> list[str]:
        for bind in binds:
            if not bind or "," in bind or not re.match(SAFE_TEXT, bind):
                raise ValueError(f"{bind!r}: a bind is a path (src or src:dst) without ','")
        return binds


class StorageProxySettings(Strict):
    """The storage proxy job a SLURM launch starts in front of its PostgreSQL storage
    (``docs/storage.md``): tasks talk to it over gRPC and hold no database connection."""

    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="port the proxy listens on (default: any free port; tasks find it in "
        "<output_dir>/<sweep>/storage-proxy.json)",
    )
    connections: int = Field(
        default=5,
        ge=2,
        le=100,
        description="PostgreSQL connections the proxy holds (and calls it serves at once)",
    )
    timeout_min: int = Field(
        default=1440,
        ge=10,
        description="the proxy job's time limit; it is requeued when it runs out (tasks wait "
        "up to storage_retry_s for it), so a long sweep wants the partition's maximum",
    )
    mem_gb: int = Field(default=2, ge=1, description="memory of the proxy job")
    partition: str | None = Field(
        default=None,
        pattern=SAFE_TEXT,
        description="partition of the proxy job (default: collector_partition, else partition)",
    )


class ClusterSettings(Strict):
    """Where and how trials run."""

    parallelism: int = Field(
        default=8,
        ge=1,
        description="tasks running at once: the %N throttle of each array job (a plan larger "
        "than MaxArraySize is several arrays, each with this limit), or local processes",
    )
    timeout_min: int = Field(default=240, ge=1, description="time limit of one task")
    max_timeouts: int = Field(
        default=1000,
        ge=0,
        description="requeues after reaching timeout_min that one trial may use (submitit's "
        "max_num_timeout); each resumes at the next epoch, so max_epochs, not this, bounds a "
        "trial's work",
    )
    storage_retry_s: int = Field(
        default=180,
        ge=10,
        description="seconds a task retries a failed storage call (a database restart, an NFS "
        "hiccup) before giving up; tasks get it as TVLS_STORAGE_RETRY_S",
    )
    hf_home: Path | None = Field(
        default=None, description="shared Hugging Face cache (default: $HF_HOME at launch)"
    )
    allow_journal_on_network_fs: bool = Field(
        default=False,
        description="launch on SLURM with a journal:// storage on a network file system (NFS, "
        "Lustre, GPFS, BeeGFS, CephFS, SMB) although the tasks can land on several nodes, "
        "where Optuna's journal file lock is not reliable (docs/storage.md); by default such "
        "a launch is refused and postgresql:// is the safe choice",
    )
    storage_proxy: StorageProxySettings | None = Field(
        default=None,
        description="start Optuna's gRPC storage proxy as a SLURM job in front of the "
        "postgresql:// storage; the tasks talk only to it (docs/storage.md)",
    )
    postgres_pooler: bool = Field(
        default=False,
        description="the postgresql:// URL names a connection pooler (PgBouncer), not the "
        "server: the launch does not count the sweep's connections against the server's "
        "max_connections (the pooler's own limits apply)",
    )
    slurm: SlurmSettings = SlurmSettings()
    container: ContainerSettings = ContainerSettings()


class ExperimentSpec(Strict):
    """One experiment file = one sweep."""

    name: str = Field(pattern=NAME_PATTERN, description="sweep name, the study-name prefix")
    description: str = ""
    output_dir: Path = Field(description="folder for trials, manifest and tables")
    storage: str | None = Field(
        default=None,
        description="journal:///abs/path.log, sqlite:///rel.db, postgresql://... "
        "(default: a journal file in output_dir)",
    )
    models: list[ModelEntry] = Field(min_length=1)
    learners: list[LearnerEntry] = Field(min_length=1)
    datasets: list[DatasetEntry] = Field(min_length=1)
    model: ModelSettings = ModelSettings()
    data: DataSettings = DataSettings()
    training: TrainingSettings = TrainingSettings()
    search: SearchSettings = SearchSettings()
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="axes of fixed settings, e.g. model.use_upsampler"
    )
    cluster: ClusterSettings = ClusterSettings()

    @field_validator("learners", mode="before")
    @classmethod
    def _names_are_entries(cls, learners: Any) -> Any:
        if isinstance(learners, list):
            return [{"name": x} if isinstance(x, str) else x for x in learners]
        return learners

    @field_validator("models", mode="before")
    @classmethod
    def _model_names_are_entries(cls, models: Any) -> Any:
        if isinstance(models, list):
            return [{"name": x} if isinstance(x, str) else x for x in models]
        return models

    @field_validator("output_dir")
    @classmethod
    def _output_dir_is_plain_text(cls, output_dir: Path) -> Path:
        """A newline or other control character would break job scripts and log names."""
        bad = sorted({repr(c) for c in str(output_dir) if ord(c) < 32 or ord(c) == 127})
        if bad:
            raise ValueError(
                f"output_dir contains the control character(s) {', '.join(bad)}; choose a plain folder name"
            )
        return output_dir
