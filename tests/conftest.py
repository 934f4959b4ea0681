"""Shared fixtures: the real Amazon data (``$QREC_DATA_DIR``) and small subsets of it.

Without the data a test that needs it is skipped with the reason, except in CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from recbole.data.interaction import Interaction
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from dataset_prep.convert import convert
from dataset_prep.locate import ENV_VAR
from dataset_prep.subset import write_user_subset
from recbole_qrec.config import build_config

REPO_ROOT = Path(__file__).resolve().parents[1]
SUBSET_USERS = 500


def in_ci() -> bool:
    """True when run by CI, which sets ``CI=true``."""
    return os.environ.get("CI", "").lower() in ("true", "1")


@pytest.fixture(autouse=True)
def anomaly_detection_stays_off():
    """Fails a test that runs with torch's anomaly detection on, or leaves it on. RecBole's ``sine.py`` switches it on
    when imported (``from recbole.model.sequential_recommender import ...`` imports it; ``get_model`` switches it off
    again), and then every autograd op records a traceback: the training tests ran three to four times slower."""
    assert not torch.is_anomaly_enabled(), ("torch's anomaly detection is on: a test module imported RecBole's sine.py "
                                            "— take RecBole's models from recbole_qrec.utils.get_model")
    yield
    assert not torch.is_anomaly_enabled(), "the test left torch's anomaly detection on"


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[], Any]) -> Any:
    """``build()``'s result: under pytest-xdist built by the first worker that asks and read by the others from its
    pickle in the session's folder (they wait on a lock meanwhile); in a single process simply built."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build()
    shared = tmp_path_factory.getbasetemp().parent / name  # above every worker's folder, one per session
    pickled = shared.with_suffix(".pickle")
    with shared.with_suffix(".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if pickled.is_file():
            return pickle.loads(pickled.read_bytes())
        value = build()
        pickled.write_bytes(pickle.dumps(value))
        return value


@pytest.fixture(scope="session")
def amazon_dir() -> Path:
    """``$QREC_DATA_DIR``, the folder with the processed Amazon datasets; skips the test (fails it in CI) without it."""
    root = os.environ.get(ENV_VAR)
    if root and (Path(root) / "Instruments" / "Instruments.inter.json").is_file():
        return Path(root).resolve()  # subprocesses of the tests run in other folders
    found = f"{ENV_VAR}={root} has no Instruments/Instruments.inter.json" if root else f"{ENV_VAR} is not set"
    reason = f"real Amazon data not found ({found}) — set {ENV_VAR} to the folder holding Instruments/, Arts/, Games/"
    if in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def instruments_subset(amazon_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A processed-format copy of the first 500 users of Instruments (with the real code files)."""
    return write_user_subset("Instruments", amazon_dir / "Instruments", tmp_path_factory.mktemp("subset"), SUBSET_USERS)


@pytest.fixture(scope="module")
def work(instruments_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder per test module with the subset converted to atomic files under ``dataset/``."""
    folder = tmp_path_factory.mktemp("work")
    convert("Instruments", src=instruments_subset, out=folder / "dataset")
    return folder


def work_config(model: str, work: Path, **settings):
    """``model``'s config on Instruments in ``work`` (atomic files in ``dataset/``, checkpoints in ``saved/``), with
    ``settings`` on top."""
    return build_config(model, "Instruments", config_dict={
        "data_path": str(work / "dataset"), "checkpoint_dir": str(work / "saved"), **settings})


def run_entry_point(model: str, settings: dict[str, Any], folder: Path) -> tuple[str, dict[str, Any]]:
    """``run_recbole_qrec.py --model=<model> --dataset=Instruments`` with ``settings`` as ``--key=value``, run in
    ``folder`` on one thread; it must succeed. Its log and its result record."""
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_recbole_qrec.py"), f"--model={model}", "--dataset=Instruments",
         *(f"--{key}={value}" for key, value in settings.items())],
        cwd=folder, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = next((folder / "log" / model).glob("*.log")).read_text()
    return log, json.loads((folder / "results" / "results.jsonl").read_text().splitlines()[-1])


def losses_over_steps(model: torch.nn.Module, loss_of, steps: int, learning_rate: float = 3e-3) -> list[float]:
    """The loss ``loss_of()`` before each of ``steps`` AdamW steps on ``model``'s parameters (a fixed batch)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    losses = []
    for _ in range(steps):
        loss = loss_of()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def first_batch(loader):
    """The interaction of ``loader``'s first batch (of a loader that yields tuples: their first element)."""
    batch = next(iter(loader))
    return batch[0] if isinstance(batch, tuple) else batch


def assert_compiled_loss_is_eager_loss(model: torch.nn.Module, interaction, fullgraph: bool = False) -> None:
    """``model.calculate_loss(interaction)`` traced by ``torch.compile`` (dynamo, which ``compile_model`` runs, with the
    eager backend: no C++ build; ``fullgraph``: a graph break is an error) is finite and equals the eager loss, each
    computed from the same random state."""
    compiled = torch.compile(model.calculate_loss, backend="eager", fullgraph=fullgraph)
    torch.manual_seed(0)
    traced = compiled(interaction)
    torch.manual_seed(0)
    eager = model.calculate_loss(interaction)
    assert torch.isfinite(eager) and torch.allclose(traced, eager), (traced, eager)


class TrainingLoss(torch.nn.Module):
    """``model.calculate_loss`` as a module's forward (what ``torch.func.functional_call`` calls)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, interaction) -> torch.Tensor:
        return self.model.calculate_loss(interaction)


def host_nodes_of_cuda_loss(model: torch.nn.Module, interaction) -> list[str]:
    """The nodes of ``model.calculate_loss(interaction)``'s traced graph (``make_fx``: the aten graph AOTAutograd
    hands a ``torch.compile`` backend) that hold a host tensor when the model and the batch are on a CUDA device;
    traced with fake CUDA tensors, so no GPU is needed. The cudagraphs backend runs a step with such a node without
    CUDA graphs ("skipping cudagraphs due to cpu device")."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)

    def on_cuda(tensor: torch.Tensor) -> FakeTensor:
        return FakeTensor(mode, tensor.to("meta"), torch.device("cuda", 0))

    tensors = [*model.named_parameters(), *model.named_buffers()]  # tied weights once: functional_call ties them
    state = {f"model.{name}": on_cuda(tensor) for name, tensor in tensors}
    fields = {name: on_cuda(value) for name, value in interaction.interaction.items()}

    training_loss = TrainingLoss(model)

    def loss(state: dict, fields: dict) -> torch.Tensor:
        return torch.func.functional_call(training_loss, state, (Interaction(fields),))

    with mode:
        graph = make_fx(loss)(state, fields).graph
    return [node.name for node in graph.nodes if getattr(node.meta.get("val"), "device", None) == torch.device("cpu")]


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors: one intra-op thread avoids oversubscribing a shared CPU (several times faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
