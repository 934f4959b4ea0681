"""Q-Bert4Rec across domains and modalities, on small subsets of the real data in one data_path.

Target Instruments (text + image codes, 500 users); sources Games (text codes only, 300 users)
and Arts (no content, 200 users). The tokenize stage (stages 1-2) runs once over the union of their items
and writes each domain's ``.sid``; pretraining runs on the sources, fine-tuning on the target.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from recbole.utils import init_seed

from dataset_prep.subset import convert_user_subsets
from recbole_qrec.config import build_config
from recbole_qrec.data.cross_domain import pretrain_dataset_names, source_settings
from recbole_qrec.errors import ConfigError
from recbole_qrec.model.qbert4rec import QBert4Rec
from recbole_qrec.data.item_features import concat_features
from recbole_qrec.data.sid import SID_FIELD, read_code_column, sid_metadata_path
from recbole_qrec.qbert4rec_stage import inject, quantize
from recbole_qrec.quantization.metrics import level_usage
from recbole_qrec.stage_cache import stage_inputs
from recbole_qrec.tokenize import ensure_semantic_ids
from recbole_qrec.trainer import get_trainer
from recbole_qrec.trainer.pretrain_trainer import InterleavedDomains
from test_qbert4rec import TINY, load_data

pytestmark = pytest.mark.usefixtures("one_thread")

SUBSET_USERS = {"Instruments": 500, "Games": 300, "Arts": 200}
SOURCES = ["Games", "Arts"]
SETTINGS = {**TINY, "pretrain_epochs": 6, "pretrain_learning_rate": 0.01}  # pretraining long enough to learn


@pytest.fixture(scope="module")
def work(amazon_dir, tmp_path_factory):
    """A folder whose ``dataset/`` holds the three subsets as atomic files (``saved/``: checkpoints and codes)."""
    return convert_user_subsets(amazon_dir, tmp_path_factory.mktemp("cross_domain"), SUBSET_USERS)


def make_config(work, dataset="Instruments", **overrides):
    settings = {"data_path": str(work / "dataset"), "checkpoint_dir": str(work / "saved"), **SETTINGS, **overrides}
    return build_config("QBert4Rec", dataset, config_dict=settings)


def source_configs(config):
    return [build_config("QBert4Rec", name, config_dict=source_settings(config)) for name in pretrain_dataset_names(config)]


@pytest.fixture(scope="module")
def cross(work):
    """Config, target loaders, the sources' pretraining loaders and a QBert4Rec built with both sources
    (stages 1-2 over the union)."""
    config = make_config(work, pretrain_datasets=SOURCES)
    _, train, valid, test, pretrain_data = load_data(config, source_configs(config))
    init_seed(config["seed"], True)
    return config, train, valid, test, pretrain_data, QBert4Rec(config, train._dataset)


def harness_trainer(config, model):
    """The entry point's trainer: the pretrain/fine-tune trainer with weights-only-loadable checkpoints."""
    return get_trainer(config["MODEL_TYPE"], config["model"])(config, model)


def code_tables(model):
    return {"Instruments": model.item_codes, **{name: table.codes for name, table in model.source_codes.items()}}


def test_every_domain_has_a_code_table_with_a_padding_row(cross):
    config, train, _, _, pretrain_data, model = cross
    tables = code_tables(model)
    item_counts = {"Instruments": train._dataset.item_num,
                   **{name: loader._dataset.item_num for name, loader in pretrain_data.items()}}
    assert list(pretrain_data) == list(model.source_codes) == SOURCES
    for name, codes in tables.items():
        assert codes.shape == (item_counts[name], config["sid_levels"]), name
        assert bool((codes[0] == 0).all()), name


def test_codes_are_unique_over_the_union_of_the_domains(cross):
    real_rows = torch.cat([codes[1:] for codes in code_tables(cross[-1]).values()])
    assert len(real_rows.unique(dim=0)) == len(real_rows)


def test_sources_are_aligned_with_the_target_modalities(cross):
    config = cross[0]
    features = stage_inputs("QBert4Rec", config, source_configs(config)).features
    assert list(features) == ["Instruments", *SOURCES]
    widths = [[matrix.shape[1] for matrix in part.matrices] for part in features.values()]
    assert all(part.modalities == ["text", "image"] for part in features.values()) and widths[1:] == widths[:-1]
    assert bool(features["Instruments"].present.all())
    assert bool(features["Games"].present[:, 0].all()) and not features["Games"].present[:, 1].any()
    assert not features["Arts"].present.any()  # no content: its items have their ID vectors only


def test_every_domain_weights_its_content_code_levels_as_the_target(work):
    config = make_config(work, pretrain_datasets=SOURCES, code_proxy_level_decay=0.5)
    features = stage_inputs("QBert4Rec", config, source_configs(config)).features
    for name in ("Instruments", "Games"):  # Arts has no content codes here
        text = features[name].matrices[0]
        present = features[name].present[:, 0]
        block_sums = text[present].view(int(present.sum()), -1, 256).sum(2)  # one code per level: its weight
        assert torch.allclose(block_sums, torch.tensor([1.0, 0.5, 0.25, 0.125])), name


def test_the_stage_metadata_describes_each_domains_codes(cross):
    config = cross[0]
    inputs = stage_inputs("QBert4Rec", config, source_configs(config))
    metadata = json.loads(sid_metadata_path(inputs.sid_file("Instruments")).read_text())
    assert list(metadata["domains"]) == ["Instruments", *SOURCES]
    for name, figures in metadata["domains"].items():
        codes = np.array(list(read_code_column(inputs.sid_file(name), SID_FIELD).values()))[:, : config["sid_levels"]]
        utilisation, perplexity = level_usage(codes, config["sid_codebook_size"])
        assert figures["perplexity"] == pytest.approx(perplexity) and figures["utilisation"] == utilisation, name
        assert sum(figures["depth_histogram"]) == len(codes) == metadata["items"][name] and figures["fused_norm"] > 0
    # the union's training depths per stage-1 epoch: every item of the three domains once
    assert len(metadata["injection_depths_per_epoch"]) == config["injection_epochs"]
    assert {sum(counts) for counts in metadata["injection_depths_per_epoch"]} == {sum(metadata["items"].values())}


def test_l2_normalised_quantization_does_not_depend_on_a_domains_embedding_scale(cross):
    """The RQ-VAE's input scale is shared by the union, so a domain of shorter fused embeddings gets other codes;
    with sid_l2_normalize its codes depend on directions only."""
    config = copy.deepcopy(cross[0])
    inputs = stage_inputs("QBert4Rec", config, source_configs(config))
    fused, _, _ = inject(config, concat_features(list(inputs.features.values())))
    target = len(inputs.item_tokens["Instruments"])
    shrunk = fused.clone()
    shrunk[:target] *= 0.25  # a power of two: the normalised rows are the same floats
    codes, kept = {}, {}
    for normalize in (True, False):
        config["sid_l2_normalize"] = normalize
        codes[normalize] = quantize(config, fused).codes
        kept[normalize] = (codes[normalize] == quantize(config, shrunk).codes).all(1)[:target].mean()
    assert kept[True] == 1 and kept[False] < 0.5, kept
    # the option is exactly the RQ-VAE on the normalised embeddings
    assert np.array_equal(quantize(config, torch.nn.functional.normalize(fused, dim=1)).codes, codes[True])


def test_only_the_target_codes_are_saved_and_the_source_codes_follow_the_model(cross):
    model = cross[-1]
    assert "item_codes" in model.state_dict()
    assert not [key for key in model.state_dict() if key.startswith("source_codes")]
    assert {name for name, _ in model.named_buffers()} >= {f"source_codes.{name}.codes" for name in SOURCES}


def test_pretraining_runs_on_the_sources_and_lowers_the_loss(cross, tmp_path, monkeypatch):
    config, train, _, _, pretrain_data, model = cross
    monkeypatch.chdir(tmp_path)  # the trainer opens ./log_tensorboard
    trainer = harness_trainer(config, model)
    data = trainer.pretraining_data(train, pretrain_data)
    assert [domain for domain, _ in data] == SOURCES
    losses = trainer.pretrain(train, pretrain_data, verbose=False)
    assert len(losses) == config["pretrain_epochs"] and losses[-1] < losses[0]
    steps = sum(len(loader) for _, loader in data)
    assert trainer.pretrain_loss_curve == pytest.approx([loss / steps for loss in losses])  # the record's curve
    assert_source_curves_make_up_the_whole(trainer, data)


def assert_source_curves_make_up_the_whole(trainer, data) -> None:
    """One curve per source, epoch for epoch, whose losses per step weighted by the source's steps make up the whole
    pretraining curve."""
    curves, steps = trainer.pretrain_domain_loss_curves, {domain: len(loader) for domain, loader in data}
    assert list(curves) == SOURCES and all(len(curve) == len(trainer.pretrain_loss_curve) for curve in curves.values())
    assert [sum(curves[d][epoch] * steps[d] for d in SOURCES) / sum(steps.values())
            for epoch in range(len(trainer.pretrain_loss_curve))] == pytest.approx(trainer.pretrain_loss_curve)


def batch_rows(interaction, config):
    """The (user, target item, history length) of each row of a batch."""
    fields = (config["USER_ID_FIELD"], config["ITEM_ID_FIELD"], config["ITEM_LIST_LENGTH_FIELD"])
    return list(zip(*(interaction[field].tolist() for field in fields)))


def test_interleaved_pretraining_mixes_every_batch_of_every_source_once_each_under_its_own_domain(
        work, cross, tmp_path, monkeypatch):
    _, train, _, _, pretrain_data, _ = cross
    config = make_config(work, pretrain_datasets=SOURCES, pretrain_domain_order="interleaved", pretrain_batch_size=32)
    monkeypatch.chdir(tmp_path)
    init_seed(config["seed"], True)
    trainer = harness_trainer(config, QBert4Rec(config, train._dataset))
    data = trainer.pretraining_data(train, pretrain_data)
    rows = {domain: batch_rows(loader._dataset.inter_feat, config) for domain, loader in data}
    batches, seen, order = InterleavedDomains(data, [config["seed"], 0]), {domain: [] for domain in SOURCES}, []
    for interaction in batches:
        batch = batch_rows(interaction, config)
        other, = set(SOURCES) - {batches.domain}
        assert set(batch) <= set(rows[batches.domain]) and not set(batch) <= set(rows[other])  # the batch's domain
        seen[batches.domain] += batch
        order.append(batches.domain)
    assert all(sorted(seen[domain]) == sorted(rows[domain]) for domain in SOURCES)  # every row once
    assert [order.count(domain) for domain in SOURCES] == [len(loader) for _, loader in data]
    assert sum(a != b for a, b in zip(order, order[1:])) > len(SOURCES)  # mixed: sequential switches once
    assert list(InterleavedDomains(data, [config["seed"], 0]).order()) == [SOURCES.index(d) for d in order]
    assert list(InterleavedDomains(data, [config["seed"], 1]).order()) != [SOURCES.index(d) for d in order]
    # pretraining in that order learns, and the sources' curves make up the whole one
    losses = trainer.pretrain(train, pretrain_data, verbose=False)
    assert losses[-1] < losses[0]
    assert all(curve[-1] < curve[0] for curve in trainer.pretrain_domain_loss_curves.values())
    assert_source_curves_make_up_the_whole(trainer, data)


def test_an_unknown_pretrain_domain_order_is_one_config_error(work):
    with pytest.raises(ConfigError, match="^pretrain_domain_order must be one of sequential, interleaved, got 'mixed' "
                                          "— e.g. --pretrain_domain_order=sequential$"):
        make_config(work, pretrain_datasets=SOURCES, pretrain_domain_order="mixed")


def test_pretrain_on_target_passes_over_the_targets_sequences_after_the_sources(work, cross, tmp_path, monkeypatch):
    _, train, _, _, pretrain_data, _ = cross
    config = make_config(work, pretrain_datasets=SOURCES, pretrain_on_target=True)
    monkeypatch.chdir(tmp_path)
    init_seed(config["seed"], True)
    trainer = harness_trainer(config, QBert4Rec(config, train._dataset))
    data = trainer.pretraining_data(train, pretrain_data)
    assert [domain for domain, _ in data] == [*SOURCES, None]
    target_rows = data[-1][1]._dataset
    assert target_rows.dataset_name == "Instruments" and len(target_rows) == train._dataset.user_num - 1  # a row a user
    losses = trainer.pretrain(train, pretrain_data, verbose=False)
    steps = sum(len(loader) for _, loader in data)
    assert trainer.pretrain_loss_curve == pytest.approx([loss / steps for loss in losses]) and losses[-1] < losses[0]
    assert list(trainer.pretrain_domain_loss_curves) == [*SOURCES, "Instruments"]  # the target's under its name


def test_user_sequences_pretrain_once_on_each_users_whole_training_sequence(work, cross, tmp_path, monkeypatch):
    """``pretrain_sequences: user``: one row per user, its latest and longest training prefix, of which each of the
    user's other prefixes is the beginning; fewer steps per epoch, and the pretraining loss still falls."""
    _, train, _, _, pretrain_data, _ = cross
    config = make_config(work, pretrain_datasets=SOURCES, pretrain_sequences="user")
    monkeypatch.chdir(tmp_path)
    init_seed(config["seed"], True)
    trainer = harness_trainer(config, QBert4Rec(config, train._dataset))
    for (domain, loader), prefixes in zip(trainer.pretraining_data(train, pretrain_data), pretrain_data.values()):
        dataset = prefixes._dataset
        rows = {field: dataset.inter_feat[field].numpy() for field in
                (dataset.uid_field, dataset.item_list_length_field, dataset.item_id_list_field, dataset.iid_field)}
        users, lengths, histories, targets = rows.values()
        whole = {field: loader._dataset.inter_feat[field].numpy() for field in rows}
        assert sorted(whole[dataset.uid_field]) == sorted(set(users)), domain  # each user once
        assert len(loader) == -(-len(set(users)) // config["pretrain_batch_size"]) < len(prefixes), domain
        for user, length, history, target in zip(*whole.values()):
            mine = np.flatnonzero(users == user)
            assert length == lengths[mine].max() and target == targets[mine[-1]], (domain, user)
            if length < config["MAX_ITEM_LIST_LENGTH"]:  # untruncated: every prefix begins the whole sequence
                sequence = [*history[:length], target]
                assert all([*histories[row][:lengths[row]], targets[row]] == sequence[:lengths[row] + 1] for row in mine)
    losses = trainer.pretrain(train, pretrain_data, verbose=False)
    assert losses[-1] < losses[0]


def test_an_unknown_pretrain_sequences_value_is_one_config_error(work):
    """Checked with the config, before the tokenize stage writes codes (the trainer checked it, after the stage)."""
    with pytest.raises(ConfigError, match="^pretrain_sequences must be one of prefix, user, got 'users' — "
                                          "e.g. --pretrain_sequences=prefix$"):
        make_config(work, pretrain_datasets=SOURCES, pretrain_sequences="users")

def test_fine_tuned_checkpoint_reloads_weights_only_to_identical_scores(cross, tmp_path, monkeypatch):
    """RecBole's fit (pretraining on the sources, then fine-tuning) saves a checkpoint that a fresh model reloads
    with ``torch.load(weights_only=True)``."""
    config, train, valid, test, pretrain_data, model = cross
    monkeypatch.chdir(tmp_path)
    trainer = harness_trainer(config, model)
    trainer.fit(train, valid, saved=True, pretrain_data=pretrain_data)
    checkpoint = torch.load(trainer.saved_model_file, weights_only=True)
    fresh = QBert4Rec(config, train._dataset)
    fresh.load_state_dict(checkpoint["state_dict"])
    model.eval(), fresh.eval()
    interaction = next(iter(test))[0]
    with torch.no_grad():
        assert torch.equal(model.full_sort_predict(interaction), fresh.full_sort_predict(interaction))
    for name, codes in code_tables(model).items():
        assert torch.equal(codes, code_tables(fresh)[name]), name


def test_text_only_codes_differ_from_both_modalities(work):
    config = make_config(work, modalities=["text"])
    assert stage_inputs("QBert4Rec", config).features["Instruments"].modalities == ["text"]
    text_only = load_data(config)[0].code_tables["sid"]
    both = load_data(make_config(work))[0].code_tables["sid"]
    assert text_only.shape == both.shape
    assert (text_only != both).any(1).float().mean() > 0.5


@pytest.mark.parametrize(("dataset", "modalities"), [("Instruments", ["audio"]), ("Instruments", []),
                                                     ("Instruments", ["text", "text"]), ("Games", ["image"])])
def test_unknown_or_unavailable_modalities_are_config_errors(work, dataset, modalities):
    with pytest.raises(ConfigError, match="modalities"):
        ensure_semantic_ids(make_config(work, dataset, modalities=modalities))


@pytest.mark.parametrize("overrides", [{"pretrain_datasets": ["Games", "Instruments"]},
                                       {"pretrain_datasets": ["Games"], "pretrain_epochs": 0}])
def test_pretraining_sources_that_cannot_work_are_config_errors(work, overrides):
    with pytest.raises(ConfigError, match="pretrain_datasets"):
        pretrain_dataset_names(make_config(work, **overrides))
