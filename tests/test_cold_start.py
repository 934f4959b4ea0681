"""The cold-start protocol (``cold_start_share``, :mod:`recbole_qrec.data.cold_start`) on the 500-user Instruments subset.

The newest share of the items by first appearance are cold: no training sequence and no validation target holds one,
test targets may; the test is reported per group of users (warm / cold target) with RecBole's metrics; an ID-only
model, which only ever saw cold items as negatives, ranks cold targets far below where a content model ranks them.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from recbole.utils import init_seed

from recbole_qrec.cli import main as cli_main
from recbole_qrec.data import create_dataset, data_preparation
from recbole_qrec.data.cold_start import target_groups
from recbole_qrec.data.eval_dataloader import TensorFullSortEvalDataLoader
from recbole_qrec.errors import ConfigError
from recbole_qrec.quick_start import evaluate_target_groups, run_recbole_qrec
from recbole_qrec.table import build_table
from recbole_qrec.tokenize import ensure_semantic_ids
from recbole_qrec.trainer import get_trainer
from recbole_qrec.utils import get_model
from conftest import work_config

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "Instruments"
SHARE = 0.2
SASREC = {"hidden_size": 32, "inner_size": 64, "n_layers": 1, "n_heads": 2, "epochs": 3, "eval_step": 3,
          "train_batch_size": 256, "learning_rate": 0.005}
# QBert4Rec scoring an item by its semantic-ID codes alone (no per-item parameters), tiny stages.
QBERT4REC = {"scoring": "levels", "injection_dim": 32, "injection_epochs": 1, "injection_batch_size": 512,
             "sid_levels": 2, "sid_codebook_size": 64, "sid_code_dim": 16, "sid_epochs": 2, "pretrain_epochs": 0,
             "hidden_size": 32, "inner_size": 64, "n_layers": 1, "n_heads": 2, "MAX_ITEM_LIST_LENGTH": 8,
             "epochs": 1, "eval_step": 1, "train_batch_size": 256, "learning_rate": 0.005}


def cold_config(work, model="SASRec", **settings):
    return work_config(model, work, **{"results_dir": str(work / "results"), "allow_data_mismatch": True,
                                       "use_gpu": False, "show_progress": False, "cold_start_share": SHARE, **settings})


def loaded(config):
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    return (dataset, *data_preparation(config, dataset)[:3])


@pytest.fixture(scope="module")
def interactions(work) -> pd.DataFrame:
    """``<dataset>.inter`` as written, with each row's position in the file."""
    inter = pd.read_csv(work / "dataset" / NAME / f"{NAME}.inter", sep="\t", dtype=str)
    inter.columns = [column.split(":")[0] for column in inter.columns]
    return inter.assign(timestamp=inter["timestamp"].astype(float), row=range(len(inter)))


@pytest.fixture(scope="module")
def split(work):
    """The SASRec cold-start dataset and its train/valid/test loaders, and the cold item tokens."""
    dataset, train, valid, test = loaded(cold_config(work))
    cold_tokens = set(dataset.id2token(dataset.iid_field, dataset.cold_items.nonzero().flatten().numpy()))
    return dataset, train, valid, test, cold_tokens


@pytest.fixture(scope="module")
def sasrec_record(work, tmp_path_factory, monkeypatch_module):
    """A SASRec run through the entry point under the protocol, and its result record."""
    monkeypatch_module.chdir(tmp_path_factory.mktemp("run"))  # RecBole's log/ folders
    return run_recbole_qrec("SASRec", NAME, config_dict={
        "data_path": str(work / "dataset"), "checkpoint_dir": str(work / "saved"), "results_dir": str(work / "results"),
        "allow_data_mismatch": True, "use_gpu": False, "cold_start_share": SHARE, **SASREC})


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_cold_items_are_the_newest_share_by_first_appearance(interactions, split):
    dataset, *_, cold_tokens = split
    first = interactions.sort_values(["timestamp", "row"]).drop_duplicates("item_id").set_index("item_id")
    assert len(cold_tokens) == round(SHARE * len(first))
    order = list(zip(first["timestamp"], first["row"]))
    cold = [when for item, when in zip(first.index, order) if item in cold_tokens]
    warm = [when for item, when in zip(first.index, order) if item not in cold_tokens]
    assert max(warm) < min(cold)  # every cold item first appears after every warm item
    assert dataset.item_num - 1 == len(first)  # cold items keep their ids, interactions left or not


def test_training_and_validation_never_see_a_cold_item(interactions, split):
    dataset, train, valid, test, cold_tokens = split
    cold = dataset.cold_items
    for loader in (train, valid, test):  # histories: nothing before a test target is cold
        assert not cold[loader._dataset.inter_feat[dataset.item_id_list_field]].any()
    assert not cold[train._dataset.inter_feat[dataset.iid_field]].any()
    assert not cold[valid._dataset.inter_feat[dataset.iid_field]].any()
    cold_targets = cold[test._dataset.inter_feat[dataset.iid_field]]
    # Test targets are the users' last interactions in the file, cold exactly when that item is.
    last = interactions.sort_values(["timestamp", "row"]).drop_duplicates("user_id", keep="last").set_index("user_id")
    users = dataset.id2token(dataset.uid_field, test._dataset.inter_feat[dataset.uid_field].numpy())
    targets = dataset.id2token(dataset.iid_field, test._dataset.inter_feat[dataset.iid_field].numpy())
    assert list(targets) == list(last.loc[users, "item_id"])
    assert int(cold_targets.sum()) == int(last["item_id"].isin(cold_tokens).sum()) > 0
    # Only the interactions with cold items before a user's last one are gone (no user left too short here).
    assert dataset.dropped_users == 0 and len(users) == interactions["user_id"].nunique()
    removed = interactions["item_id"].isin(cold_tokens) & ~interactions["row"].isin(last["row"])
    assert len(train._dataset) + len(valid._dataset) + len(test._dataset) == len(interactions) - removed.sum() - len(users)


def test_record_splits_the_test_into_warm_and_cold_targets(sasrec_record, split, work):
    record, test = sasrec_record, split[3]
    groups = record["cold_start"]
    assert groups["share"] == SHARE and groups["cold_items"] == len(split[4])
    assert groups["warm_users"] + groups["cold_users"] == len(test._dataset)
    assert groups["cold_users"] == int(split[0].cold_items[test._dataset.inter_feat["item_id"]].sum())
    for metric, value in record["test"].items():  # RecBole's per-user means, rounded to 4 places
        mean = (groups["warm_users"] * record["test_warm"][metric]
                + groups["cold_users"] * record["test_cold"][metric]) / len(test._dataset)
        assert abs(value - mean) <= 1e-4 + 1e-9, metric
    assert record["test"] != record["test_warm"]  # the cold users count
    written = json.loads((work / "results" / "results.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert written["test_cold"] == record["test_cold"] and written["cold_start"] == groups


def trained_sasrec(config, dataset, record):
    """The SASRec that ``record``'s run trained, for ``dataset``."""
    model = get_model("SASRec")(config, dataset)
    model.load_state_dict(torch.load(record["checkpoint"], weights_only=True)["state_dict"])
    return model


def test_device_loaders_evaluate_the_groups_as_recbole_loaders(work, split, sasrec_record):
    dataset, train, _, test, _ = split
    config = cold_config(work, data_path_mode="gpu", **SASREC)
    gpu_test = loaded(config)[3]
    trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, trained_sasrec(config, train._dataset, sasrec_record))
    gpu_groups = target_groups(gpu_test, dataset.cold_items)
    assert all(isinstance(loader, TensorFullSortEvalDataLoader) for loader in gpu_groups.values())
    plain = evaluate_target_groups(trainer, test, False)
    assert evaluate_target_groups(trainer, gpu_test, False) == plain
    assert plain["cold_start"]["cold_users"] == len(gpu_groups["cold"]._dataset) > 0
    assert plain["test_warm"]["hit@10"] > 0  # a trained model: the comparison is not between zeros


def cold_target_ranks(model, loader) -> torch.Tensor:
    """The share of the items a model scores above each cold test target (0: first)."""
    model.eval()
    shares = []
    with torch.no_grad():
        for interaction, _, _, targets in loader:
            scores = model.full_sort_predict(interaction).view(len(interaction), -1)[:, 1:]  # no padding item
            target = scores[torch.arange(len(interaction)), targets - 1]
            shares.append((scores > target[:, None]).sum(1) / (scores.shape[1] - 1))
    return torch.cat(shares)


def test_content_model_ranks_cold_targets_far_above_an_id_model(work, split, sasrec_record):
    """SASRec only ever met cold items as negatives: it ranks them low. QBert4Rec scoring items by their semantic
    IDs (content codes, no per-item parameters) ranks them where their codes put them."""
    dataset, train, _, test, _ = split
    sasrec = trained_sasrec(cold_config(work, **SASREC), train._dataset, sasrec_record)
    cold_loader = target_groups(test, dataset.cold_items)["cold"]
    id_ranks = cold_target_ranks(sasrec, cold_loader)

    config = cold_config(work, "QBert4Rec", **QBERT4REC)
    ensure_semantic_ids(config)
    content_dataset, content_train, content_valid, content_test = loaded(config)
    assert torch.equal(content_dataset.cold_items.nonzero(), dataset.cold_items.nonzero())  # one protocol, one id space
    init_seed(config["seed"], True)
    qbert4rec = get_model("QBert4Rec")(config, content_train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "QBert4Rec")(config, qbert4rec)
    trainer.fit(content_train, content_valid, saved=False, show_progress=False)
    content_ranks = cold_target_ranks(qbert4rec, target_groups(content_test, content_dataset.cold_items)["cold"])
    assert float(id_ranks.mean()) > 0.65, float(id_ranks.mean())
    assert float(content_ranks.mean()) < float(id_ranks.mean()) - 0.1, (float(content_ranks.mean()), float(id_ranks.mean()))


TIGER = {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
         "user_buckets": 0, "beam_size": 20, "eval_batch_size": 64}


def test_tiger_lets_unseen_items_follow_the_beam_item_that_shares_their_prefix(work, split):
    """TIGER's cold-start rule: the same weights rank the plain beam, plus, per user, at most unseen_item_share of
    beam_size items that were never a training target (every cold item is one), each sharing its first
    unseen_prefix_levels codes with a beam item and scored just below the best such item; nothing else changes."""
    dataset, *_ = split
    plain_config = cold_config(work, "TIGER", **TIGER)
    _, train, _, test = loaded(plain_config)
    init_seed(plain_config["seed"], True)
    plain = get_model("TIGER")(plain_config, train._dataset).eval()
    admitting = get_model("TIGER")(cold_config(work, "TIGER", **TIGER, unseen_item_share=0.5, unseen_prefix_levels=1),
                                   train._dataset).eval()
    admitting.load_state_dict(plain.state_dict())
    unseen = torch.zeros(len(dataset.cold_items), dtype=torch.bool)
    unseen[admitting.unseen_items] = True
    assert bool(unseen[dataset.cold_items].all())
    interaction = next(iter(test))[0]
    with torch.no_grad():
        beam, scores = plain.full_sort_predict(interaction), admitting.full_sort_predict(interaction)
    changed = scores != beam
    assert bool(unseen[changed.nonzero()[:, 1]].all()) and int(changed.sum(1).max()) <= 10 and bool(changed.any())
    first_code = admitting.item_codes[:, 0]
    for row, item in changed.nonzero().tolist():
        followed = torch.isfinite(beam[row]) & (first_code == first_code[item])
        assert scores[row, item] < beam[row][followed].max() and scores[row, item] > beam[row][followed].max() - 1e-4


def test_table_shows_warm_or_cold_targets(sasrec_record, work, tmp_path, capsys):
    plain = {key: value for key, value in sasrec_record.items() if key not in ("test_warm", "test_cold", "cold_start")}
    records = [sasrec_record, {**plain, "model": "GRU4Rec", "config_hash": "other"}]
    for split, key in (("all", "test"), ("warm", "test_warm"), ("cold", "test_cold")):
        built = build_table(records, ["hit@10", "ndcg@10"], split=split)
        assert built.cells[("SASRec", NAME)]["ndcg@10"].mean == sasrec_record[key]["ndcg@10"]
        assert (("GRU4Rec", NAME) in built.cells) == (split == "all")  # records without the split are left out
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    cli_main(["table", str(path), "--split", "cold", "--metrics", "ndcg@10"])
    assert "whose test target is a cold item" in capsys.readouterr().out
    path.write_text(json.dumps(plain) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["table", str(path), "--split", "cold"])
    assert exit_info.value.code == 2
    assert "no record has test_cold (--split cold)" in capsys.readouterr().err


@pytest.mark.parametrize("settings, message", [
    ({"cold_start_share": 0}, "cold_start_share must be a number in (0, 1)"),
    ({"cold_start_share": 1}, "cold_start_share must be a number in (0, 1)"),
    ({"cold_start_share": -0.1}, "cold_start_share must be a number in (0, 1)"),
    ({"cold_start_share": True}, "cold_start_share must be a number in (0, 1)"),
    ({"cold_start_share": "ten"}, "cold_start_share must be a number in (0, 1)"),
    ({"eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": "user", "mode": "full"}},
     "cold_start_share needs the time-ordered leave-one-out split"),
    ({"model": "BPR"}, "cold_start_share applies to sequential models"),
])
def test_bad_cold_start_settings_are_one_line_errors(work, settings, message):
    settings = {"cold_start_share": SHARE, **settings}
    model = settings.pop("model", "SASRec")
    with pytest.raises(ConfigError) as error:
        cold_config(work, model, **settings)
    assert message in str(error.value) and " — " in str(error.value) and "\n" not in str(error.value)


def test_a_dataset_without_an_item_file_is_refused(work, tmp_path):
    folder = tmp_path / NAME
    folder.mkdir()
    (folder / f"{NAME}.inter").write_bytes((work / "dataset" / NAME / f"{NAME}.inter").read_bytes())
    config = cold_config(work, data_path=str(tmp_path))
    with pytest.raises(ConfigError, match=f"cold_start_share needs {NAME}.item"):
        create_dataset(config)
