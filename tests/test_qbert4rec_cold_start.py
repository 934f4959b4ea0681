"""Cold start in Q-Bert4Rec: items with content codes but no interactions get semantic IDs and are ranked.

Data: the 500-user Instruments subset, whose ``Instruments.item`` is extended with catalogue items
that no subset user interacted with, carrying their real ``text_codes`` / ``image_codes`` from
``Instruments.index_*.json``. Most of them are picked as *content near-twins*: their text codes equal
those of an item of the subset and their image codes share its first two levels.

RecBole builds its item id space from every loaded feature table (``_remap_ID_all``: interaction
items first, then the items only ``.item`` lists), and the harness leaves ``item_inter_num_interval``
unset (a lower bound >= 1 would drop them), so an item listed only in ``<dataset>.item`` gets an
internal id, but only when ``load_col`` loads the item file: ``properties/model/QBert4Rec.yaml``
does (the harness default, ``load_col: {inter: [...]}``, does not, and then such items do not
exist for any model). Stages 1-2 of
Q-Bert4Rec never look at interactions: the features (``item_features``) and the codes cover every
internal id, so cold items are quantized like all others, and ``full_sort_predict`` scores every id
from its codes.
"""

from __future__ import annotations

import pytest
import torch
from recbole.data import create_dataset

from dataset_prep.convert import convert, load_code_files, write_item_file
from dataset_prep.features import codes_to_features
from recbole_qrec.config import build_config
from recbole_qrec.data.sid import read_code_column
from recbole_qrec.model.qbert4rec import QBert4Rec
from recbole_qrec.data.item_features import load_item_features
from recbole_qrec.trainer import get_trainer
from test_qbert4rec import load_data

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "Instruments"
PLAIN_COLD = 4  # cold items besides the near-twins: the first catalogue items no subset user touched
# Stage 1 trained enough for content to shape the fused embeddings (2 epochs do not); tiny stage 3.
SETTINGS = {
    "injection_dim": 64, "injection_epochs": 10, "injection_learning_rate": 0.01, "injection_batch_size": 512,
    "sid_levels": 3, "sid_codebook_size": 32, "sid_code_dim": 16, "sid_epochs": 20,
    "hidden_size": 32, "inner_size": 64, "n_layers": 1, "n_heads": 2, "MAX_ITEM_LIST_LENGTH": 8,
    "train_batch_size": 256, "eval_batch_size": 256, "use_gpu": False,
}
INTER_ONLY = {"inter": ["user_id", "item_id", "timestamp"]}


@pytest.fixture(scope="module")
def cold_data(instruments_subset, tmp_path_factory):
    """The converted subset plus cold catalogue items in ``.item``; returns (folder, twins, plain cold tokens)."""
    folder = tmp_path_factory.mktemp("cold_start")
    convert(NAME, src=instruments_subset, out=folder / "dataset")
    item_file = folder / "dataset" / NAME / f"{NAME}.item"
    warm = [line.split("\t", 1)[0] for line in item_file.read_text(encoding="utf-8").splitlines()[1:]]
    codes = load_code_files(instruments_subset / NAME, NAME)
    text, image = codes["text_codes"], codes["image_codes"]
    by_text = {}
    for item in warm:
        by_text.setdefault(tuple(text[item]), []).append(item)
    interacted = set(warm)
    cold = [item for item in sorted(text, key=int) if item not in interacted]
    twins = {}
    for item in cold:
        matches = [w for w in by_text.get(tuple(text[item]), []) if image[w][:2] == image[item][:2]]
        if matches:
            twins[item] = matches[0]
    plain = [item for item in cold if item not in twins][:PLAIN_COLD]
    assert len(twins) >= 12, f"expected a dozen content near-twins in the catalogue, found {len(twins)}"
    write_item_file(codes, warm + sorted([*twins, *plain], key=int), item_file)
    return folder, twins, plain


def cold_config(folder, **overrides):
    settings = {"data_path": str(folder / "dataset"), "checkpoint_dir": str(folder / "saved"), **SETTINGS, **overrides}
    return build_config("QBert4Rec", NAME, config_dict=settings)


@pytest.fixture(scope="module")
def cold_model(cold_data):
    folder, twins, plain = cold_data
    config = cold_config(folder)
    dataset, train, _, test, _ = load_data(config)
    return config, dataset, train, test, QBert4Rec(config, train._dataset)


def internal(dataset, tokens):
    return torch.tensor([dataset.token2id(dataset.iid_field, token) for token in tokens])


def test_cold_items_get_internal_ids_since_qbert4rec_loads_the_item_file(cold_data, cold_model):
    folder, twins, plain = cold_data
    config, dataset, train, *_ = cold_model
    cold_tokens = [*twins, *plain]
    known = set(dataset.field2id_token[dataset.iid_field])
    assert config["load_col"]["item"] == ["item_id"]  # QBert4Rec.yaml's default
    assert set(cold_tokens) <= known
    interacted = set(dataset.inter_feat[dataset.iid_field].tolist())
    assert not set(internal(dataset, cold_tokens).tolist()) & interacted  # truly without interactions
    assert train._dataset.item_num == dataset.item_num  # the training split keeps the full id space
    # The harness default load_col (interactions only) never sees them.
    inter_only = create_dataset(cold_config(folder, load_col=INTER_ONLY))
    assert not set(cold_tokens) & set(inter_only.field2id_token[inter_only.iid_field])
    assert inter_only.item_num == dataset.item_num - len(cold_tokens)


def test_cold_items_have_their_own_content_features(cold_data, cold_model):
    folder, twins, plain = cold_data
    config, dataset, *_ = cold_model
    features = load_item_features(config, dataset)
    rows = internal(dataset, [*twins, *plain]) - 1  # feature row j = internal id j + 1
    assert bool(features.present[rows].all())  # both modalities present for every cold item
    item_file = folder / "dataset" / NAME / f"{NAME}.item"
    for matrix, field in zip(features.matrices, ("text_codes", "image_codes")):
        written = read_code_column(item_file, field)
        for token, row in zip([*twins, *plain], rows.tolist()):
            expected = torch.from_numpy(codes_to_features({0: written[token]}, 1).features[0]).float()
            assert torch.equal(matrix[row], expected), (field, token)


def test_cold_items_get_unique_semantic_ids(cold_data, cold_model):
    folder, twins, plain = cold_data
    dataset, model = cold_model[1], cold_model[4]
    codes = model.item_codes
    assert codes.shape == (dataset.item_num, SETTINGS["sid_levels"])
    assert len(codes[1:].unique(dim=0)) == dataset.item_num - 1
    for item in internal(dataset, [*twins, *plain]).tolist():
        same = (codes == codes[item]).all(1)
        assert same.sum() == 1 and bool(same[item])


def test_content_near_twins_share_semantic_id_prefixes(cold_data, cold_model):
    """Stages 1-2 carry content into the IDs: a cold item's twin usually shares its first code."""
    folder, twins, _ = cold_data
    dataset, model = cold_model[1], cold_model[4]
    codes = model.item_codes
    cold_ids, warm_ids = internal(dataset, list(twins)), internal(dataset, list(twins.values()))
    shared_first = int((codes[cold_ids, 0] == codes[warm_ids, 0]).sum())
    first_share = torch.bincount(codes[1:, 0]).double() / (dataset.item_num - 1)
    by_chance = len(twins) * float(first_share.pow(2).sum())  # expected matches for unrelated pairs
    assert shared_first >= max(4, 4 * by_chance), (shared_first, by_chance)


def test_cold_items_are_ranked_with_finite_scores(cold_data, cold_model, tmp_path, monkeypatch):
    folder, twins, plain = cold_data
    config, dataset, train, test, model = cold_model
    cold = internal(dataset, [*twins, *plain])
    model.eval()
    interaction = next(iter(test))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        assert scores.shape == (len(interaction), dataset.item_num)
        assert bool(torch.isfinite(scores[:, cold]).all())
        assert len(scores[0, cold].unique()) == len(cold)  # scored from their own (distinct) codes
        for item in cold[:3].tolist():
            probe = interaction[torch.arange(len(interaction))]
            probe[model.ITEM_ID] = torch.full_like(probe[model.ITEM_ID], item)
            torch.testing.assert_close(model.predict(probe), scores[:, item])
    # RecBole's full-sort evaluation runs over the id space that includes them.
    monkeypatch.chdir(tmp_path)  # the trainer opens ./log_tensorboard
    result = get_trainer(config["MODEL_TYPE"], config["model"])(config, model).evaluate(test, load_best_model=False)
    assert all(0.0 <= value <= 1.0 for value in result.values())


def test_a_twin_sharing_all_but_the_last_level_differs_only_by_that_level(cold_data, cold_model):
    """Under factorised scoring (``scoring: levels``), score(cold) - score(warm) is exactly the difference of their
    last-level log-probabilities, per user."""
    folder, twins, _ = cold_data
    config, dataset, train, test, model = cold_model
    codes, levels = model.item_codes, model.levels
    pairs = [(c, w) for c, w in zip(internal(dataset, list(twins)).tolist(), internal(dataset, list(twins.values())).tolist())
             if torch.equal(codes[c, :-1], codes[w, :-1])]
    assert pairs, "no near-twin shares all but the last semantic-ID level with its warm twin"
    fine_tuned = QBert4Rec(cold_config(folder, scoring="levels"), train._dataset)  # a few steps: non-uniform codes
    fine_tuned.load_state_dict(model.state_dict(), strict=False)  # all but the item-level output layer
    optimizer = torch.optim.Adam(fine_tuned.parameters(), lr=3e-3)
    for batch, _ in zip(train, range(10)):
        loss = fine_tuned.calculate_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fine_tuned.eval()
    interaction = next(iter(test))[0]
    with torch.no_grad():
        scores = fine_tuned.full_sort_predict(interaction)
        last = fine_tuned.heads(fine_tuned.slot_states(interaction)).log_softmax(-1)[:, levels - 1]  # [B, K]
    for cold, warm in pairs:
        gap = scores[:, cold] - scores[:, warm]
        torch.testing.assert_close(gap, last[:, codes[cold, -1]] - last[:, codes[warm, -1]], atol=1e-5, rtol=0)
        assert bool((gap.abs() <= last.max(1).values - last.min(1).values + 1e-5).all())
    assert float(last.std(1).mean()) > 1e-3  # the check above is not vacuous (non-uniform last level)
