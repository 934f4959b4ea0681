"""The evaluation collector: RecBole's top-k results, bit for bit, without a matrix of the scores' size."""

from __future__ import annotations

import pytest
import torch
from recbole.config import Config
from recbole.evaluator import Collector, Evaluator
from torch.utils._python_dispatch import TorchDispatchMode

from recbole_qrec.compat import prepare_recbole
from recbole_qrec.evaluator import TopkCollector, topk_hits

METRICS = ["Recall", "MRR", "NDCG", "Hit", "Precision", "MAP"]


@pytest.fixture(scope="module")
def config():
    prepare_recbole()  # RecBole's Config on numpy 2
    return Config(model="SASRec", dataset="ml-100k", config_dict={
        "metrics": METRICS, "topk": [1, 5, 10], "valid_metric": "NDCG@10", "use_gpu": False,
        "train_neg_sample_args": None,
        "data_path": "unused", "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"}})


def batches(seed: int, rows: int = 37, items: int = 211) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Three batches of scores with ties and masked items, and positives with repeated pairs and rows without any."""
    generator = torch.Generator().manual_seed(seed)
    made = []
    for _ in range(3):
        scores = torch.randint(0, 40, (rows, items), generator=generator).float()  # many ties
        scores[torch.rand(rows, items, generator=generator) < 0.1] = float("-inf")  # history items
        count = int(torch.randint(rows, 4 * rows, (1,), generator=generator))
        positive_u = torch.randint(0, rows - 3, (count,), generator=generator)  # the last three rows: none
        positive_i = torch.randint(0, items, (count,), generator=generator)
        positive_u = torch.cat([positive_u, positive_u[:5]])  # five pairs twice
        positive_i = torch.cat([positive_i, positive_i[:5]])
        made.append((scores, positive_u, positive_i))
    return made


def collected(collector: Collector, made: list) -> dict:
    for scores, positive_u, positive_i in made:
        collector.eval_batch_collect(scores, None, positive_u, positive_i)
    return collector.get_data_struct()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_results_and_metrics_equal_recbole_collector(config, seed):
    """The collected ``rec.topk`` (values and dtype) and every top-k metric computed from it equal RecBole's own
    collector's on the same batches, ties, masked items, repeated positives and rows without positives included."""
    made = batches(seed)
    ours, recbole = collected(TopkCollector(config), made), collected(Collector(config), made)
    assert ours.get("rec.topk").dtype == recbole.get("rec.topk").dtype
    assert torch.equal(ours.get("rec.topk"), recbole.get("rec.topk"))
    assert ours.get("rec.topk")[:, :-1].sum() > 0  # some hits, so the comparison tells
    # repr: the same values bit for bit, NaN included (recall of the rows without positives)
    assert repr(Evaluator(config).evaluate(ours)) == repr(Evaluator(config).evaluate(recbole))


class LargestOutput(TorchDispatchMode):
    """The largest element count of any tensor an op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in result if isinstance(result, (tuple, list)) else [result]:
            if isinstance(tensor, torch.Tensor):
                self.numel = max(self.numel, tensor.numel())
        return result


def test_topk_collection_makes_no_tensor_of_the_scores_size(config):
    """Collecting a batch makes no tensor with as many elements as its scores (RecBole's collector makes two: the
    int32 positive matrix and the int64 copy its sum makes), so evaluation memory is the scores' plus the top-k
    size."""
    scores, positive_u, positive_i = batches(0, rows=64, items=5000)[0]
    for collector, makes_scores_sized in ((TopkCollector(config), False), (Collector(config), True)):
        with LargestOutput() as largest:
            collector.eval_batch_collect(scores, None, positive_u, positive_i)
        assert (largest.numel >= scores.numel()) == makes_scores_sized


def test_topk_hits_takes_positives_on_another_device_than_the_scores():
    """RecBole's evaluation loader gives the positives on the host while the scores are on the model's device: the
    positives are moved to the scores' device (the meta device stands in for a GPU here)."""
    scores, positive_u, positive_i = batches(0)[0]
    hits = topk_hits(scores.to("meta"), positive_u, positive_i, 10)
    assert hits.device.type == "meta" and hits.shape == (scores.shape[0], 11)
