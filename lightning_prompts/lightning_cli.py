"""The Lightning side of the ``lightning-prompts`` command: LightningCLI in subclass mode.

Imported only when a Lightning subcommand runs (``fit``, ``validate``, ``test``, ``predict``), so that
``lightning-prompts --help`` and ``lightning-prompts list`` stay fast.

* Every registered class is importable by its short name (``class_path: CoOp``), because the registered
  modules are imported before parsing.
* Recipes may ``extends`` other files (:mod:`lightning_prompts.recipes`).
* The training classes flow from the data module to the model (``data.classnames`` ->
  ``model.classnames``), so a recipe never lists them twice.
* The experiment is checked before the Trainer starts (``check_ready``), so a run that cannot work
  writes nothing.
* A run of ``recipes/<path>.yaml`` writes under ``outputs/<path>/`` unless ``trainer.default_root_dir``
  is given, and keeps ``checkpoints/last.ckpt`` and ``checkpoints/best.ckpt`` (best validation
  accuracy, or the method's ``checkpoint_monitor``) unless the config sets its own ``ModelCheckpoint``
  or ``enable_checkpointing: false``.
* ``--ckpt_path last`` / ``best`` name the newest such checkpoint of the run folder, and finding none
  is an error (Lightning would silently evaluate the untrained model).
* A resumed ``fit`` that ``EarlyStopping`` had ended stops before its first step, as the uninterrupted run did
  (:class:`~lightning_prompts.resume.KeepEarlyStoppingDecision`).
* ``--ckpt_path`` never rewrites the config: a checkpoint trained with another backbone, other
  hyperparameters or other classes than the config is an error that names the differences.
"""

from __future__ import annotations

import functools
import json
import logging
import operator
import types
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from lightning_prompts import registry
from lightning_prompts.errors import ConfigurationError
from lightning_prompts.recipes import EXTENDS, expand_config_args


class _NoAdvertisements(logging.Filter):
    """Lightning logs tips about optional paid services on every run; the command leaves them out."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).lstrip().startswith("💡 Tip")


def quiet() -> None:
    """The command's output: Lightning's progress and results, without advertisements or deprecation
    notices about Lightning's own internals (a user cannot act on either)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoAdvertisements) for f in logger.filters):
            logger.addFilter(_NoAdvertisements())
        for handler in logger.handlers:
            if not any(isinstance(f, _NoAdvertisements) for f in handler.filters):
                handler.addFilter(_NoAdvertisements())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
    # the default logger is CSVLogger (our recipes name it); Lightning's note that TensorBoard is optional
    warnings.filterwarnings("ignore", message=r"Starting from v1\.9\.0, `tensorboardX` has been removed")


def already_expanded(value: Any) -> None:
    """The parsed value of a recipe's ``extends``: none. :func:`run_cli` has put the files it names in as ``--config``
    options before this one (:func:`~lightning_prompts.recipes.expand_config_args`, which also checks the value), so
    the parsed config holds no ``extends``: what ``--print_config`` prints and a run saves runs as it is, from any
    folder (a kept file name would be read against the folder of the printed file)."""
    return None


class PromptsCLI(LightningCLI):
    """LightningCLI with the links, checks and checkpoint rules every recipe relies on."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for action in parser._actions:  # jsonargparse keeps each option's type hint on its action
            typehint = getattr(action, "_typehint", None)
            if typehint is not None:
                action._typehint = int_before_float(typehint)
        parser.link_arguments("data.classnames", "model.init_args.classnames", apply_on="instantiate")
        parser.add_argument(
            f"--{EXTENDS}",
            type=already_expanded,
            default=None,
            help="Recipe files this one builds on; lightning-prompts expands them into --config options.",
        )

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        # validate/test print our one table after the run, not Lightning's (one column per loader, the same
        # numbers in each); ``verbose`` is added after add_arguments_to_parser, so its default is set here
        if any(action.dest == "verbose" for action in parser._actions):
            parser.set_defaults(verbose=False)
        return parser

    def after_test(self) -> None:
        print_results(self.trainer.callback_metrics, "test")

    def after_validate(self) -> None:
        print_results(self.trainer.callback_metrics, "val")

    def after_predict(self) -> None:
        written = write_predictions(self.trainer, getattr(self.model, "classnames", None))
        if written is not None:
            print(f"predictions: {written}")

    def before_instantiate_classes(self) -> None:
        self._check_ckpt_path()
        section = self.config.get(self.subcommand) if self.subcommand else self.config
        if section is None:
            return
        trainer = section.get("trainer")
        if trainer is not None and trainer.get("default_root_dir") is None:
            folder = run_folder(section.get("config") or [])
            if folder is not None:
                trainer["default_root_dir"] = str(folder)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        from lightning.pytorch.callbacks import ModelCheckpoint

        from lightning_prompts.resume import KeepEarlyStoppingDecision

        configured = [*(config.get("callbacks") or []), *callbacks]
        wanted = config.get("enable_checkpointing") is not False and not config.get("fast_dev_run")
        if wanted and not any(isinstance(callback, ModelCheckpoint) for callback in configured):
            callbacks = [*callbacks, *default_checkpoints(self.model, getattr(self, "datamodule", None))]
        return super()._instantiate_trainer(config, [*callbacks, KeepEarlyStoppingDecision()])

    # Check the experiment before the Trainer starts: inside fit, Lightning's SaveConfigCallback
    # writes config.yaml before the module's setup runs, and a run that cannot work should leave
    # nothing behind.
    def before_fit(self) -> None:
        self._check_ready("fit")

    def before_validate(self) -> None:
        self._check_ready("validate")

    def before_test(self) -> None:
        self._check_ready("test")

    def before_predict(self) -> None:
        self._check_ready("predict")

    def _check_ready(self, stage: str) -> None:
        check_writable(Path(self.trainer.default_root_dir))
        setup = getattr(self.datamodule, "setup", None)
        if callable(setup):  # reads and verifies the data now (Lightning's own call then finds it done)
            setup(stage)
        from lightning_prompts.methods.base.module import check_precision_for_backbone

        check_precision_for_backbone(self.model, self.trainer.precision)
        check_trainer = getattr(self.model, "check_trainer", None)
        if callable(check_trainer):
            check_trainer(stage, self.trainer)
        check = getattr(self.model, "check_ready", None)
        if callable(check):
            check(stage, self.trainer.callbacks, self.datamodule)
        if stage != "fit":
            self._warn_if_untrained(stage)
        else:
            _check_training_length(self.trainer)
            check_optimizer = getattr(self.model, "check_optimizer", None)
            if callable(check_optimizer):
                check_optimizer()
            if self.trainer.world_size > 1 and not any(p.requires_grad for p in self.model.parameters()):
                # one process validates instead; several would stop in DDP's wrapper ("DistributedDataParallel is not
                # needed when a module doesn't have any parameter that requires a gradient")
                raise ConfigurationError(
                    f"{type(self.model).__name__} has nothing to train, and fit on {self.trainer.world_size} "
                    f"processes would stop before its first step; evaluate it with `lightning-prompts test` (or "
                    "`validate`) and the same arguments, which runs on several devices."
                )
        trained = getattr(self, "_checkpoint_classes", None)
        mine = getattr(self.model, "classnames_for_training", None)
        accepts = getattr(self.model, "accepts_trained_classes", None)
        if trained and mine is not None and not (accepts(trained) if callable(accepts) else list(trained) == mine):
            raise ConfigurationError(
                f"--ckpt_path {self._checkpoint_path} was trained on classes {_names(trained)} but this config's data "
                f"module provides {_names(mine)}; run with the config it was trained with."
            )

    def _warn_if_untrained(self, stage: str) -> None:
        """Evaluating a method that trains, with neither ``--ckpt_path`` nor ``prompt_init``, scores the prompt's
        initialisation: right for test-time tuning, almost never meant otherwise (a documented ``test`` command once
        reported an untrained prompt's accuracy without a word)."""
        section = self.config.get(self.subcommand) or {}
        keys = getattr(self.model, "trainable_state_keys", None)
        resolve = getattr(self.model, "resolve_evaluator", None)
        evaluator = resolve(self.datamodule) if callable(resolve) else None
        hparams = getattr(self.model, "hparams", {}) or {}
        if section.get("ckpt_path") or not callable(keys) or not keys() or hparams.get("prompt_init"):
            return
        if getattr(evaluator, "tunes_at_test_time", False):
            return
        rank_zero_warn(
            f"{stage} without --ckpt_path: {type(self.model).__name__}'s prompt is its initialisation, not a trained "
            f"one. Give --ckpt_path best, last or a file (or prompt_init) to evaluate a trained prompt."
        )

    def _parse_ckpt_path(self) -> None:
        """Lightning (2.6 and later) calls this after parsing to merge the checkpoint's hyperparameters over the
        config; we never merge, and check them against it instead (:meth:`_check_ckpt_path`, which runs from
        :meth:`before_instantiate_classes` so that Lightning versions without this call check too)."""

    def _check_ckpt_path(self) -> None:
        """Resolve ``last``/``best`` and compare the checkpoint's hyperparameters with the config, before any
        class is instantiated (so before Lightning or anyone else reads the file)."""
        if not self.config.get("subcommand"):
            return
        section = self.config[self.config.subcommand]
        _only_weights(section)
        ckpt_path = section.get("ckpt_path")
        if ckpt_path in ("last", "best"):
            root = Path(
                (section.get("trainer") or {}).get("default_root_dir") or run_folder(section.get("config") or []) or "."
            )
            ckpt_path = section["ckpt_path"] = str(find_checkpoint(root, ckpt_path))
        if not ckpt_path:
            return
        from lightning_prompts.methods.base.checkpointing import read_checkpoint

        checkpoint = read_checkpoint(ckpt_path)
        stored = checkpoint.get("hyper_parameters") or {}
        self._checkpoint_path, self._checkpoint_classes = ckpt_path, stored.get("classnames")
        dump = self.parser.dump(self.config, skip_link_targets=False, skip_none=False, format="json")
        model = json.loads(dump)[self.config.subcommand].get("model") or {}
        method = (checkpoint.get("lightning_prompts") or {}).get("method")
        configured = _class_name(model) or ""
        arguments = model.get("init_args") or {}
        resolved = {
            key
            for key in method_hparams(configured, "data_resolved_hparams")
            if arguments.get(key) is None and stored.get(key) is not None
        }
        for key in resolved:  # rebuilt as trained: the data may resolve another value (another seed, other shots)
            self.config[f"{self.config.subcommand}.model.init_args.{key}"] = stored[key]
        differences = compare_hparams(stored, arguments, method_hparams(configured, "test_time_hparams") | resolved)
        if method and configured and method != configured:
            differences.insert(0, f"method: checkpoint {method}, config {configured}")
        if self.config.subcommand == "fit":  # resuming restores the optimizer's and scheduler's state
            differences += _other_optimizer_classes(stored, model.get("init_args") or {})
        if differences:
            shown = "; ".join(differences[:5]) + ("; …" if len(differences) > 5 else "")
            raise ConfigurationError(
                f"--ckpt_path {ckpt_path} was trained with another configuration than this one ({shown}). Run with "
                f"the config it was trained with (the run's config.yaml) so the model is rebuilt as trained."
            )


def _check_training_length(trainer: Trainer) -> None:
    """Trainer settings Lightning accepts but a fit cannot use: ``max_epochs: 0`` trains nothing and writes no
    checkpoint (exit 0), ``accumulate_grad_batches: 0`` divides by zero at the first step."""
    if trainer.accumulate_grad_batches < 1:
        raise ConfigurationError(
            f"trainer.accumulate_grad_batches must be at least 1, got {trainer.accumulate_grad_batches}."
        )
    if trainer.max_epochs == 0 and trainer.max_steps in (-1, None):
        raise ConfigurationError("trainer.max_epochs is 0: fit would train nothing and write no checkpoint.")


def _other_optimizer_classes(stored: dict[str, Any], configured: dict[str, Any]) -> list[str]:
    """The optimizer and scheduler classes a resumed fit would change: their saved state fits only the class that
    wrote it (AdamW restoring SGD's state fails inside torch). Their other arguments may change on resume."""
    found = []
    for key in ("optimizer", "lr_scheduler"):
        before, now = (_class_name(value) for value in (stored.get(key), configured.get(key)))
        if before and now and before != now:
            found.append(f"{key}: checkpoint {before}, config {now} (resuming restores its state; start a new fit "
                         f"from the trained prompt with prompt_init instead)")  # fmt: skip
    return found


def _class_name(value: Any) -> str | None:
    if isinstance(value, dict) and value.get("class_path"):
        return str(value["class_path"]).rpartition(".")[2]
    return None


def _only_weights(section: Any) -> None:
    """Lightning reads checkpoints this command never pre-reads (``OnExceptionCheckpoint``'s file when ``fit``
    has no ``ckpt_path``, ``hpc_ckpt_N.ckpt`` under SLURM) with the ``weights_only`` the config gives; a config's
    ``weights_only: false`` would let such a file run code. It is always ``True`` (Lightning 2.6 and later have the
    argument; our checkpoints hold tensors and plain values only)."""
    if "weights_only" not in section:
        return
    if section["weights_only"] is False:
        raise ConfigurationError(
            "weights_only: false would let a checkpoint file run code when it is read; lightning-prompts reads every "
            "checkpoint as weights only (its checkpoints need nothing else). Remove the setting."
        )
    section["weights_only"] = True


def int_before_float(typehint: Any) -> Any:
    """``typehint`` with ``int`` tried before ``float`` when it is a union of both.

    jsonargparse tries a union's types in order, and Lightning writes ``limit_train_batches: int | float``
    (1 = one batch, 1.0 = all of them). But ``typing`` caches unions and treats ``Union[float, int]`` as equal to
    ``Union[int, float]``, so if any module built the former first (scikit-learn does, imported by transformers
    4.x through torchmetrics) Lightning's annotation *is* it, and ``--trainer.limit_train_batches 1`` parsed as
    1.0 silently trained on every batch. ``int | float`` (a ``types.UnionType``) is not cached.
    """
    args = typing.get_args(typehint)
    if typing.get_origin(typehint) not in (typing.Union, types.UnionType) or int not in args or float not in args:
        return typehint
    if args.index(int) < args.index(float):
        return typehint
    order = list(args)
    i, f = order.index(int), order.index(float)
    order[i], order[f] = float, int
    try:
        return functools.reduce(operator.or_, order)
    except TypeError:  # a member that does not support `|` (a string forward reference): leave it as it was
        return typehint


#: Hyperparameters that may differ between training and evaluating a checkpoint (the evaluator too: a
#: model trained for accuracy is then tested for OOD detection).
_IGNORED = frozenset(
    {"prompt_init", "classnames", "optimizer", "lr_scheduler", "lr_scheduler_interval", "param_group_lr", "evaluator"}
)
#: backbone arguments that change how the frozen model runs, not what was trained against it: a prompt trained with
#: block checkpointing, the shared-prefix pass, sub-batches or 16-bit weights is evaluated with or without them
#: (a text backbone's weight type and attention kernel are transformers' loading options, in its ``model_kwargs``)
_BACKBONE_RUN_OPTIONS = frozenset(
    [
        *(
            f"backbone.init_args.{name}"
            for name in ("gradient_checkpointing", "shared_prefix", "length_buckets", "dtype", "cache_dir")
        ),
        *(f"backbone.init_args.model_kwargs.{name}" for name in ("dtype", "torch_dtype", "attn_implementation")),
    ]
)


def method_hparams(method: str, which: str) -> frozenset[str]:
    """The registered method's ``test_time_hparams`` (arguments that may differ between training and evaluation)
    or ``data_resolved_hparams``; none for a class that is not registered: every argument is compared."""
    from lightning_prompts import registry

    try:
        return getattr(registry.resolve_class(method, "method"), which)
    except Exception:  # noqa: BLE001 - an unknown class is reported by the method comparison, not here
        return frozenset()


def compare_hparams(
    stored: dict[str, Any], configured: dict[str, Any], ignored: frozenset[str] = frozenset()
) -> list[str]:
    """``"key: checkpoint X, config Y"`` for every model argument both name with different values, except the
    ``ignored`` ones and those any method may change (optimizer, evaluator…)."""
    differences = []
    for key in sorted(set(stored) & set(configured)):
        if key in _IGNORED or key in ignored or key.startswith("_"):
            continue
        differences += _differences(key, _normalise(stored[key]), _normalise(configured[key]))
    return differences


def _differences(where: str, stored: Any, configured: Any) -> list[str]:
    """The differing leaves of two normalised values, named by their path (``backbone.init_args.width``),
    so a long nested config shows what differs instead of a shared prefix."""
    if stored == configured:
        return []
    if isinstance(stored, dict) and "class_path" not in stored and configured is None:
        configured = {}  # a keyword dictionary (model_kwargs) left out: compare key by key, run options aside
    if isinstance(configured, dict) and "class_path" not in configured and stored is None:
        stored = {}
    if (
        isinstance(stored, dict)
        and isinstance(configured, dict)
        and stored.get("class_path") == configured.get("class_path")
    ):
        found = []
        for key in sorted(set(stored) | set(configured)):
            if f"{where}.{key}" not in _BACKBONE_RUN_OPTIONS:
                found += _differences(f"{where}.{key}", stored.get(key), configured.get(key))
        return found
    if isinstance(stored, dict) and isinstance(configured, dict) and "class_path" in stored:
        return [f"{where}: checkpoint {stored['class_path']}, config {configured.get('class_path')}"]
    return [f"{where}: checkpoint {_short(stored)}, config {_short(configured)}"]


def _normalise(value: Any) -> Any:
    if isinstance(value, dict):
        items = {k: _normalise(v) for k, v in value.items() if v is not None}
        if "class_path" in items:  # the same class under a short or a full path
            items["class_path"] = str(items["class_path"]).rpartition(".")[2]
        return items
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def print_results(metrics: dict[str, Any], stage: str) -> None:
    """The stage's metrics as one table: a row per test set (base, novel, HM; a continual run's tasks),
    not Lightning's column per data loader (which repeats every epoch-level metric in each column)."""
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return
    rows = [
        (name[len(stage) + 1 :], float(value))
        for name, value in sorted(metrics.items())
        if name.startswith(f"{stage}/")
    ]
    if not rows:
        return
    width = max(len(name) for name, _ in rows)
    print(f"{'test' if stage == 'test' else 'validation'} results")
    for name, value in rows:
        print(f"  {name:<{width}}  {value:.4f}")


def write_predictions(trainer: Trainer, classnames: Sequence[str] | None = None) -> Path | None:
    """What ``predict`` returned, as ``predictions.safetensors`` in the run's log folder: per prediction set (one per
    loader, ``<i>/`` before the keys when there are several) the ``logits`` and the predicted class indices
    ``preds``, in the data set's order, with the class names in the metadata. Under DDP every process takes part
    and the first writes every process's share, put back in order. ``None`` when nothing was returned (with a
    warning where the launcher keeps nothing: DDP that spawns or forks its processes)."""
    import torch
    from safetensors.torch import save_file

    if not trainer.predict_loop.return_predictions:
        rank_zero_warn(
            "predict wrote no predictions.safetensors: Lightning kept no predictions (return_predictions false, or "
            f"strategy {type(trainer.strategy).__name__}, whose spawned or forked processes return none; strategy "
            "'ddp' launches one process per device as the command itself and keeps them)."
        )
        return None
    predictions = trainer.predict_loop.predictions
    loaders = predictions if predictions and isinstance(predictions[0], list) else [predictions]
    tensors: dict[str, torch.Tensor] = {}
    for index, batches in enumerate(loaders):
        prefix = f"{index}/" if len(loaders) > 1 else ""
        for key in ("logits", "preds"):
            parts = [batch[key] for batch in batches if isinstance(batch, dict) and key in batch]
            if parts:
                tensors[prefix + key] = torch.cat([part.detach().cpu() for part in parts]).contiguous()
    if trainer.world_size > 1:
        sources = trainer.predict_dataloaders
        sources = sources if isinstance(sources, (list, tuple)) else [sources]
        samples = {f"{index}/" if len(sources) > 1 else "": _length(source) for index, source in enumerate(sources)}
        tensors = _gathered_in_data_order(tensors, trainer.world_size, samples)
    if trainer.global_rank != 0 or not tensors:
        return None
    folder = Path(trainer.log_dir if trainer.logger is not None else trainer.default_root_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "predictions.safetensors"
    save_file(tensors, str(path), metadata={"classnames": json.dumps(list(classnames or []))})
    return path


def _length(loader: Any) -> int | None:
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None


def _gathered_in_data_order(tensors: dict[str, Any], processes: int, samples: dict[str, int | None]) -> dict[str, Any]:
    """Every process's prediction rows (a collective call), back in the data set's order. Process ``r`` of ``W``
    predicted samples ``r, r + W, …`` (the data modules' :class:`EvaluationShard`, and Lightning's own predict
    sampler, split a set that way), so rows that are samples (``samples[prefix]`` of them in all) interleave.
    Rows that are not (a node task's one graph gives a row per node) come from the processes that hold any: one
    process, the order it predicted; several, their rows in process order, with a warning."""
    import torch
    import torch.distributed as dist

    shares: list[dict[str, Any] | None] = [None] * processes
    dist.all_gather_object(shares, tensors)
    gathered = {}
    for key in dict.fromkeys(key for share in shares for key in (share or {})):
        parts = [(share or {}).get(key) for share in shares]
        sizes = [0 if part is None else part.shape[0] for part in parts]
        total, held = sum(sizes), [part for part in parts if part is not None and part.shape[0]]
        prefix = key.rpartition("/")[0] + "/" if "/" in key else ""
        if total == samples.get(prefix) and sizes == [len(range(r, total, processes)) for r in range(processes)]:
            rows = torch.empty((total, *held[0].shape[1:]), dtype=held[0].dtype)
            for rank, part in enumerate(parts):
                if part is not None and part.shape[0]:
                    rows[rank::processes] = part
        else:
            if len(held) > 1:
                rank_zero_warn(f"predict: the rows of {key} do not map to the data set's samples one by one; they are "
                               "written in process order.")  # fmt: skip
            rows = torch.cat(held) if held else next(part for part in parts if part is not None)
        gathered[key] = rows
    return gathered


def default_checkpoints(model: Any, datamodule: Any | None = None) -> list[Any]:
    """``checkpoints/best.ckpt`` (by the evaluator's ``monitor``, such as multi-label macro-F1, else the
    method's ``checkpoint_monitor``, validation accuracy by default) and
    ``checkpoints/last.ckpt`` (after every epoch). Two callbacks: Lightning's ``save_last`` only refreshes
    ``last.ckpt`` when a best checkpoint is saved, which would make "last" the best epoch's. ``last.ckpt`` is written
    at the end of the training epoch only, never at a validation inside it (recipes that validate every N steps):
    a training loader cannot resume mid-epoch, so a run resumed from there shuffled the rest of its epoch anew."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    monitor, mode = getattr(model, "checkpoint_monitor", ("val/acc", "max"))
    resolve = getattr(model, "resolve_evaluator", None)
    evaluator_monitor = getattr(resolve(datamodule), "monitor", None) if callable(resolve) else None
    if evaluator_monitor is not None:
        monitor, mode = evaluator_monitor
    best = ModelCheckpoint(filename="best", monitor=monitor, mode=mode, save_top_k=1, enable_version_counter=False)
    last = ModelCheckpoint(filename="last", save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True)
    return [best, last]


def check_writable(folder: Path) -> None:
    """Fail before anything runs if the run folder cannot be created or written (probed, not guessed:
    permission bits do not tell what a read-only mount or a file in the way will do)."""
    import tempfile

    ancestor = folder.resolve()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigurationError(f"the run folder {folder} cannot be created: {ancestor} is a file.")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        raise ConfigurationError(f"the run folder {folder} is not writable ({error.strerror}: {ancestor}).") from None


def run_folder(configs: Sequence[Any]) -> Path | None:
    """``outputs/<path>`` for the last recipe file ``recipes/<path>.yaml`` among the ``--config`` files
    (shared pieces and overlays in ``_``-prefixed folders or files do not count)."""
    for config in reversed(list(configs)):
        path = Path(str(getattr(config, "absolute", config))).resolve()
        parts = path.parts
        if "recipes" not in parts:
            continue
        relative = Path(*parts[len(parts) - parts[::-1].index("recipes") :])
        if any(part.startswith("_") for part in relative.parts):
            continue
        return Path("outputs") / relative.with_suffix("")
    return None


def find_checkpoint(root: Path, which: str) -> Path:
    """The newest ``checkpoints/<which>.ckpt`` under ``root`` (``which``: ``last`` or ``best``)."""
    found = sorted(root.glob(f"**/checkpoints/{which}*.ckpt"), key=lambda path: path.stat().st_mtime)
    if not found:
        raise ConfigurationError(
            f"--ckpt_path {which}: no checkpoints/{which}.ckpt under {root.resolve()} (run fit with this recipe "
            f"first, or give the checkpoint's path)."
        )
    return found[-1]


def _names(names: Sequence[str]) -> str:
    names = list(names)
    return f"[{', '.join(map(repr, names[:4]))}{', …' if len(names) > 4 else ''}] ({len(names)})"


def _short(value: Any) -> str:
    text = json.dumps(_normalise(value), default=str)
    return text if len(text) <= 80 else text[:77] + "…"


def nested_nulls_as_init_args(args: Sequence[str]) -> list[str]:
    """``--a.init_args.b.init_args.c null`` (or ``=null``) given as ``--a.init_args.b '{"init_args": {"c": null}}'``.

    jsonargparse (4.53) reads a null given this way to an argument of a class nested in another class's arguments
    (a backbone's ``checkpoint_path``) as the string ``"None"`` when a config had set it; the ``init_args`` form
    sets None and keeps the class's other arguments. Other arguments pass unchanged."""
    out: list[str] = []
    items = list(args)
    index = 0
    while index < len(items):
        item = items[index]
        key, value, step = item, None, 1
        if item.startswith("--") and "=" in item:
            key, _, value = item.partition("=")
        elif item.startswith("--") and index + 1 < len(items):
            value, step = items[index + 1], 2
        if value == "null" and key.count(".init_args.") >= 2:
            owner, _, leaf = key.rpartition(".init_args.")
            update: Any = None
            for part in reversed(leaf.split(".")):
                update = {part: update}
            out.extend([owner, json.dumps({"init_args": update})])
            index += step
        else:
            out.append(item)
            index += 1
    return out


def run_cli(args: Sequence[str] | None = None, run: bool = True, exit_on_error: bool = True) -> PromptsCLI:
    """Run the CLI on ``args`` (``sys.argv`` when ``None``); errors propagate (tests use this).

    ``exit_on_error=False`` makes argument errors raise (``argparse.ArgumentError``) instead of printing
    the parser's usage and exiting; the console script uses it to print one line instead.
    """
    import sys

    registry.import_all()  # short class names and subclass lookups see every registered class
    quiet()
    if args is None:  # the console script: expand in place (LightningCLI reads sys.argv)
        sys.argv[1:] = nested_nulls_as_init_args(expand_config_args(sys.argv[1:]))
        arguments = None
    else:
        arguments = nested_nulls_as_init_args(expand_config_args(list(args)))
    return PromptsCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        # checkpoints rebuild their module from its own hyperparameters (registered classes only), never
        # from class paths the file names (Lightning's instantiator would import them)
        load_from_checkpoint_support=False,
        parser_kwargs={"exit_on_error": exit_on_error},
        args=arguments,
        run=run,
    )


def recipe_parser() -> LightningArgumentParser:
    """The command's full parser (every subcommand), built once without parsing or running anything:
    checking many recipe files against it costs a parse each (the tests do this for every recipe)."""
    registry.import_all()
    cli = PromptsCLI.__new__(PromptsCLI)  # the parser only: LightningCLI.__init__ would also instantiate
    cli.save_config_callback, cli.save_config_kwargs = None, {}
    cli.trainer_class, cli.trainer_defaults, cli.seed_everything_default = Trainer, {}, True
    cli.parser_kwargs, cli.parser_class, cli.auto_configure_optimizers = {}, LightningArgumentParser, False
    cli.model_class, cli._model_class, cli.subclass_mode_model = LightningModule, LightningModule, True
    cli.datamodule_class, cli._datamodule_class, cli.subclass_mode_data = LightningDataModule, LightningDataModule, True
    main_kwargs, subparser_kwargs = cli._setup_parser_kwargs(cli.parser_kwargs)
    cli.setup_parser(True, main_kwargs, subparser_kwargs)
    return cli.parser
