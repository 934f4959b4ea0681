"""``data_path_mode: gpu`` (run here on CPU tensors): the device-resident training loader yields the same training
rows as RecBole's ``TrainDataLoader``, reproducibly shuffled, and trains SASRec to metrics within noise of RecBole's path;
BERT4Rec's masking on the device has RecBole's fields and distribution; the device evaluation loader yields RecBole's
batches and metrics; its epochs take RecBole's training steps without waiting for the device; `auto` picks it on a
CUDA device; the validation user sample, bf16 autocast and the semantic-ID models' loaders."""

from __future__ import annotations

import copy
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import pytest
import torch
import torch._functorch.config
import torch._inductor.config
import torch._inductor.metrics
from recbole.data.dataloader import FullSortEvalDataLoader, TrainDataLoader
from recbole.data.dataset import SequentialDataset
from recbole.data.transform import MaskItemSequence
from recbole.trainer import Trainer
from recbole.utils import init_seed
from torch.utils._python_dispatch import TorchDispatchMode

from dataset_prep.subset import convert_user_subsets

from recbole_qrec.config import build_config
from recbole_qrec.data import create_dataset, data_preparation
from recbole_qrec.data.cross_domain import pretrain_dataset_names, source_settings
from recbole_qrec.data.dataloader import TensorTrainDataLoader, rank_share, resolve_data_path_mode
from recbole_qrec.data.dataset import QRecSequentialDataset
from recbole_qrec.data.eval_dataloader import TensorFullSortEvalDataLoader
from recbole_qrec.data.transform import DeviceMaskItemSequence, items_not_in
from recbole_qrec.errors import ConfigError, TrainingDivergedError
from recbole_qrec.quick_start import run_recbole_qrec
from recbole_qrec.tokenize import ensure_semantic_ids
from recbole_qrec.trainer import get_trainer
from recbole_qrec.trainer.acceleration import check_acceleration, compiled
from recbole_qrec.utils import get_model

from conftest import host_nodes_of_cuda_loss, work_config

SUBSET_USERS = 500  # conftest.SUBSET_USERS: the subset's users, one test interaction each
TRANSFORMER = {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2}
SEMANTIC_ID = {"MAX_ITEM_LIST_LENGTH": 8, "epochs": 1, "train_batch_size": 256, "eval_batch_size": 256,
               "use_gpu": False, "allow_data_mismatch": True, "data_path_mode": "gpu", "valid_sample_users": 20}
QBERT4REC = {"injection_dim": 32, "injection_epochs": 1, "injection_batch_size": 512, "sid_levels": 3,
             "sid_codebook_size": 32, "sid_code_dim": 16, "sid_epochs": 2, "hidden_size": 32, "inner_size": 64,
             "n_layers": 1, "n_heads": 2}
SASREC = {"hidden_size": 32, "inner_size": 64, "n_layers": 1, "n_heads": 2, "epochs": 1, "learning_rate": 0.005,
          "train_batch_size": 128, "eval_batch_size": 256, "use_gpu": False, "allow_data_mismatch": True}
FULL_LENGTH_T5 = {**SEMANTIC_ID, **TRANSFORMER, "full_length_inputs": True}  # as on a CUDA device
LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
         "num_attention_heads": 2, "num_key_value_heads": 1}
MMESID_SETTINGS = {"llm_config": LLAMA, "sid_levels": 2, "sid_codebook_size": 32, "sid_code_dim": 16,
                   "sid_hidden_dims": [64], "sid_epochs": 1, "beam_size": 10,
                   "full_length_inputs": True}  # as on a CUDA device

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["SASRec", "FDSA"])  # FDSA: batches joined with item features (text_codes)
def loaders(work: Path, request) -> tuple[TrainDataLoader, TensorTrainDataLoader]:
    """RecBole's training loader of the subset and a ``TensorTrainDataLoader`` (``data_path_mode: gpu``) of it."""
    config = build_config(request.param, "Instruments", config_dict={"data_path": str(work / "dataset"), **SASREC,
                                                                     "data_path_mode": "gpu"})
    dataset = create_dataset(config)
    train_data = data_preparation(config, dataset)[0]
    assert isinstance(train_data, TensorTrainDataLoader)
    recbole_train = TrainDataLoader(config, train_data._dataset, train_data._sampler, shuffle=True)
    return recbole_train, train_data


def rows(batches, fields: Sequence[str] = ()) -> list[tuple]:
    """(user, history, target, then the values of ``fields``) of every row of ``batches``, in order."""
    found = []
    for batch in batches:
        extra = zip(*(batch[name].tolist() for name in fields)) if fields else ((),) * len(batch)
        for user, history, length, target, values in zip(batch["user_id"].tolist(), batch["item_id_list"].tolist(),
                                                         batch["item_length"].tolist(), batch["item_id"].tolist(), extra):
            found.append((user, tuple(history[:length]), target, repr(values)))
    return found


@pytest.mark.parametrize("max_length", [50, 3])  # 3: most histories cut to their last items
def test_the_dataset_augments_every_prefix_exactly_as_recbole_does(work, max_length):
    config = work_config("SASRec", work, use_gpu=False, MAX_ITEM_LIST_LENGTH=max_length)
    ours = create_dataset(config)
    assert isinstance(ours, QRecSequentialDataset)
    for mine, recbole in zip(ours.build(), SequentialDataset(config).build()):  # train, valid, test
        assert sorted(mine.inter_feat.columns) == sorted(recbole.inter_feat.columns)
        for field in recbole.inter_feat.columns:
            assert mine.inter_feat[field].dtype == recbole.inter_feat[field].dtype, field
            assert torch.equal(mine.inter_feat[field], recbole.inter_feat[field]), field
    assert int(mine.inter_feat["item_length"].max()) == max_length


def test_one_epoch_yields_recbole_training_rows_with_its_fields(loaders):
    recbole_train, gpu_train = loaders
    recbole_batches, gpu_batches = list(recbole_train), list(gpu_train)
    assert len(gpu_train) == len(gpu_batches) == len(recbole_batches)
    assert [len(batch) for batch in gpu_batches] == [len(batch) for batch in recbole_batches]
    assert set(gpu_batches[0].columns) == set(recbole_batches[0].columns)
    assert all(gpu_batches[0][name].dtype == recbole_batches[0][name].dtype for name in gpu_batches[0].columns)
    extra = sorted(set(gpu_batches[0].columns) - {"user_id", "item_id", "item_id_list", "item_length"})
    assert Counter(rows(gpu_batches, extra)) == Counter(rows(recbole_batches, extra))


def test_epochs_are_shuffled_differently_and_the_same_seed_repeats_the_batches(loaders):
    _, gpu_train = loaders
    one, other = (TensorTrainDataLoader(gpu_train.config, gpu_train._dataset, gpu_train._sampler, shuffle=True)
                  for _ in range(2))
    first, second = list(one), list(one)
    assert Counter(rows(first)) == Counter(rows(second)) and rows(first) != rows(second)
    for epoch in (first, second):
        for batch, repeated in zip(epoch, other, strict=True):
            assert all(torch.equal(batch[name], repeated[name]) for name in batch.columns)


BUCKETS = {"MAX_ITEM_LIST_LENGTH": 20, "length_buckets": [3, 8]}  # widths 3, 8 and 20


def device_loader(config) -> TensorTrainDataLoader:
    return data_preparation(config, create_dataset(config))[0]


def test_length_buckets_visit_every_row_once_in_batches_of_one_bucket_cut_to_its_width(work):
    config = work_config("SASRec", work, **SASREC, **BUCKETS, data_path_mode="gpu")
    buckets = device_loader(config)
    plain = device_loader(work_config("SASRec", work, **SASREC, MAX_ITEM_LIST_LENGTH=20, data_path_mode="gpu"))
    epoch = list(buckets)
    assert len(epoch) == len(buckets) > len(plain)  # a smaller last batch per bucket
    assert Counter(rows(epoch)) == Counter(rows(plain))  # every row once
    shortest = {3: 1, 8: 4, 20: 9}  # the histories of each width's bucket
    for batch in epoch:
        width, lengths = batch["item_id_list"].size(1), batch["item_length"]
        assert len(batch) <= buckets.step and bool(((lengths >= shortest[width]) & (lengths <= width)).all())
    widths = [batch["item_id_list"].size(1) for batch in epoch]
    assert set(widths) == {3, 8, 20} and widths != sorted(widths)  # the buckets' batches interleaved
    again = device_loader(config)  # the same seed: the same batches; the next epoch: another order
    assert all(torch.equal(one["item_id_list"], other["item_id_list"]) for one, other in zip(epoch, again, strict=True))
    assert rows(list(buckets)) != rows(epoch)


@pytest.mark.parametrize("rows, world_size", [(1, 2), (7, 2), (10, 3), (11, 4)])
def test_a_process_share_of_rows_is_the_one_torch_distributed_sampler_gives(rows, world_size):
    """A distributed run's share of an epoch's order, or of one length bucket's part of it: torch's sampler without
    shuffling, over the rows in that order (padded with the first rows, so every process gets as many)."""
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(rows)) + 100
    for rank in range(world_size):
        sampler = torch.utils.data.DistributedSampler(range(rows), world_size, rank, shuffle=False)
        assert rank_share(order, rank, world_size).tolist() == order[list(sampler)].tolist()


def cut_and_full_length_losses(model, loader: TensorTrainDataLoader) -> list[tuple[float, float]]:
    """For a batch of each bucket: the loss of its rows with the item lists cut to the bucket's width, and at full
    length (dropout off; the same random draws for both, e.g. MQL4GRec's task mix)."""
    model.eval()
    order = loader.order(0)
    in_bucket = loader.buckets[order]
    losses = []
    for bucket, width in enumerate(loader.widths):
        index = order[in_bucket == bucket][:loader.step]
        with torch.no_grad():
            for cut in (width, None):
                torch.manual_seed(0)
                losses.append(float(model.calculate_loss(loader.batch(index, cut))))
    return list(zip(losses[::2], losses[1::2]))


@pytest.mark.parametrize("model_name, settings", [
    ("SASRec", {}), ("GRU4Rec", {}), ("FDSA", {}),
    ("BERT4Rec", {"ft_ratio": 1.0}),  # each row's last item masked: no random draws over the width
])
def test_cut_item_lists_leave_the_training_loss_unchanged(work, model_name, settings):
    config = work_config(model_name, work, **SASREC, **BUCKETS, **settings, data_path_mode="gpu")
    loader = device_loader(config)
    pairs = cut_and_full_length_losses(get_model(model_name)(config, loader._dataset), loader)
    assert len(pairs) == 3 and all(cut == pytest.approx(full, rel=1e-5) for cut, full in pairs)


@pytest.mark.parametrize("model_name, settings", [
    ("QBert4Rec", QBERT4REC), ("TIGER", FULL_LENGTH_T5), ("MQL4GRec", FULL_LENGTH_T5), ("MACRec", FULL_LENGTH_T5),
    ("MMESID", MMESID_SETTINGS)])
def test_cut_item_lists_leave_the_semantic_id_models_training_loss_unchanged(work, tmp_path, model_name, settings):
    """Full-length inputs (as on a CUDA device) are padded to the batch's item lists: cut, to the bucket's width."""
    config = work_config(model_name, work, **{**SEMANTIC_ID, **settings, "checkpoint_dir": str(tmp_path),
                                              "pretrain_datasets": [], "length_buckets": [2, 4]})  # widths 2, 4, 8
    ensure_semantic_ids(config, [])
    loader = device_loader(config)
    pairs = cut_and_full_length_losses(get_model(model_name)(config, loader._dataset), loader)
    assert len(pairs) == 3 and all(cut == pytest.approx(full, rel=1e-5) for cut, full in pairs)


def test_sasrec_trained_on_length_buckets_beats_popularity(work, tmp_path):
    data = work / "dataset"
    buckets = run("SASRec", tmp_path / "buckets", data, {**SASREC, **BUCKETS, "data_path_mode": "gpu"})["test"]
    popularity = run("Pop", tmp_path / "pop", data, {"epochs": 1, "use_gpu": False, "allow_data_mismatch": True})["test"]
    assert all(buckets[metric] > popularity[metric] for metric in ("hit@10", "ndcg@10"))


@pytest.mark.parametrize("model_name, settings, message", [
    ("SASRec", {"data_path_mode": "recbole", "length_buckets": [3]},
     "length_buckets batches the device-resident loader's rows, but this run uses data_path_mode recbole — set "
     "data_path_mode: gpu"),
    ("SASRec", {"length_buckets": [8, 3]}, r"length_buckets must be increasing history lengths below "
     r"MAX_ITEM_LIST_LENGTH \(20\), got \[8, 3\] — e.g. --length_buckets=\[3,8\]"),
    ("SASRec", {"length_buckets": [20]}, r"below MAX_ITEM_LIST_LENGTH \(20\), got \[20\]"),
    ("SASRec", {"length_buckets": [0]}, r"length_buckets must be a non-empty list of integers >= 1"),
    ("NARM", {"length_buckets": [3]}, "length_buckets cuts the item lists of SASRec, GRU4Rec, BERT4Rec, FDSA, "
     "QBert4Rec, TIGER, MQL4GRec, MACRec, MMESID only, and NARM reads them at full length — unset length_buckets"),
])
def test_a_length_bucket_setting_it_cannot_apply_is_one_error_line(work, model_name, settings, message):
    with pytest.raises(ConfigError, match=message) as error:
        work_config(model_name, work, **{**SASREC, "MAX_ITEM_LIST_LENGTH": 20, "data_path_mode": "gpu", **settings})
    assert "\n" not in str(error.value)


def run(model: str, folder: Path, data_path: Path, settings: dict) -> dict:
    """The record of an in-process run of ``model`` on the subset, with its files under ``folder``."""
    folder.mkdir(parents=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        return run_recbole_qrec(model, "Instruments", config_dict={"data_path": str(data_path), **settings})


def test_sasrec_trains_to_the_recbole_path_metrics_and_beats_popularity(work, tmp_path):
    """Same seed, one epoch: the paths differ only in batch order, so their test HR@10 and NDCG@10 may differ by
    sampling noise: less than two standard errors of a mean over the subset's test users (binomial for HR@10;
    for NDCG@10, whose per-user values lie in [0, hit], at most sqrt(HR@10 / users))."""
    data = work / "dataset"
    recbole = run("SASRec", tmp_path / "recbole", data, {**SASREC, "data_path_mode": "recbole"})["test"]
    gpu = run("SASRec", tmp_path / "gpu", data, {**SASREC, "data_path_mode": "gpu"})["test"]
    popularity = run("Pop", tmp_path / "pop", data, {"epochs": 1, "use_gpu": False, "allow_data_mismatch": True})["test"]
    hit = recbole["hit@10"]
    assert abs(gpu["hit@10"] - hit) < 2 * math.sqrt(hit * (1 - hit) / SUBSET_USERS)
    assert abs(gpu["ndcg@10"] - recbole["ndcg@10"]) < 2 * math.sqrt(hit / SUBSET_USERS)
    for metric in ("hit@10", "ndcg@10"):
        assert gpu[metric] > popularity[metric] and recbole[metric] > popularity[metric]


def test_a_transform_without_a_device_version_is_refused_in_one_line(work, tmp_path):
    settings = {**SASREC, "data_path_mode": "gpu", "transform": "inverse_itemseq"}
    with pytest.raises(ConfigError, match="SASRec trains on RecBole's dataset transform 'inverse_itemseq'") as error:
        run("SASRec", tmp_path / "sasrec", work / "dataset", settings)
    message = str(error.value)
    assert "\n" not in message and message.endswith("(it applies mask_itemseq) — set data_path_mode: recbole")


@pytest.mark.parametrize("settings, message", [
    ({"data_path_mode": "cuda"}, "data_path_mode must be one of auto, recbole, gpu, got 'cuda' — e.g. --data_path_mode=recbole"),
    ({"data_path_mode": "gpu", "loss_type": "BPR", "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}},
     "data_path_mode gpu trains without negative sampling"),
    ({"valid_sample_users": 0}, r"valid_sample_users must be an integer >= 1 or ~, got 0 — e.g. --valid_sample_users=10000"),
    ({"autocast_dtype": "float16"}, r"autocast_dtype must be one of ~, bfloat16, got 'float16' — ~: float32; e.g."),
    ({"compile_model": True, "compile_mode": "fast"}, "compile_mode must be one of default, reduce-overhead, max-autotune"),
    ({"compile_model": True, "compile_backend": "tvm"},
     r"compile_backend must be one of inductor, cudagraphs, aot_eager, got 'tvm' — e.g. --compile_model=True"),
    ({"compile_model": True, "compile_backend": "cudagraphs"},
     "compile_backend cudagraphs needs a CUDA device, the run's is cpu — use --compile_backend=inductor on a CPU"),
    ({"compile_model": True, "compile_backend": "aot_eager", "compile_mode": "reduce-overhead"},
     "compile_mode reduce-overhead is an inductor mode; compile_backend aot_eager takes none — set"),
])
def test_a_wrong_data_path_or_acceleration_setting_is_a_config_error(work, tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message):
        run("SASRec", tmp_path / "run", work / "dataset", {**SASREC, **settings})


def test_a_run_compiled_by_the_aot_eager_backend_trains_as_the_eager_run(work, tmp_path):
    """``compile_backend: aot_eager`` (the forward and backward AOTAutograd traces, which the cudagraphs backend
    replays) trains SASRec, dropout on, to the eager run's validation and test metrics."""
    data = work / "dataset"
    eager = run("SASRec", tmp_path / "eager", data, {**SASREC, "data_path_mode": "gpu"})
    traced = run("SASRec", tmp_path / "traced", data, {**SASREC, "data_path_mode": "gpu", "compile_model": True,
                                                       "compile_backend": "aot_eager"})
    assert traced["test"] == eager["test"] and traced["valid_curve"] == eager["valid_curve"]


def two_epochs_eager_and_compiled(work: Path, tmp_path: Path, **settings) -> tuple[dict, int, TensorTrainDataLoader]:
    """Two SASRec training epochs' losses, eager and under ``compile_model`` with the ``aot_eager`` backend (which
    computes as eager mode), from the same seed; the graphs the compiled epochs traced; the training loader."""
    losses, graphs = {}, {}
    for name, compiling in {"eager": {}, "compiled": {"compile_model": True, "compile_backend": "aot_eager"}}.items():
        trainer, train, _ = sasrec_trainer(work, tmp_path, **settings, **compiling)
        torch._dynamo.reset()
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        losses[name] = [trainer.device_epoch(train, epoch, trainer.model.calculate_loss) for epoch in range(2)]
        graphs[name] = torch._dynamo.utils.counters["stats"]["unique_graphs"] - before
    return losses, graphs["compiled"], train


def test_an_epochs_last_smaller_batch_runs_eagerly_instead_of_compiling_its_shape(work, tmp_path):
    """Under ``compile_model`` the training loss is compiled once, for the full batches: two epochs, each ending with
    a smaller batch, trace one graph, and train exactly as the uncompiled epochs, that last batch included."""
    losses, graphs, train = two_epochs_eager_and_compiled(work, tmp_path)
    assert len(train.rows) % train.step, "the subset must end each epoch with a smaller batch"
    assert losses["compiled"] == losses["eager"] and graphs == 1


def test_each_length_bucket_width_compiles_a_graph_of_its_own(work, tmp_path):
    """With ``length_buckets`` the full batches come in three widths: each is traced as a graph of static shapes (a
    graph of dynamic shapes, made by the second width, replayed CUDA graphs against another width's sizes on one H100
    GPU), and the compiled epochs train exactly as the uncompiled ones."""
    losses, graphs, train = two_epochs_eager_and_compiled(work, tmp_path, **BUCKETS)
    full_widths = {batch["item_id_list"].size(1) for batch in train if len(batch) == train.step}
    assert full_widths == {3, 8, 20} and graphs == 3 and losses["compiled"] == losses["eager"]


def test_training_steps_compiled_without_the_cuda_graphs_asked_for_are_one_warning_line(work, tmp_path, caplog):
    """``compile_mode: reduce-overhead`` asks for CUDA graphs; where torch.compile runs the step without them (here a
    CPU device) the trainer says so once, in one line, and training goes on."""
    torch._dynamo.reset()
    trainer, train, _ = sasrec_trainer(work, tmp_path, compile_model=True, compile_mode="reduce-overhead")
    with caplog.at_level("WARNING"):
        losses = [trainer._train_epoch(train, epoch) for epoch in range(2)]
    assert all(math.isfinite(loss) for loss in losses)
    warnings = [record.getMessage() for record in caplog.records if "without CUDA graphs" in record.getMessage()]
    assert len(warnings) == 1 and "TORCH_LOGS=cudagraphs prints why" in warnings[0], caplog.text


# BERT4Rec's masking (RecBole's ``mask_itemseq`` transform) on the device

@pytest.fixture(scope="module")
def bert4rec(work: Path) -> tuple:
    """BERT4Rec's config and its ``TensorTrainDataLoader`` on the subset."""
    config = build_config("BERT4Rec", "Instruments", config_dict={"data_path": str(work / "dataset"), **SASREC,
                                                                  "data_path_mode": "gpu"})
    return config, data_preparation(config, create_dataset(config))[0]


def scatter_rewrites(loss_of: Callable, batch) -> int:
    """How many scatters into a constant tensor inductor rewrote while compiling ``loss_of``'s forward and backward
    (its caches off: a graph loaded from them is not rewritten again)."""
    torch._dynamo.reset()
    torch._inductor.metrics.reset()
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        loss_of(batch).backward()
    return torch._inductor.metrics.num_matches_for_scatter_upon_const_tensor


def test_compile_model_compiles_bert4rec_without_inductors_scatter_rewrite(bert4rec):
    """Inductor rewrites the scatter into a constant tensor in the backward of BERT4Rec's cross-entropy loss, which
    gave wrong gradients on a CUDA device (docs/results/compile_check/); ``compile_model`` compiles it without that
    rewrite, and takes BERT4Rec on a CUDA device."""
    config, gpu_train = bert4rec
    model, batch = get_model("BERT4Rec")(config, gpu_train._dataset), next(iter(gpu_train))
    with torch._inductor.config.patch(optimize_scatter_upon_const_tensor=True):
        assert scatter_rewrites(torch.compile(model.calculate_loss), batch) == 1  # cross-entropy's backward
        assert scatter_rewrites(compiled(model.calculate_loss, {**config.final_config_dict, "compile_model": True}),
                                batch) == 0
    cuda_config = copy.deepcopy(config)
    cuda_config["compile_model"], cuda_config["device"] = True, torch.device("cuda")
    check_acceleration(cuda_config)


def test_a_compiled_training_step_holds_no_host_tensor_on_a_cuda_device(bert4rec, work, tmp_path):
    """On a CUDA device the traced training step of BERT4Rec (its multi-hot of the masked positions once set a Python
    1, a host tensor constant) and of SASRec holds no host tensor, which would make the cudagraphs backend skip its
    CUDA graphs."""
    config, gpu_train = bert4rec
    assert host_nodes_of_cuda_loss(get_model("BERT4Rec")(config, gpu_train._dataset), next(iter(gpu_train))) == []
    trainer, train, _ = sasrec_trainer(work, tmp_path)
    assert host_nodes_of_cuda_loss(trainer.model, next(iter(train))) == []


def masked(transform, loader: TensorTrainDataLoader, ft_ratio: float):
    """Every training row of ``loader`` (untransformed) and the same rows through ``transform`` with ``ft_ratio``."""
    rows = loader.rows[torch.arange(len(loader.rows))]
    transform.ft_ratio = ft_ratio
    return rows, transform(loader._dataset, copy.deepcopy(rows))


def test_device_masking_has_recbole_fields_and_masks_mask_ratio_of_the_items(bert4rec):
    config, gpu_train = bert4rec
    dataset = gpu_train._dataset
    recbole_batch = next(iter(TrainDataLoader(config, dataset, None, shuffle=True)))  # RecBole's own transform
    gpu_batch = next(iter(gpu_train))
    assert set(gpu_batch.columns) == set(recbole_batch.columns) >= {"Mask_item_id_list", "Pos_item_id", "Neg_item_id",
                                                                     "MASK_INDEX"}
    assert all(gpu_batch[name].dtype == recbole_batch[name].dtype and gpu_batch[name].shape == recbole_batch[name].shape
               for name in gpu_batch.columns)
    width, n_items = int(config["mask_ratio"] * config["MAX_ITEM_LIST_LENGTH"]), dataset.item_num
    random.seed(0)
    fractions = {}
    for name, transform in ("recbole", MaskItemSequence(config)), ("device", DeviceMaskItemSequence(config)):
        rows, batch = masked(transform, gpu_train, ft_ratio=0)
        sequences, items = rows["item_id_list"], rows["item_id_list"] > 0
        mask = batch["Mask_item_id_list"] == n_items
        pos, index, neg = batch["Pos_item_id"], batch["MASK_INDEX"], batch["Neg_item_id"]
        fractions[name] = (mask.sum() / items.sum()).item()
        assert not (mask & ~items).any() and torch.equal(batch["Mask_item_id_list"][~mask], sequences[~mask])
        expected = [[0] * width + [i for i, on in enumerate(row) if on] for row in mask.tolist()]
        assert index.tolist() == [row[-width:] for row in expected]  # the last `width` masked positions
        assert torch.equal(pos, torch.where(pos > 0, sequences.gather(1, index), 0))
        assert torch.equal((pos > 0).sum(1), mask.sum(1).clamp(max=width)) and torch.equal(neg > 0, pos > 0)
        assert not (neg.unsqueeze(2) == sequences.unsqueeze(1)).any(2)[pos > 0].any() and neg.max() < n_items
    ratio, total = config["mask_ratio"], items.sum().item()
    for fraction in fractions.values():  # four binomial standard errors over the subset's training items
        assert abs(fraction - ratio) < 4 * math.sqrt(ratio * (1 - ratio) / total)


def test_fine_tuning_batches_mask_each_last_item_as_recbole_does(bert4rec):
    config, gpu_train = bert4rec
    (_, recbole), (_, device) = (masked(transform, gpu_train, ft_ratio=1)
                                 for transform in (MaskItemSequence(config), DeviceMaskItemSequence(config)))
    for name in ("Mask_item_id_list", "Pos_item_id", "MASK_INDEX"):
        assert torch.equal(device[name], recbole[name])


def test_negatives_are_uniform_over_the_items_outside_each_sequence():
    torch.manual_seed(0)
    sequences = torch.tensor([[1, 3, 3, 0], [5, 4, 2, 1]]).repeat(3000, 1)
    draws = items_not_in(sequences, (6000, 2), n_items=7)  # items 1 .. 6
    for row, allowed in ((0, {2, 4, 5, 6}), (1, {3, 6})):
        counts = Counter(draws[row::2].flatten().tolist())
        assert set(counts) == allowed
        expected, p = 6000 / len(allowed), 1 / len(allowed)
        assert all(abs(count - expected) < 5 * math.sqrt(6000 * p * (1 - p)) for count in counts.values())


# Full-ranking evaluation on the device

def same_batch(ours: tuple, theirs: tuple) -> bool:
    """Whether two evaluation batches ``(interaction, history_index, positive_u, positive_i)`` are equal."""
    (interaction, history, positive_u, positive_i), (other, other_history, other_u, other_i) = ours, theirs
    return (set(interaction.columns) == set(other.columns)
            and all(torch.equal(interaction[name], other[name]) for name in interaction.columns)
            and (history is other_history is None or all(map(torch.equal, history, other_history)))
            and torch.equal(positive_u, other_u) and torch.equal(positive_i, other_i))


@pytest.mark.parametrize("model", ["SASRec", "Pop"])  # Pop: a general model, whose history items are masked
def test_device_eval_loader_yields_recbole_batches_and_metrics(work, tmp_path, model):
    config = build_config(model, "Instruments", config_dict={"data_path": str(work / "dataset"), **SASREC,
                                                             "eval_batch_size": 128 if model == "SASRec" else 50_000,
                                                             "checkpoint_dir": str(tmp_path)})
    init_seed(config["seed"], True)
    train, valid, test, _ = data_preparation(config, create_dataset(config))
    trainer = get_trainer(config["MODEL_TYPE"], model)(config, get_model(model)(config, train._dataset))
    trainer.fit(train, saved=False)
    for loader in (valid, test):
        on_device = TensorFullSortEvalDataLoader(config, loader._dataset, loader._sampler)
        assert isinstance(loader, FullSortEvalDataLoader) and len(on_device) == len(loader) > 1
        assert all(same_batch(ours, theirs) for ours, theirs in zip(on_device, loader, strict=True))
        assert trainer.evaluate(on_device, load_best_model=False) == trainer.evaluate(loader, load_best_model=False)


def test_validation_on_a_fixed_user_sample_and_the_test_on_every_user(work):
    settings = {"data_path": str(work / "dataset"), **SASREC, "data_path_mode": "gpu", "valid_sample_users": 100}

    def loaders(**changes):
        config = build_config("SASRec", "Instruments", config_dict={**settings, **changes})
        return data_preparation(config, create_dataset(config))

    _, valid, test, _ = loaders()
    users = valid._dataset.inter_feat["user_id"]
    assert isinstance(valid, TensorFullSortEvalDataLoader) and isinstance(test, TensorFullSortEvalDataLoader)
    assert len(users) == len(users.unique()) == 100 and len(test._dataset) == SUBSET_USERS
    assert torch.equal(loaders()[1]._dataset.inter_feat["user_id"], users)
    assert not torch.equal(loaders(seed=7)[1]._dataset.inter_feat["user_id"], users)


# Training with the device data path

def test_bert4rec_trains_on_the_device_path_and_the_same_seed_repeats_its_metrics(work, tmp_path):
    settings = {**SASREC, "data_path_mode": "gpu", "valid_sample_users": 200}
    first, second = (run("BERT4Rec", tmp_path / name, work / "dataset", settings) for name in ("first", "second"))
    assert first["valid"] == second["valid"] and first["test"] == second["test"]
    assert first["test"]["hit@10"] > 0


def sasrec_trainer(work: Path, tmp_path: Path, **settings) -> tuple:
    """A seeded SASRec trainer on the subset's device-resident training loader, that loader and the validation one."""
    config = build_config("SASRec", "Instruments", config_dict={"data_path": str(work / "dataset"), **SASREC,
                                                                "data_path_mode": "gpu", "checkpoint_dir": str(tmp_path),
                                                                **settings})
    train, valid = data_preparation(config, create_dataset(config))[:2]
    init_seed(config["seed"], True)
    return get_trainer(config["MODEL_TYPE"], "SASRec")(config, get_model("SASRec")(config, train._dataset)), train, valid


def test_an_epoch_without_per_step_waits_trains_exactly_as_recbole_loop(work, tmp_path):
    """The device path's epoch (losses summed on the device, read once) takes RecBole's steps: from the same weights,
    batches and seed it returns the same summed loss and leaves the same weights as ``Trainer._train_epoch``."""
    results = []
    for epoch in (lambda trainer, train: trainer.device_epoch(train, 0, trainer.model.calculate_loss),
                  lambda trainer, train: Trainer._train_epoch(trainer, train, 0)):
        trainer, train, _ = sasrec_trainer(work, tmp_path, clip_grad_norm={"max_norm": 1.0})
        loss = epoch(trainer, train)
        results.append((loss, copy.deepcopy(trainer.model.state_dict())))
    (device_loss, device_weights), (recbole_loss, recbole_weights) = results
    assert device_loss == pytest.approx(recbole_loss, rel=1e-6)
    assert all(torch.allclose(device_weights[name], recbole_weights[name], atol=1e-6) for name in recbole_weights)
    assert not torch.equal(device_weights["item_embedding.weight"],
                           sasrec_trainer(work, tmp_path)[0].model.state_dict()["item_embedding.weight"])


@pytest.mark.parametrize("mode", ["gpu", "recbole"])
def test_a_loss_that_is_not_finite_is_one_error_line(work, tmp_path, mode):
    trainer, train, _ = sasrec_trainer(work, tmp_path, data_path_mode=mode)
    with torch.no_grad():
        trainer.model.item_embedding.weight.fill_(float("nan"))
    # Anomaly detection (left on by any earlier import of RecBole's sine.py outside the harness) would raise first.
    with torch.autograd.set_detect_anomaly(False), pytest.raises(
            TrainingDivergedError, match=r"^the training loss .* — lower learning_rate, or clip gradients"):
        trainer._train_epoch(train, 0)


def test_auto_picks_the_device_path_on_a_cuda_device_for_a_run_it_can_train(work):
    def resolved(device: str, **settings) -> str:
        config = build_config("SASRec", "Instruments", config_dict={"data_path": str(work / "dataset"), **SASREC,
                                                                    **settings})
        assert config["data_path_mode"] == "recbole"  # on this machine's CPU
        config["data_path_mode"], config["device"] = "auto", torch.device(device)
        return resolve_data_path_mode(config)

    assert resolved("cuda") == "gpu" and resolved("cpu") == "recbole"
    negatives = {"loss_type": "BPR", "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}}
    assert resolved("cuda", **negatives) == "recbole"


def test_bfloat16_autocast_changes_the_training_loss_by_its_rounding_only(work, tmp_path):
    losses = {}
    for dtype in (None, "bfloat16"):
        trainer, train, _ = sasrec_trainer(work, tmp_path, autocast_dtype=dtype)
        losses[dtype] = trainer._train_epoch(train, 0)
    assert losses[None] != losses["bfloat16"] and losses["bfloat16"] == pytest.approx(losses[None], rel=0.02)


def test_bfloat16_autocast_also_scores_the_evaluation(work, tmp_path):
    """The evaluation's forward passes run under the same autocast as the training steps."""
    trainer, _, valid = sasrec_trainer(work, tmp_path, autocast_dtype="bfloat16")
    dtypes = set()
    hook = trainer.model.trm_encoder.layer[0].feed_forward.dense_1.register_forward_hook(
        lambda module, inputs, output: dtypes.add(output.dtype))
    trainer.evaluate(valid, load_best_model=False)
    hook.remove()
    assert dtypes == {torch.bfloat16}


@pytest.fixture(scope="module")
def two_domains(amazon_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 500 Instruments users and 300 Games users (a pretraining source) as atomic files under ``dataset/``."""
    return convert_user_subsets(amazon_dir, tmp_path_factory.mktemp("domains"), {"Instruments": 500, "Games": 300})


@pytest.mark.parametrize("model, settings", [
    ("TIGER", TRANSFORMER),
    ("MQL4GRec", {**TRANSFORMER, "pretrain_datasets": ["Games"], "pretrain_epochs": 1}),  # a source domain
    ("QBert4Rec", {**QBERT4REC, "pretrain_datasets": [], "pretrain_epochs": 1}),  # pretrained on the target's data
])
def test_semantic_id_models_pretrain_train_and_evaluate_on_device_loaders(two_domains, tmp_path, model, settings):
    """The models build their masks and targets from the batch with torch: every loader they read is on the device,
    the pretraining trainer's loaders (the sources', batched by pretrain_batch_size) too."""
    config = build_config(model, "Instruments", config_dict={"data_path": str(two_domains / "dataset"), **SEMANTIC_ID,
                                                             "checkpoint_dir": str(tmp_path), **settings})
    sources = [build_config(model, name, config_dict=source_settings(config))
               for name in pretrain_dataset_names(config)]
    ensure_semantic_ids(config, sources)
    init_seed(config["seed"], True)
    train, valid, test, pretrain = data_preparation(config, create_dataset(config, sources))
    assert isinstance(train, TensorTrainDataLoader) and set(pretrain) == set(settings.get("pretrain_datasets", []))
    assert isinstance(valid, TensorFullSortEvalDataLoader) and isinstance(test, TensorFullSortEvalDataLoader)
    trainer = get_trainer(config["MODEL_TYPE"], model)(config, get_model(model)(config, train._dataset))
    phases = [(trainer.model.calculate_loss, train)]
    if config["pretrain_epochs"]:
        phases += [(partial(trainer.model.pretrain_loss, domain=domain), loader)
                   for domain, loader in trainer.pretraining_data(train, pretrain)]
    for loss, loader in phases:
        assert isinstance(loader, TensorTrainDataLoader)
        batch = next(iter(loader))
        assert len(batch) == min(loader.step, len(loader._dataset)) and torch.isfinite(loss(batch))
    assert set(trainer.evaluate(valid, load_best_model=False)) >= {"hit@10", "ndcg@10"}


class HostTensors(TorchDispatchMode):
    """The aten ops that return a tensor on the host while a step runs on another device: on a GPU each such tensor
    is copied to the device, a copy that waits for the GPU, so the step could not run ahead of it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        results = result if isinstance(result, (tuple, list)) else [result]
        if any(isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu" for tensor in results):
            self.ops.append(str(func))
        return result


def losses_on_meta(config, train_data, losses_of: Callable) -> tuple[list[torch.Tensor], list[str]]:
    """``losses_of(model, batch)`` with the config's model and the loader's first batch on the "meta" device, and the
    aten ops that returned a host tensor meanwhile."""
    batch = next(iter(train_data)).to("meta")
    config["device"] = torch.device("meta")  # where the model puts the tensors it holds besides its parameters
    model = get_model(config["model"])(config, train_data._dataset).to("meta")
    with HostTensors() as host:
        losses = losses_of(model, batch)
    return losses, host.ops


@pytest.mark.parametrize("model_name, settings", [
    ("GRU4Rec", SASREC), ("SASRec", SASREC), ("BERT4Rec", SASREC), ("FDSA", SASREC),
    ("TIGER", FULL_LENGTH_T5), ("MQL4GRec", FULL_LENGTH_T5), ("MACRec", FULL_LENGTH_T5),
])
def test_a_device_path_training_step_makes_no_tensor_on_the_host(work, model_name, settings):
    """A model's training loss on a device-path batch, run on the "meta" device (shapes without data), makes every
    tensor on that device: nothing is made on the host and copied over, so on a GPU the step never waits for it. A
    data-dependent read (``.item()``, a tensor's truth value) fails on "meta" as well. RecBole's own
    BERT4Rec.multi_hot_embed and FDSA's token-sequence pooling made such tensors (recbole_qrec.compat replaces them),
    and transformers' T5 read a 2D padding mask back (the models pass it as a 4D additive mask)."""
    config = build_config(model_name, "Instruments", config_dict={"data_path": str(work / "dataset"), **settings,
                                                                   "data_path_mode": "gpu"})
    train_data = data_preparation(config, create_dataset(config))[0]
    (loss,), host_ops = losses_on_meta(config, train_data, lambda model, batch: [model.calculate_loss(batch)])
    assert loss.device.type == "meta" and host_ops == []


def test_qbert4rec_training_and_pretraining_steps_make_no_tensor_on_the_host(two_domains, tmp_path):
    """The same for QBert4Rec's fine-tuning loss and its multi-mask pretraining loss (span, tail and multi-region
    masks drawn on the device)."""
    config = build_config("QBert4Rec", "Instruments", config_dict={
        "data_path": str(two_domains / "dataset"), **SEMANTIC_ID, "checkpoint_dir": str(tmp_path), **QBERT4REC,
        "pretrain_datasets": [], "pretrain_epochs": 1})
    ensure_semantic_ids(config, [])
    train_data = data_preparation(config, create_dataset(config))[0]
    losses, host_ops = losses_on_meta(config, train_data, lambda model, batch: [
        model.calculate_loss(batch), model.pretrain_loss(batch)])  # pretraining on the target's own sequences
    assert len(losses) == 2 and all(loss.device.type == "meta" for loss in losses) and host_ops == []


def test_mmesid_training_step_and_ranking_make_no_tensor_on_the_host(two_domains, tmp_path):
    """The same for MMESID's training loss and its ranking of a batch, by beam search and exact scores: transformers'
    LLaMA read a 2D padding mask back at every call (the model passes it as a 4D additive causal mask)."""
    config = build_config("MMESID", "Instruments", config_dict={
        "data_path": str(two_domains / "dataset"), **SEMANTIC_ID, "checkpoint_dir": str(tmp_path), **MMESID_SETTINGS})
    ensure_semantic_ids(config)
    train_data = data_preparation(config, create_dataset(config))[0]

    def loss_and_rankings(model, batch) -> list[torch.Tensor]:
        loss = model.calculate_loss(batch)
        model.eval()
        beam = model.full_sort_predict(batch)
        model.eval_mode = "exact"
        return [loss, beam, model.full_sort_predict(batch)]

    outputs, host_ops = losses_on_meta(config, train_data, loss_and_rankings)
    assert len(outputs) == 3 and all(output.device.type == "meta" for output in outputs) and host_ops == []


@pytest.mark.parametrize("pooling_mode", ["mean", "max", "sum"])
def test_pooled_token_seq_embeddings_equal_recbole_own_pooling(pooling_mode):
    """The token-sequence pooling without a host-to-device copy (recbole_qrec.compat) gives RecBole's values bit for
    bit, run from RecBole's source, in each pooling mode."""
    import importlib.util

    import recbole.model.layers as patched_module
    from recbole_qrec.compat import pooled_token_seq_embeddings, prepare_recbole

    prepare_recbole()
    assert patched_module.ContextSeqEmbAbstractLayer.embed_token_seq_fields is pooled_token_seq_embeddings
    spec = importlib.util.spec_from_file_location("recbole_layers_as_shipped", patched_module.__file__)
    shipped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shipped)
    generator = torch.Generator().manual_seed(0)
    tables = {"item": torch.nn.ModuleList([torch.nn.Embedding(50, 8), torch.nn.Embedding(30, 8)])}
    holder = type("Holder", (), {"pooling_mode": pooling_mode, "device": torch.device("cpu"),
                                 "token_seq_embedding_table": tables})()
    fields = [torch.randint(0, 50, (4, 6, 5), generator=generator),
              torch.randint(0, 30, (4, 6, 3), generator=generator)]
    fields[0][0, 0] = 0  # an item without tokens (the padding item)
    expected = shipped.ContextSeqEmbAbstractLayer.embed_token_seq_fields(holder, fields, "item")
    pooled = pooled_token_seq_embeddings(holder, fields, "item")
    assert pooled.shape == (4, 6, 2, 8) and torch.equal(pooled, expected)
    assert pooled_token_seq_embeddings(holder, [], "item") is None


def test_bert4rec_replacements_equal_recbole_own_methods():
    """The vectorised test reconstruction and the multi-hot of the masked positions built on their device
    (recbole_qrec.compat) against RecBole's own methods, run from RecBole's source."""
    import importlib.util

    import recbole.model.sequential_recommender.bert4rec as patched_module
    from recbole_qrec.compat import bert4rec_multi_hot, bert4rec_test_sequences, prepare_recbole

    prepare_recbole()
    assert patched_module.BERT4Rec.reconstruct_test_data is bert4rec_test_sequences
    assert patched_module.BERT4Rec.multi_hot_embed is bert4rec_multi_hot
    spec = importlib.util.spec_from_file_location("recbole_bert4rec_as_shipped", patched_module.__file__)
    shipped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shipped)
    holder = type("Holder", (), {"mask_token": 1001})()
    generator = torch.Generator().manual_seed(0)
    max_len = 20
    lengths = torch.tensor([1, 2, 7, 19, 20, 20, 13])
    item_seq = torch.randint(1, 1000, (len(lengths), max_len), generator=generator)
    item_seq[torch.arange(max_len) >= lengths.unsqueeze(1)] = 0  # histories left-aligned, zero padded
    expected = shipped.BERT4Rec.reconstruct_test_data(holder, item_seq.clone(), lengths)
    assert torch.equal(bert4rec_test_sequences(holder, item_seq, lengths), expected)
    masked_index = torch.randint(0, max_len, (len(lengths), 4), generator=generator)
    masked_index[:, -1] = 0  # RecBole pads the masked positions with 0
    multi_hot = bert4rec_multi_hot(holder, masked_index, max_len)
    assert multi_hot.shape == (len(lengths) * 4, max_len) and (multi_hot.sum(dim=1) == 1).all()
    assert torch.equal(multi_hot, shipped.BERT4Rec.multi_hot_embed(holder, masked_index, max_len))
