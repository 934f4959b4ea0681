"""Q-Bert4Rec as the paper describes it, on the 500-user Instruments subset: an item-level output whose parameters
grow with the catalogue (the paper's 3.71M on Instruments), gates that stop items early, default pretraining sources
from the domain pool, and a trained model that beats popularity."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from recbole_qrec.config import build_config
from recbole_qrec.data.cross_domain import pretrain_dataset_names
from recbole_qrec.data.item_features import load_item_features
from recbole_qrec.model.qbert4rec import QBert4Rec
from recbole_qrec.errors import ConfigError
from recbole_qrec.model.qbert4rec_modules.halting import depth_distribution, kl_to_prior, truncated_geometric
from recbole_qrec.model.qbert4rec_modules.injection import depth_histogram
from recbole_qrec.model.qbert4rec_modules.injection_training import fuse_items, train_injection
from recbole_qrec.qbert4rec_stage import build_injection
from recbole_qrec.trainer import get_trainer
from test_qbert4rec import load_data, subset_config

pytestmark = pytest.mark.usefixtures("one_thread")

# Stages 1-2 cut short but with the paper's code shape (4 levels x 256), so stage 3 has the paper's size.
PAPER_CODES = {"injection_epochs": 1, "sid_levels": 4, "sid_codebook_size": 256, "sid_code_dim": 32, "sid_epochs": 2}
STAGE3_KEYS = ("hidden_size", "inner_size", "n_layers", "n_heads", "MAX_ITEM_LIST_LENGTH")
PAPER_PARAMETERS = {"Instruments": (6250, 3.71e6), "Arts": (9416, 4.51e6)}  # items, parameters (Q-Bert4Rec paper)


def parameters(model):
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def test_parameters_grow_with_the_catalogue_as_the_papers(work):
    """Item scoring adds one hidden-wide embedding and a bias per item id to a catalogue-independent core; at the
    default widths that is the paper's size on Instruments (3,722,347 vs 3.71M) and on Arts (4,536,009 vs 4.51M)."""
    defaults = build_config("QBert4Rec", "Instruments")
    config = subset_config(work, **PAPER_CODES, **{key: defaults[key] for key in STAGE3_KEYS})
    _, train, *_ = load_data(config)
    item_model = QBert4Rec(config, train._dataset)
    core = parameters(QBert4Rec(subset_config(work, **PAPER_CODES, **{key: defaults[key] for key in STAGE3_KEYS},
                                              scoring="levels"), train._dataset))
    hidden = config["hidden_size"]
    assert parameters(item_model) - core == item_model.n_items * (hidden + 1)
    for dataset, (items, paper) in PAPER_PARAMETERS.items():
        total = core + (items + 1) * (hidden + 1)  # + the padding id
        assert abs(total - paper) / paper < 0.01, (dataset, total, paper)


# Dynamic fusion: the ponder penalty closes gates, steered to the depth asked for

@pytest.fixture(scope="module")
def features(work):
    config = subset_config(work)
    _, train, *_ = load_data(config)
    return config, load_item_features(config, train._dataset)


def trained_injection(config, features, depth_weight, depth_weight_step=0.0, depth_target=2.0, epochs=6, **settings):
    settings = {"depth_weight": depth_weight, "depth_weight_step": depth_weight_step, "depth_target": depth_target,
                "gate_objective": "ponder", **settings}
    for key, value in settings.items():
        config[key] = value
    torch.manual_seed(0)
    module = build_injection(config, features)
    train_injection(module, features, epochs=epochs, batch_size=512, learning_rate=3e-3,
                    generator=torch.Generator().manual_seed(0))
    config["gate_objective"] = "ponder"
    return module


def test_the_depth_penalty_stops_items_before_the_last_block(features):
    config, features = features
    layers = config["injection_layers"]
    _, free_depth = fuse_items(trained_injection(config, features, 0.0), features, batch_size=1024)
    _, depth = fuse_items(trained_injection(config, features, 0.1), features, batch_size=1024)
    assert bool((depth < layers).any()) and bool((depth >= 1).all())
    assert depth.float().mean() < free_depth.float().mean()


@pytest.mark.parametrize("target", [1.5, 3.0])
def test_dual_ascent_steers_the_mean_depth_to_its_target(features, target):
    """From the same starting weight, the steered weight lands the items' mean hard depth near each target (a fixed
    weight gives one depth whatever the target)."""
    config, features = features
    module = trained_injection(config, features, 0.1, depth_weight_step=0.05, depth_target=target, epochs=15)
    _, depth = fuse_items(module, features, batch_size=1024)
    assert abs(float(depth.float().mean()) - target) < 0.5, depth_histogram(depth, config["injection_layers"])


def test_a_depth_target_deeper_than_the_blocks_is_a_config_error(features):
    config, features = features
    config["depth_target"] = config["injection_layers"] + 1
    with pytest.raises(ConfigError, match="depth_target"):
        build_injection(config, features)
    config["depth_target"] = 2.0


# Halting objective (PonderNet): each item's depth distribution, pulled towards a geometric prior

def test_depth_distributions_follow_the_gates():
    gates = torch.tensor([[0.5, 0.5, 0.5], [0.0, 0.9, 0.9], [1.0, 1.0, 0.25]])
    expected = torch.tensor([[0.5, 0.25, 0.125, 0.125], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.75, 0.25]])
    torch.testing.assert_close(depth_distribution(gates), expected)
    assert kl_to_prior(expected, expected[0]).tolist()[0] == 0 and bool((kl_to_prior(expected, expected[0]) >= 0).all())


@pytest.mark.parametrize("mean", [1.2, 2.0, 3.5])
def test_the_prior_is_a_truncated_geometric_distribution_with_the_mean_asked_for(mean):
    prior = truncated_geometric(4, mean)
    assert abs(float((prior * torch.arange(1, 5)).sum()) - mean) < 1e-5 and abs(float(prior.sum()) - 1) < 1e-6
    ratios = prior[1:3] / prior[:2]  # geometric: a constant ratio between consecutive depths before the tail
    assert abs(float(ratios[0] - ratios[1])) < 1e-5


def test_halting_training_depths_and_embeddings_are_the_ones_inference_gives(features):
    """Training runs every block for every item; the depth and state it reports per item are what the hard rule gives
    at inference, so the depths trained are the depths used."""
    config, features = features
    module = trained_injection(config, features, 0.0, gate_objective="halting", halting_kl_weight=0.01, epochs=2)
    rows = torch.arange(len(features.present))
    inputs = ([matrix[rows] for matrix in features.matrices], features.present[rows])
    with torch.no_grad():
        training = module.train()(rows, *inputs)
        inference = module.eval()(rows, *inputs)
    assert training.states is not None and inference.states is None
    assert torch.equal(training.depth, inference.depth)
    torch.testing.assert_close(training.fused, inference.fused, rtol=1e-5, atol=1e-5)
    assert bool((training.depth_probabilities.sum(1) - 1).abs().lt(1e-5).all())


def test_the_prior_term_moves_the_depths_to_the_priors_median(features):
    """Without the prior term every item goes as deep as the blocks lower its loss; weighted strongly, the prior sets
    the depth at its median (depth 1 for mean 1.2, the last block for mean 3.5)."""
    config, features = features
    layers = config["injection_layers"]

    def depths(weight, mean):
        module = trained_injection(config, features, 0.0, depth_target=mean, gate_objective="halting",
                                   halting_kl_weight=weight, epochs=4)
        return fuse_items(module, features, batch_size=1024)[1]

    free = depths(0.0, 2.0)
    assert float(free.float().mean()) > 2, depth_histogram(free, layers)
    assert bool((depths(10.0, 1.2) == 1).all()) and bool((depths(10.0, 3.5) == layers).all())


# Capacity objective (Mixture-of-Depths): the gates rank the items, the prior sets how many go deeper

@pytest.mark.parametrize("gate_bias", [0.0, 40.0])
def test_a_capacity_training_batch_sends_the_priors_share_of_its_items_deeper(features, gate_bias):
    """In a training batch exactly the prior's share of the items reaches each block after the first, also where every
    gate is saturated (1.0 in float32: the logits still rank the items), and the straight-through gradient reaches
    every unsaturated gate."""
    config, features = features
    config["gate_objective"] = "capacity"
    torch.manual_seed(0)
    module = build_injection(config, features).train()
    config["gate_objective"] = "ponder"
    with torch.no_grad():
        for gate in module.gates:
            gate[-1].bias += gate_bias
    layers = config["injection_layers"]
    rows = torch.arange(400)
    output = module(rows, [matrix[rows] for matrix in features.matrices], features.present[rows])
    reach = 1 - truncated_geometric(layers, config["depth_target"]).cumsum(0)[:-1]
    assert [int((output.depth > block).sum()) for block in range(1, layers)] == [round(float(share) * 400)
                                                                                for share in reach]
    if not gate_bias:  # a saturated gate passes no gradient through its sigmoid
        module.loss(output, features.present[rows]).backward()
        assert all(float(gate[-1].weight.grad.abs().sum()) > 0 for gate in module.gates)


def test_capacity_gates_spread_the_depths_as_the_prior_by_the_item_alone(features):
    """After training, inference gives the catalogue the prior's share of items at each depth (median 2 at mean 2,
    where the ponder penalty steered to the same mean gives nearly every item one depth), and an item's depth does not
    depend on the items it is fused with."""
    config, features = features
    layers = config["injection_layers"]
    module = trained_injection(config, features, 0.0, gate_objective="capacity", epochs=6)
    _, depth = fuse_items(module, features, batch_size=1024)
    reach = 1 - truncated_geometric(layers, 2.0).cumsum(0)[:-1]
    for block, share in enumerate(reach.tolist(), start=1):  # at most an item at each threshold off (rounding)
        assert abs(int((depth > block).sum()) - share * len(depth)) <= 1, depth_histogram(depth, layers)
    assert float(depth.float().median()) == 2
    assert torch.equal(fuse_items(module, features, batch_size=97)[1], depth)


def test_an_unknown_gate_objective_is_a_config_error(features):
    config, features = features
    config["gate_objective"] = "act"
    with pytest.raises(ConfigError, match="gate_objective must be one of ponder, halting, capacity, got 'act' — "
                                          "e.g. --gate_objective=ponder"):
        build_injection(config, features)
    config["gate_objective"] = "ponder"


def test_dynamic_fusion_differs_from_static_exactly_for_the_items_that_stop_early(features, work):
    config, features = features
    dynamic = trained_injection(config, features, 0.1)
    static = build_injection(subset_config(work, fusion="static"), features)
    static.load_state_dict({key: value for key, value in dynamic.state_dict().items() if not key.startswith("gates")})
    fused, depth = fuse_items(dynamic, features, batch_size=1024)
    static_fused, _ = fuse_items(static, features, batch_size=1024)
    differs = (fused - static_fused).abs().amax(1) > 1e-5
    assert bool(differs.any())
    assert torch.equal(differs, depth < config["injection_layers"])


def test_the_model_exposes_the_stage_depth_histogram(features, work):
    config, _ = features
    _, train, *_ = load_data(config)
    histogram = QBert4Rec(config, train._dataset).injection_depth_histogram
    assert len(histogram) == config["injection_layers"] + 1 and histogram[0] == 0
    assert sum(histogram) == train._dataset.item_num - 1


# Default pretraining sources: the other domains of the pool that are there and have content

def test_default_sources_are_the_pools_other_domains_that_are_present(work, caplog):
    config = subset_config(work)
    assert config["pretrain_datasets"] is None and "Instruments" in config["pretrain_domain_pool"]
    with caplog.at_level(logging.WARNING):
        assert pretrain_dataset_names(config) == []  # this data_path holds Instruments only
    assert "pretraining source Arts (pretrain_domain_pool) left out" in caplog.text
    assert pretrain_dataset_names(subset_config(work, pretrain_datasets=[])) == []


# A trained model against the most popular items

def ndcg_at_10(scores_of, loader):
    """Mean NDCG@10 of full-sort rankings as RecBole's evaluation makes them (the padding id excluded; sequential
    loaders mask no history), one target per user."""
    gains = []
    for interaction, history, positive_u, positive_i in loader:
        with torch.no_grad():
            scores = scores_of(interaction).clone()
        if history is not None:
            scores[history] = -math.inf
        scores[:, 0] = -math.inf
        target = scores[positive_u, positive_i]
        ranks = (scores[positive_u] > target.unsqueeze(1)).sum(1)
        gains += [1 / math.log2(rank + 2) if rank < 10 else 0.0 for rank in ranks.tolist()]
    return sum(gains) / len(gains)


# Stage 1 trained enough for content to shape the codes; a small stage 3 at a constant learning rate.
RANKING = {"injection_dim": 64, "injection_epochs": 10, "injection_learning_rate": 0.01, "sid_epochs": 20,
           "hidden_size": 64, "inner_size": 128, "hidden_dropout_prob": 0.1, "attn_dropout_prob": 0.1,
           "epochs": 5, "stopping_step": 5, "pretrain_epochs": 0, "learning_rate": 2e-3, "lr_scheduler": "constant",
           "warmup_steps": 0, "weight_decay": 0.0}


def test_a_trained_qbert4rec_beats_popularity(work, tmp_path, monkeypatch):
    """On the validation split (test: 0.020 vs 0.021 at this size; 500 users leave little to learn beyond
    popularity), full ranking, RecBole's sequential evaluation."""
    config = subset_config(work, **RANKING)
    _, train, valid, _, _ = load_data(config)
    monkeypatch.chdir(tmp_path)  # the trainer opens ./log_tensorboard
    model = QBert4Rec(config, train._dataset)
    get_trainer(config["MODEL_TYPE"], config["model"])(config, model).fit(train, valid, saved=False)
    model.eval()
    counts = torch.bincount(train._dataset.inter_feat[model.POS_ITEM_ID], minlength=model.n_items).float()

    def popularity(interaction):
        return counts.expand(len(interaction), -1)

    assert ndcg_at_10(model.full_sort_predict, valid) > 1.05 * ndcg_at_10(popularity, valid)


def test_an_unknown_injection_projection_is_a_config_error(features, work):
    with pytest.raises(ConfigError, match="^injection_projection must be one of learned, fixed, got 'frozen' — "
                                          "e.g. --injection_projection=learned$"):
        build_injection(subset_config(work, injection_projection="frozen"), features[1])


def first_code_share(fused: torch.Tensor, first_codes: torch.Tensor) -> float:
    """Share of the fused embeddings' variance that the items' first content code explains (between-group)."""
    centred = fused - fused.mean(0)
    groups = F.one_hot(first_codes).float()
    means = (groups.T @ centred) / groups.sum(0).clamp(min=1).unsqueeze(1)
    return float(1 - ((centred - groups @ means) ** 2).sum() / (centred ** 2).sum())


def test_a_fixed_projection_keeps_the_content_codes_first_level_in_the_fused_embeddings(work):
    """Stage 1's contrastive terms train a learned projection to tell items apart by their finest codes; kept fixed
    (with the proxy's levels weighted 0.5 ** level), the fused embeddings keep more of the first, coarse code, and
    the projection does not move while the rest trains."""
    share, (_, train, *_) = {}, load_data(subset_config(work))  # the items' content, whatever the stage settings
    for projection in ("learned", "fixed"):
        stage_config = subset_config(work, injection_projection=projection, code_proxy_level_decay=0.5)
        stage_features = load_item_features(stage_config, train._dataset)
        torch.manual_seed(0)
        module = build_injection(stage_config, stage_features)
        before = [parameter.detach().clone() for parameter in module.projections.parameters()]
        ids_before = module.id_embedding.weight.detach().clone()
        train_injection(module, stage_features, epochs=20, batch_size=512, learning_rate=3e-3,
                        generator=torch.Generator().manual_seed(0))
        moved = [not torch.equal(old, new) for old, new in zip(before, module.projections.parameters())]
        assert all(moved) if projection == "learned" else not any(moved)
        assert not torch.equal(ids_before, module.id_embedding.weight)
        fused, _ = fuse_items(module, stage_features, batch_size=1024)
        text = stage_features.matrices[0]
        share[projection] = first_code_share(fused, text[:, :256].argmax(1))
    assert share["fixed"] > share["learned"] + 0.05, share  # measured: 0.30 against 0.13
