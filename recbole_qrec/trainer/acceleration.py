"""How a trainer's steps run: mixed precision (``autocast_dtype``) and ``torch.compile`` (``compile_model``), both
off by default, and, on the device-resident data path (``data_path_mode: gpu``), training steps that never wait for
the GPU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch._inductor.config
from recbole.config import Config
from recbole.trainer import Trainer
from recbole.utils import set_color
from torch import Tensor, nn, optim
from torch._dynamo.utils import counters
from torch.nn.utils import clip_grad_norm_
from tqdm import tqdm

from recbole_qrec.errors import ConfigError, TrainingDivergedError, checked_choice
from recbole_qrec.evaluator import TopkCollector

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# torch.compile backends: inductor generates kernels (compile_mode applies); cudagraphs replays the model's own kernels,
# forward and backward traced by AOTAutograd, as CUDA graphs; aot_eager runs that traced graph eagerly.
COMPILE_BACKENDS = ("inductor", "cudagraphs", "aot_eager")
# inductor modes that replay the compiled steps as CUDA graphs
GRAPH_MODES = ("reduce-overhead", "max-autotune")
# The training losses RecBole's trainers (and the pretraining trainer) call; those a model has are compiled. Evaluation
# stays eager: compiled, it recompiled for its batch shapes and ran slower on one H200 (BERT4Rec 6.3 s per validation
# against 0.25 s, QBert4Rec 2.1 s against 0.13 s), and TIGER's beam search did not finish (docs/results/README.md).
COMPILED_METHODS = ("calculate_loss", "pretrain_loss")
# RecBole learners with a fused CUDA implementation (one kernel per step instead of one per parameter group op).
FUSED_LEARNERS = {"adam": optim.Adam, "adamw": optim.AdamW}
ANOMALY_DETECTION_WARNING = ("torch's anomaly detection is on (RecBole's sine.py switches it on when imported, e.g. by "
                             "'from recbole.model.sequential_recommender import ...'): every training step records "
                             "tracebacks and runs several times slower — torch.autograd.set_detect_anomaly(False) "
                             "switches it off")
SKIPPED_GRAPHS_WARNING = ("compile_model: {count} compiled graph(s) of the training step run without CUDA graphs "
                          "(torch.compile skipped them; TORCH_LOGS=cudagraphs prints why) — the steps are right, only "
                          "not replayed as graphs")
DIVERGED_FIX = "lower learning_rate, or clip gradients (e.g. --clip_grad_norm=\"{'max_norm': 5.0}\")"


def check_acceleration(config: Config) -> None:
    """``autocast_dtype`` must be None or one of :data:`AUTOCAST_DTYPES`, ``weight_decay_exempt`` None or norms,
    ``compile_mode`` one of :data:`COMPILE_MODES` (other than default with the inductor backend only),
    ``compile_backend`` one of :data:`COMPILE_BACKENDS` (cudagraphs on a CUDA device only)."""
    checked_choice("autocast_dtype", config["autocast_dtype"], (None, *AUTOCAST_DTYPES),
                   "~: float32; e.g. --autocast_dtype=bfloat16")
    checked_choice("weight_decay_exempt", config["weight_decay_exempt"], (None, "norms"),
                   "~: every parameter decayed; norms: not the biases and normalisation weights")
    checked_choice("compile_mode", config["compile_mode"], COMPILE_MODES,
                   "e.g. --compile_model=True --compile_mode=reduce-overhead")
    backend = checked_choice("compile_backend", config["compile_backend"], COMPILE_BACKENDS,
                             "e.g. --compile_model=True --compile_backend=cudagraphs")
    if not config["compile_model"]:
        return
    on_cuda = torch.device(config["device"]).type == "cuda"
    if backend != "inductor" and config["compile_mode"] != "default":
        raise ConfigError(f"compile_mode {config['compile_mode']} is an inductor mode; compile_backend {backend} "
                          "takes none — set --compile_mode=default, or --compile_backend=inductor")
    if backend == "cudagraphs" and not on_cuda:
        raise ConfigError(f"compile_backend cudagraphs needs a CUDA device, the run's is {config['device']} — use "
                          "--compile_backend=inductor on a CPU")


def replays_cuda_graphs(config: Config | dict[str, Any]) -> bool:
    """Whether ``compile_model`` replays the training steps as CUDA graphs (whose outputs the next replay
    overwrites)."""
    return bool(config["compile_model"]) and (config["compile_backend"] == "cudagraphs"
                                              or config["compile_mode"] in GRAPH_MODES)


def compiled(method: Callable, config: Config | dict[str, Any]) -> Callable:
    """``method`` under ``torch.compile`` with the config's ``compile_backend`` (and ``compile_mode`` for inductor),
    one graph per batch shape (``dynamic=False``). A graph of dynamic shapes, made when a second shape recompiles it,
    replayed CUDA graphs against another shape's recorded sizes: under the cudagraphs backend an epoch's last batch
    ("size of tensor a (2048) must match the size of tensor b (922)", SASRec), under reduce-overhead the widths of
    ``length_buckets`` ("shape '[1344, 256]' is invalid for input of size 64", QBert4Rec; both on one H100 GPU)."""
    backend = config["compile_backend"]
    # inductor's rewrite of a scatter into a constant tensor (cross-entropy's backward) gave BERT4Rec's loss wrong
    # gradients on CUDA, every first-step gradient off by 1.3-1.7 of its size; with it off, 60 steps agree with eager
    # mode to 6e-7 (one H100 GPU, docs/results/compile_check/)
    torch._inductor.config.optimize_scatter_upon_const_tensor = False
    options = {"mode": config["compile_mode"]} if backend == "inductor" else {}
    return torch.compile(method, backend=backend, dynamic=False, **options)


class CompiledForFullBatches:
    """A training loss (``method``, its first argument the batch) under :func:`compiled` for the largest batch it has
    been given; a smaller batch, an epoch's last, runs eagerly. Compiling and capturing a second shape, once per
    phase, would cost more than running that one batch per epoch eagerly: a compile of its own under the cudagraphs
    backend, a dynamic-shape recompile under inductor."""

    def __init__(self, method: Callable, config: Config | dict[str, Any]) -> None:
        self.eager = method
        self.compiled = compiled(method, config)
        self.largest = 0

    def __call__(self, interaction: Any, *args: Any, **kwargs: Any) -> Any:
        rows = len(interaction)
        self.largest = max(self.largest, rows)
        return (self.compiled if rows == self.largest else self.eager)(interaction, *args, **kwargs)


def skipped_cuda_graphs() -> int:
    """Graphs this process compiled for CUDA-graph replay and ran without it (torch's own count)."""
    return counters["inductor"]["cudagraph_skips"]


def summed(losses: Tensor | tuple[Tensor, ...]) -> Tensor:
    """A model's loss, or the sum of its parts when it returns several (RecBole's convention)."""
    return sum(losses) if isinstance(losses, tuple) else losses


def weight_decay_groups(model: nn.Module) -> list[dict[str, Any]]:
    """``model``'s trainable parameters as two optimizer groups: the decayed ones, then the biases and the weights of
    normalisation layers (``nn.LayerNorm`` and classes named ``*LayerNorm``/``*RMSNorm``, e.g. T5's) with no weight
    decay, as transformers' Trainer groups them."""
    exempt = {id(parameter) for module in model.modules() if is_normalisation(module)
              for parameter in module.parameters(recurse=False)}
    exempt |= {id(parameter) for name, parameter in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"}
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return [{"params": [parameter for parameter in trainable if id(parameter) not in exempt]},
            {"params": [parameter for parameter in trainable if id(parameter) in exempt], "weight_decay": 0.0}]


def is_normalisation(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (its weights scale activations rather than map them)."""
    name = type(module).__name__
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or name.endswith(("LayerNorm", "RMSNorm"))


class AccelerationMixin:
    """Mixed in before a RecBole trainer. With ``autocast_dtype`` every loss of a training step and every evaluation
    run under ``torch.autocast`` with that dtype (weights, gradients and optimizer state stay float32; bfloat16 needs
    no gradient scaling). With ``compile_model`` the model's :data:`COMPILED_METHODS` are replaced, on the model
    object, by their ``torch.compile`` versions (``compile_backend``, ``compile_mode``) for full batches
    (:class:`CompiledForFullBatches`): its parameters and state dict (checkpoints) are unchanged. Steps that should
    replay as CUDA graphs but were compiled without them are one warning line after the epoch.

    With ``data_path_mode: gpu`` an epoch is RecBole's training loop without its two waits per step (the loss read
    back with ``.item()`` and checked for NaN): the losses are summed on the device and read once per epoch, so the
    CPU queues the next steps while the GPU runs; Adam/AdamW are the fused CUDA kernels on a CUDA device. A loss that
    is not finite is one :class:`~recbole_qrec.errors.TrainingDivergedError` line on either path."""

    def __init__(self, config: Config, model: nn.Module) -> None:
        check_acceleration(config)
        super().__init__(config, model)
        self.eval_collector = TopkCollector(config)  # RecBole's results in memory of the top-k size (evaluator.py)
        self.autocast_dtype = AUTOCAST_DTYPES.get(config["autocast_dtype"])
        if torch.is_anomaly_enabled():
            self.logger.warning(set_color(ANOMALY_DETECTION_WARNING, "yellow"))
        if config["compile_model"]:
            for name in COMPILED_METHODS:
                if hasattr(model, name):
                    setattr(model, name, CompiledForFullBatches(getattr(model, name), config))
        self.graph_skips_seen = skipped_cuda_graphs()

    def warn_of_skipped_cuda_graphs(self) -> None:
        """One warning line when graphs that ``compile_model`` should replay as CUDA graphs were compiled without them
        since the last check (torch.compile tells it only in a log that is off by default)."""
        skipped = skipped_cuda_graphs() - self.graph_skips_seen
        if skipped and replays_cuda_graphs(self.config):
            self.logger.warning(set_color(SKIPPED_GRAPHS_WARNING.format(count=skipped), "yellow"))
        self.graph_skips_seen += skipped

    def device_steps(self) -> bool:
        """Whether epochs run without per-step waits (the device-resident data path)."""
        return self.config["data_path_mode"] == "gpu"

    def autocast(self) -> torch.autocast:
        """The ``torch.autocast`` context of ``autocast_dtype`` on the trainer's device (disabled when None)."""
        return torch.autocast(torch.device(self.device).type, dtype=self.autocast_dtype,
                              enabled=self.autocast_dtype is not None)

    def _build_optimizer(self, **kwargs: Any) -> optim.Optimizer:
        if "params" not in kwargs and self.config["weight_decay_exempt"] == "norms":
            kwargs["params"] = weight_decay_groups(self.model)
        learner = kwargs.get("learner", self.learner).lower()
        on_cuda = torch.device(self.device).type == "cuda"
        if not (self.device_steps() and on_cuda and learner in FUSED_LEARNERS):
            return super()._build_optimizer(**kwargs)
        return FUSED_LEARNERS[learner](kwargs.get("params", self.model.parameters()),
                                       lr=kwargs.get("learning_rate", self.learning_rate),
                                       weight_decay=kwargs.get("weight_decay", self.weight_decay), fused=True)

    def _check_nan(self, loss: Tensor) -> None:
        if torch.isnan(loss):
            raise TrainingDivergedError(f"the training loss became NaN — {DIVERGED_FIX}")

    def _train_epoch(self, train_data: Any, epoch_idx: int, loss_func: Callable | None = None,
                     show_progress: bool = False) -> Any:
        loss_func = loss_func or self.model.calculate_loss

        def autocast_loss(interaction: Any) -> Any:
            with self.autocast():
                return loss_func(interaction)

        if self.device_steps() and super()._train_epoch.__func__ is Trainer._train_epoch:
            loss = self.device_epoch(train_data, epoch_idx, autocast_loss, show_progress)
        else:
            loss = super()._train_epoch(train_data, epoch_idx, loss_func=autocast_loss, show_progress=show_progress)
        self.warn_of_skipped_cuda_graphs()
        return loss

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        with self.autocast():
            return super().evaluate(*args, **kwargs)

    def device_epoch(self, train_data: Any, epoch_idx: int, loss_func: Callable,
                     show_progress: bool = False) -> float | tuple[float, ...]:
        """One epoch of RecBole's ``Trainer._train_epoch`` (same steps: zero_grad, loss, backward, ``clip_grad_norm``,
        optimizer step; RecBole's AMP keys and distributed gradient hooks) that reads the loss back only at its end;
        returns the summed loss (per part when the model returns several)."""
        self.model.train()
        batches = tqdm(train_data, total=len(train_data), ncols=100,
                       desc=set_color(f"Train {epoch_idx:>5}", "pink")) if show_progress else train_data
        if not self.config["single_spec"] and train_data.shuffle:
            train_data.sampler.set_epoch(epoch_idx)
        total: Tensor | None = None
        scaler = torch.amp.GradScaler(enabled=self.enable_scaler)  # RecBole's enable_amp / enable_scaler keys
        device_type = torch.device(self.device).type
        replayed = replays_cuda_graphs(self.config)
        for interaction in batches:
            if replayed:  # a new step: the CUDA graphs' outputs of the last one are no longer read
                torch.compiler.cudagraph_mark_step_begin()
            interaction = interaction.to(self.device)
            self.optimizer.zero_grad()
            sync_loss = 0
            if not self.config["single_spec"]:
                self.set_reduce_hook()
                sync_loss = self.sync_grad_loss()
            with torch.autocast(device_type=device_type, enabled=self.enable_amp):
                losses = loss_func(interaction)
            parts = torch.stack([part.detach() for part in losses]) if isinstance(losses, tuple) else losses.detach()
            # A copy, not the step's output: replayed CUDA graphs overwrite their outputs at the next step.
            total = parts.clone() if total is None else total + parts
            scaler.scale(summed(losses) + sync_loss).backward()
            if self.clip_grad_norm:
                clip_grad_norm_(self.model.parameters(), **self.clip_grad_norm)
            scaler.step(self.optimizer)
            scaler.update()
        if total is None:
            return 0.0
        values = total.tolist()
        if not torch.isfinite(total).all():
            raise TrainingDivergedError(f"the training loss of epoch {epoch_idx} is not finite ({values}) — "
                                        f"{DIVERGED_FIX}")
        return tuple(values) if isinstance(values, list) else values
