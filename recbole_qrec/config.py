"""recbole-qrec's RecBole ``Config``: our ``properties/`` YAMLs as defaults, the user's settings checked on top.

:class:`QRecConfig` subclasses RecBole's ``Config`` the way RecBole-GNN does: its hooks resolve the model
with :func:`recbole_qrec.utils.get_model`, add our YAML files to the internal defaults, and take the
command-line overrides from an argument list instead of ``sys.argv``. Layering (later wins):

1. RecBole's internal defaults (its ``overall.yaml``, model YAML, dataset YAMLs and quick-start YAML for the
   model type);
2. ``properties/overall.yaml``;
3. ``properties/model/<model>.yaml``;
4. ``properties/dataset/<dataset>.yaml``;
5. the user's ``--config_files``, in the order given;
6. ``config_dict`` (the Python API);
7. ``--key=value`` command-line overrides.

Layers 1-4 are ``Config.internal_config_dict`` (the defaults), 5-7 ``Config.external_config_dict`` (the
user's settings). Before RecBole post-processes anything, every user key must be one that some RecBole or
recbole-qrec component reads, and every value must fit its key (:data:`VALUE_RULES`, then the default's
type); each problem is a one-line :class:`~recbole_qrec.errors.ConfigError`.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from recbole.config import Config
from recbole.evaluator.register import metric_types
from recbole.utils import EvaluatorType, ModelType, argument_list

import recbole
from recbole_qrec.compat import prepare_recbole
from recbole_qrec.distributed import init_distributed
from recbole_qrec.errors import ConfigError, QRecError, checked_choice
from recbole_qrec.fileio import check_output_folder
from recbole_qrec.resources import PROPERTIES_DIR
from recbole_qrec.data.cold_start import check_cold_start
from recbole_qrec.data.dataloader import resolve_data_path_mode
from recbole_qrec.data.sid import check_sid_producer
from recbole_qrec.trainer.acceleration import check_acceleration
from recbole_qrec.trainer.pretrain_trainer import check_pretraining_choices
from recbole_qrec.trainer.schedule import check_lr_schedule
from recbole_qrec.utils import get_model

RECBOLE_PROPERTIES_DIR = Path(recbole.__file__).resolve().parent / "properties"


def default_config_files(model_name: str, dataset: str) -> list[str]:
    """recbole-qrec's YAML defaults that exist for this model and dataset, lowest priority first."""
    candidates = [
        PROPERTIES_DIR / "overall.yaml",
        PROPERTIES_DIR / "model" / f"{model_name}.yaml",
        PROPERTIES_DIR / "dataset" / f"{dataset}.yaml",
    ]
    return [str(path) for path in candidates if path.is_file()]


def read_config_file(path: str | os.PathLike, loader: type[yaml.Loader] = yaml.SafeLoader,
                     option: str = "--config_files") -> dict[str, Any]:
    """The ``key: value`` mapping of a YAML config file; a missing, empty or malformed file is a ConfigError (naming
    ``option``, the command-line option that gave the file)."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Config file '{name}' does not exist — check the path given to {option}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Config file '{name}' is not UTF-8 text — save it as a UTF-8 YAML file") from None
    except OSError as err:
        raise ConfigError(f"Config file '{name}' cannot be read ({err.strerror}) — give a readable YAML file") from None
    try:
        content = yaml.load(text, Loader=loader)
    except yaml.MarkedYAMLError as err:
        mark, context = err.problem_mark, err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        started = f" ({err.context} started at line {context.line + 1})" if context and err.context else ""
        raise ConfigError(f"Config file '{name}' is not valid YAML{where}: {err.problem}{started} — "
                          "fix that line (one 'key: value' per line)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file '{name}' is not valid YAML: {err} — fix it (one 'key: value' per line)") from None
    if content is None:
        raise ConfigError(f"Config file '{name}' is empty or holds only comments — write 'key: value' lines "
                          f"in it, or leave it out of {option}")
    if not isinstance(content, dict):
        raise ConfigError(f"Config file '{name}' holds a YAML {type(content).__name__}, not a mapping — write one "
                          "'key: value' per line, e.g. 'epochs: 50'")
    not_names = [key for key in content if not isinstance(key, str)]
    if not_names:
        raise ConfigError(f"Config file '{name}' has the key {not_names[0]!r}, which is not a name — "
                          "keys are config names such as 'epochs'")
    return content


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """``--key=value`` arguments as ``{key: value}`` (values still strings, as RecBole reads them)."""
    overrides: dict[str, str] = {}
    for arg in args:
        key, equals, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if not key or not equals:
            example = f"{arg}=<value>" if arg.startswith("--") and len(arg) > 2 else "--key=value, e.g. --epochs=50"
            raise ConfigError(f"Command-line argument '{arg}' is not of the form --key=value — write {example}")
        if key in overrides and overrides[key] != value:
            raise ConfigError(f"--{key} is given twice with different values ({overrides[key]!r} and {value!r}) — "
                              "give each --key=value once")
        overrides[key] = value
    return overrides


def yaml_value(value: Any) -> Any:
    """A command-line value RecBole left a string, read as the YAML files write it: ``~`` is null
    (``--sid_producer=~``), a flow list or mapping is parsed (``--tasks=[text_next, image_next]``); anything else
    as it is."""
    if value == "~":
        return None
    if not (isinstance(value, str) and value.strip()[:1] in ("[", "{")):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return parsed if isinstance(parsed, (list, dict)) else value


@cache
def known_config_keys() -> frozenset[str]:
    """Keys of RecBole's YAMLs and argument lists and of our harness YAMLs (not the tokenizer's own file)."""
    keys = set(argument_list.general_arguments + argument_list.training_arguments)
    keys |= set(argument_list.evaluation_arguments + argument_list.dataset_arguments)
    harness_files = [PROPERTIES_DIR / "overall.yaml", *PROPERTIES_DIR.glob("model/*.yaml"), *PROPERTIES_DIR.glob("dataset/*.yaml")]
    for path in [*RECBOLE_PROPERTIES_DIR.rglob("*.yaml"), *harness_files]:
        keys |= set(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    return frozenset(keys)


def check_config_keys(keys: Sequence[str], model: str) -> None:
    """Raise :class:`ConfigError` for a key no RecBole or recbole-qrec component reads."""
    known = known_config_keys()
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            fix = f"did you mean '{close[0]}'?" if close else f"check the spelling (recbole-qrec --model={model} --help lists the keys)"
            raise ConfigError(f"Unknown config key '{key}': no RecBole or recbole-qrec component reads it — {fix}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ValueRule:
    """What a key accepts: an ``int`` or any number (``float``), within optional bounds; ``listed`` also
    takes a non-empty list of such values, ``optional`` also ``~`` (None); ``example`` is the value an error suggests
    for a key without a numeric default."""

    kind: type
    minimum: float | None = None
    maximum: float | None = None
    above_minimum: bool = False  # the minimum itself is excluded
    below_maximum: bool = False  # the maximum itself is excluded
    listed: bool = False
    optional: bool = False
    example: Any = None

    def accepts(self, value: Any) -> bool:
        if self.optional and value is None:
            return True
        if self.listed and isinstance(value, list):
            return bool(value) and all(self.accepts_one(item) for item in value)
        return self.accepts_one(value)

    def accepts_one(self, value: Any) -> bool:
        if not is_number(value) or not math.isfinite(value) or (self.kind is int and not isinstance(value, int)):
            return False
        if self.minimum is not None and (value <= self.minimum if self.above_minimum else value < self.minimum):
            return False
        return self.maximum is None or (value < self.maximum if self.below_maximum else value <= self.maximum)

    def describe(self) -> str:
        """E.g. ``an integer >= 1``, ``a number in [0, 1]``, ``a number > 0 or ~``."""
        one = self.describe_values(plural=False)
        described = f"a non-empty list of {self.describe_values(plural=True)} (or {one})" if self.listed else one
        return f"{described} or ~" if self.optional else described

    def describe_values(self, plural: bool) -> str:
        noun = {(int, False): "an integer", (int, True): "integers"}.get((self.kind, plural), "numbers" if plural else "a number")
        if self.minimum is not None and self.maximum is not None:
            return (f"{noun} in {'(' if self.above_minimum else '['}{self.minimum:g}, {self.maximum:g}"
                    f"{')' if self.below_maximum else ']'}")
        if self.minimum is not None:
            return f"{noun} {'>' if self.above_minimum else '>='} {self.minimum:g}"
        return noun


POSITIVE_INT = ValueRule(int, 1)
COUNT = ValueRule(int, 0)
POSITIVE_NUMBER = ValueRule(float, 0, above_minimum=True)
NON_NEGATIVE_NUMBER = ValueRule(float, 0)
PROBABILITY = ValueRule(float, 0, 1)

# Range rules by key pattern (fnmatch, case-sensitive), first match wins. They apply to keys whose default is
# a number, and listed or optional rules always (``topk``; keys whose default is ~); any other numeric key gets the
# generic rule of its default's type.
VALUE_RULES: tuple[tuple[str, ValueRule], ...] = (
    ("train_time_limit", ValueRule(float, 0, above_minimum=True, optional=True, example=600)),  # seconds; ~: none
    ("valid_sample_users", ValueRule(int, 1, optional=True, example=10000)),  # ~: every user
    ("length_buckets", ValueRule(int, 1, listed=True, optional=True, example=[3, 8])),  # ~: no buckets
    ("cold_start_share", ValueRule(float, 0, 1, above_minimum=True, below_maximum=True, optional=True, example=0.1)),
    ("unseen_prefix_levels", ValueRule(int, 1, optional=True, example=3)),  # ~: all levels but the last
    ("sid_seed", ValueRule(int, 0, optional=True, example=2020)),  # ~: the run's seed
    ("topk", ValueRule(int, 1, listed=True)),
    ("epochs", POSITIVE_INT),
    ("*_epochs", COUNT),  # pretrain_epochs, injection_epochs, sid_epochs: 0 skips the stage
    ("stopping_step", POSITIVE_INT),
    ("eval_step", POSITIVE_INT),
    ("*batch_size", POSITIVE_INT),
    ("length_bucket_rows", COUNT),
    ("worker", COUNT),
    ("warmup_steps", COUNT),
    ("*_decimal_place", COUNT),
    ("*learning_rate", POSITIVE_NUMBER),
    ("*dropout*", PROBABILITY),
    ("*_prob", PROBABILITY),
    ("*_ratio", PROBABILITY),
    ("gate_threshold", PROBABILITY),
    ("code_proxy_level_decay", ValueRule(float, 0, 1, above_minimum=True)),
    ("unseen_item_share", PROBABILITY),
    ("depth_target", ValueRule(float, 1)),
    ("depth_weight_step", NON_NEGATIVE_NUMBER),
    ("weight_decay", NON_NEGATIVE_NUMBER),
    ("*_weight", NON_NEGATIVE_NUMBER),
    ("*temperature", POSITIVE_NUMBER),
    ("layer_norm_eps", POSITIVE_NUMBER),
    ("initializer_range", POSITIVE_NUMBER),
    ("MAX_ITEM_LIST_LENGTH", POSITIVE_INT),
    ("sid_codebook_size", ValueRule(int, 2)),  # the RQ-VAE's codes per level
    ("*_size", POSITIVE_INT),  # hidden_size, inner_size, embedding_size, beam_size
    ("*_dim", POSITIVE_INT),
    ("d_model", POSITIVE_INT),
    ("d_kv", POSITIVE_INT),
    ("d_ff", POSITIVE_INT),
    ("*layers", POSITIVE_INT),
    ("*heads", POSITIVE_INT),
    ("sid_levels", POSITIVE_INT),
    ("mask_regions", POSITIVE_INT),
)


def value_rule(key: str, default: Any) -> ValueRule | None:
    """The rule for ``key`` given its default: a matching :data:`VALUE_RULES` entry, else the default's type."""
    for pattern, rule in VALUE_RULES:
        if fnmatchcase(key, pattern) and (is_number(default) or rule.listed or rule.optional):
            return rule
    if is_number(default):
        return ValueRule(type(default))
    return None


def as_argument(value: Any) -> str:
    """``value`` as it would be written after ``--key=`` (lists without spaces)."""
    return "".join(str(value).split()) if isinstance(value, (list, dict)) else str(value)


def check_config_values(settings: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for a user value that does not fit its key's rule or its default's type."""
    for key, value in settings.items():
        default = defaults.get(key)
        example = f"e.g. --{key}={as_argument(default)} (the default)"
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{key} must be True or False, got {value!r} — {example}")
        rule = value_rule(key, default)
        if rule is not None and not rule.accepts(value):
            if default is None:
                suggested = rule.example if rule.example is not None else [10] if rule.listed else rule.minimum
                example = f"e.g. --{key}={as_argument(suggested)}"
            raise ConfigError(f"{key} must be {rule.describe()}, got {value!r} — {example}")


def check_time_field_loaded(config: Config) -> None:
    """A time-ordered split needs the timestamp column in ``load_col``."""
    load_col = config["load_col"]
    if load_col is not None and not isinstance(load_col, dict):
        raise ConfigError(f"load_col must map file suffixes to field lists, got {load_col!r} — e.g. "
                          "--load_col=\"{'inter': ['user_id', 'item_id', 'timestamp']}\"")
    if config["eval_args"]["order"] != "TO" or load_col is None:
        return
    if config["TIME_FIELD"] not in load_col.get("inter", []):
        raise ConfigError(
            f"eval_args.order is TO (time order) but load_col.inter {load_col.get('inter')} lacks "
            f"'{config['TIME_FIELD']}' — add it, e.g. load_col: {{inter: [user_id, item_id, {config['TIME_FIELD']}]}}"
        )


def check_valid_metric_type(settings: Mapping[str, Any]) -> None:
    """``valid_metric`` names one metric (RecBole splits it at ``@`` before any other check)."""
    value = settings.get("valid_metric")
    if "valid_metric" in settings and not isinstance(value, str):
        raise ConfigError(f"valid_metric must be a metric name such as NDCG@10, got {value!r} — e.g. --valid_metric=NDCG@10")


def computed_metrics(config: Config) -> list[str]:
    """The validation results' keys RecBole computes: ``<metric>@<k>`` for each ranking metric and ``topk``, the
    name alone for a value metric (e.g. ``auc``)."""
    topk = config["topk"] if isinstance(config["topk"], list) else [config["topk"]]
    metrics = config["metrics"] if isinstance(config["metrics"], list) else [config["metrics"]]
    names = [str(name).lower() for name in metrics]
    return [f"{name}@{k}" if metric_types.get(name) == EvaluatorType.RANKING else name
            for name in names for k in (topk if metric_types.get(name) == EvaluatorType.RANKING else [None])]


def check_valid_metric(config: Config) -> None:
    """Early stopping reads ``valid_metric`` from the validation results: it must be one that ``metrics`` and ``topk``
    compute (RecBole would fail with a KeyError after the first training epoch)."""
    computed = computed_metrics(config)
    if config["valid_metric"].lower() not in computed:
        raise ConfigError(f"valid_metric {config['valid_metric']!r} is not computed by the evaluation (metrics "
                          f"{config['metrics']} x topk {config['topk']} give {', '.join(computed)}) — pick one of "
                          "those, e.g. --valid_metric=NDCG@10, or add its metric or k to metrics/topk")


SEQUENTIAL_LOSS_TYPES = ("CE", "BPR")


def check_sequential_protocol(config: Config) -> None:
    """A sequential model needs a time-ordered split (RecBole's ``SequentialDataset``) and a loss it implements."""
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        return
    order = config["eval_args"]["order"]
    if order != "TO":
        raise ConfigError(f"eval_args.order is {order!r}, but a sequential model ({config['model']}) needs the time "
                          "order 'TO' (RecBole's SequentialDataset splits each history by time) — add order: TO to "
                          "eval_args (RecBole fills the keys an eval_args leaves out with its own defaults, order RO)")
    checked_choice(f"loss_type for {config['model']}", config["loss_type"], SEQUENTIAL_LOSS_TYPES,
                   "e.g. --loss_type=CE (BPR needs train_neg_sample_args)")


MATMUL_PRECISIONS = ("highest", "high", "medium")


def check_matmul_precision(config: Config) -> None:
    """``float32_matmul_precision`` must be one of torch's settings."""
    checked_choice("float32_matmul_precision", config["float32_matmul_precision"], MATMUL_PRECISIONS,
                   "e.g. --float32_matmul_precision=high (torch.set_float32_matmul_precision; high: TF32)")


LEARNERS = ("adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam")  # RecBole's Trainer._build_optimizer
CLIP_GRAD_NORM_EXAMPLE = "--clip_grad_norm=\"{'max_norm': 5.0}\""


def check_optimizer(config: Config) -> None:
    """``learner`` names one of RecBole's optimizers (RecBole trained an unknown name with Adam, with a warning);
    ``clip_grad_norm`` is ~ or the arguments of ``torch.nn.utils.clip_grad_norm_`` (a bad one failed at the first
    training step; a max_norm <= 0 silently zeroed or reversed every gradient)."""
    learner = config["learner"]
    if not isinstance(learner, str) or learner.lower() not in LEARNERS:
        raise ConfigError(f"learner must be one of {', '.join(LEARNERS)}, got {learner!r} — e.g. --learner=adamw")
    clip = config["clip_grad_norm"]
    if clip is None:
        return
    if (not isinstance(clip, dict) or set(clip) - {"max_norm", "norm_type"} or not POSITIVE_NUMBER.accepts(
            clip.get("max_norm")) or not is_number(clip.get("norm_type", 2.0))):
        raise ConfigError(f"clip_grad_norm must be ~ or a mapping with max_norm (a number > 0) and optionally "
                          f"norm_type (a number), got {clip!r} — e.g. {CLIP_GRAD_NORM_EXAMPLE}")


# (width, heads) keys of a model's attention: the heads split the width evenly.
HEAD_SPLITS = (("hidden_size", "n_heads"), ("injection_dim", "injection_heads"))
HIDDEN_ACTS = ("gelu", "relu", "swish", "tanh", "sigmoid")  # RecBole's FeedForward.get_hidden_act


def check_attention_settings(config: QRecConfig) -> None:
    """For a model whose defaults have the keys: each width of :data:`HEAD_SPLITS` is a multiple of its heads and
    ``hidden_act`` is an activation RecBole's transformer layers know (both failed while building the model, after
    the logger started and QBert4Rec's tokenize stage wrote its codes)."""
    defaults = config.internal_config_dict
    for width_key, heads_key in HEAD_SPLITS:
        if width_key in defaults and heads_key in defaults and config[width_key] % config[heads_key]:
            width, heads = config[width_key], config[heads_key]
            raise ConfigError(f"{width_key} ({width}) is not a multiple of {heads_key} ({heads}): each attention head "
                              f"takes an equal share — e.g. --{width_key}={width - width % heads or heads} or "
                              f"--{heads_key}=1")
    if "hidden_act" in defaults:
        checked_choice("hidden_act", config["hidden_act"], HIDDEN_ACTS,
                       f"e.g. --hidden_act={defaults['hidden_act']} (the default)")


def check_masked_items(config: Config) -> None:
    """RecBole's ``mask_itemseq`` transform (BERT4Rec) keeps ``int(mask_ratio * MAX_ITEM_LIST_LENGTH)`` masked positions
    per sequence: with none, the first training batch failed (exit status 1)."""
    if config["transform"] != "mask_itemseq":
        return
    ratio, length = config["mask_ratio"], config["MAX_ITEM_LIST_LENGTH"]
    if int(ratio * length) < 1:
        raise ConfigError(f"mask_ratio {ratio} x MAX_ITEM_LIST_LENGTH {length} leaves no item to mask (the "
                          f"{config['model']} transform masks int(mask_ratio * MAX_ITEM_LIST_LENGTH) items) — raise "
                          f"mask_ratio or MAX_ITEM_LIST_LENGTH, e.g. --mask_ratio={math.ceil(100 / length) / 100:g}")


def check_model_settings(config: QRecConfig) -> None:
    """The model's own settings, with its ``check_settings(config)`` where it has one: before the data is read and
    before a tokenize stage writes codes (the model itself is built only after both)."""
    check = getattr(config.model_class, "check_settings", None)
    if check is not None:
        check(config)


def check_run_tags(config: Config) -> None:
    """``run_tags`` is unset or a mapping of labels."""
    tags = config["run_tags"]
    if tags is not None and not isinstance(tags, dict):
        raise ConfigError(f"run_tags must be a mapping of labels, got {tags!r} — e.g. --run_tags=\"{{'sweep': 's1'}}\"")


OUTPUT_FOLDER_KEYS = ("results_dir", "checkpoint_dir")


def check_output_folders(config: Config) -> None:
    """``results_dir`` and ``checkpoint_dir`` must be folders a run can write in: a file there (or above) would
    stop the run only after training."""
    for key in OUTPUT_FOLDER_KEYS:
        if isinstance(config[key], str):
            check_output_folder(config[key], f"{key} {config[key]!r} cannot hold the run's files", f"give --{key} a folder")


class QRecConfig(Config):
    """RecBole's ``Config`` with recbole-qrec's defaults, model lookup and checks (layering: module docstring)."""

    def __init__(
        self,
        model: str | type,
        dataset: str,
        config_file_list: Sequence[str] | None = None,
        config_dict: dict[str, Any] | None = None,
        cmd_args: Sequence[str] = (),
    ) -> None:
        self.cmd_args = list(cmd_args)
        super().__init__(model, dataset, list(config_file_list or []), config_dict)

    def compatibility_settings(self) -> None:
        prepare_recbole()
        super().compatibility_settings()

    def _load_config_files(self, file_list: list[str]) -> dict[str, Any]:
        settings: dict[str, Any] = {}
        for path in file_list:
            settings.update(read_config_file(path, self.yaml_loader))
        return settings

    def _convert_config_dict(self, config_dict: dict[str, Any]) -> dict[str, Any]:
        """RecBole's conversion (``eval`` of each string value), except that a value whose evaluation fails in any
        way stays the string it was: RecBole lets only NameError, SyntaxError and TypeError through, so a path
        such as ``int.npy`` or ``os.npy`` (an AttributeError) stopped the run."""
        converted = {}
        for key, value in config_dict.items():
            try:
                converted.update(super()._convert_config_dict({key: value}))
            except Exception:  # noqa: BLE001 - any failure of eval means the value is not an expression
                converted[key] = value
        return converted

    def _load_cmd_line(self) -> dict[str, Any]:
        return {key: yaml_value(value) for key, value in self._convert_config_dict(
            parse_overrides(self.cmd_args)).items()}

    def _get_model_and_dataset(self, model: str | type, dataset: str) -> tuple[str, type, str]:
        model_class = get_model(model) if isinstance(model, str) else model
        return model_class.__name__, model_class, dataset

    def _load_internal_config_dict(self, model: str, model_class: type, dataset: str) -> None:
        super()._load_internal_config_dict(model, model_class, dataset)
        for path in default_config_files(model, dataset):
            self.internal_config_dict.update(read_config_file(path, self.yaml_loader))

    def _get_final_config_dict(self) -> dict[str, Any]:
        check_config_keys(list(self.external_config_dict), self.model)
        check_config_values(self.external_config_dict, self.internal_config_dict)
        check_valid_metric_type(self.external_config_dict)
        return super()._get_final_config_dict()

    def _init_device(self) -> None:
        if not init_distributed(self.final_config_dict):  # RecBole's own hardcodes NCCL for several processes
            super()._init_device()


def build_config(
    model: str,
    dataset: str,
    config_file_list: Sequence[str] = (),
    config_dict: dict[str, Any] | None = None,
    cmd_args: Sequence[str] = (),
) -> QRecConfig:
    """Resolve ``model`` and build its checked ``Config`` (layering: module docstring); nothing is written."""
    try:
        config = QRecConfig(model, dataset, config_file_list, config_dict, cmd_args)
    except QRecError:
        raise
    except (ValueError, TypeError, NotImplementedError) as err:  # RecBole's own checks of the final values
        message = " ".join(str(err).split())
        raise ConfigError(f"RecBole rejected the configuration: {message} — correct that setting "
                          f"(recbole-qrec --model={model} --help lists the defaults)") from err
    check_time_field_loaded(config)
    check_sequential_protocol(config)
    check_valid_metric(config)
    check_matmul_precision(config)
    check_lr_schedule(config)
    check_optimizer(config)
    check_attention_settings(config)
    check_masked_items(config)
    check_pretraining_choices(config)
    check_model_settings(config)
    check_acceleration(config)
    resolve_data_path_mode(config)
    check_cold_start(config)
    check_sid_producer(config)
    check_run_tags(config)
    check_output_folders(config)
    return config
