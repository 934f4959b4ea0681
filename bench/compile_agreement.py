"""Whether ``compile_model`` trains the model that eager mode trains: one model's training steps eager and under
``torch.compile`` with each given backend, from the same initial weights on the same batches, dropout off (or on).

Dynamo's ``eager`` backend checks the tracing alone, ``aot_eager`` adds AOT autograd's joint graph and
decompositions, ``cudagraphs`` (``compile_backend: cudagraphs``, on a CUDA device) replays that graph's own kernels
as CUDA graphs, ``inductor`` (``compile_model``'s default backend) adds the generated kernels: the first backend whose
losses leave eager's names the layer at fault. For each backend, the loss of every step (Adam at the config's learning
rate) and, at the first step (same weights, same batch), the relative difference of the loss and of each parameter's
gradient to eager's. The batches are the first ``--steps`` of the config's training loader (``data_path_mode``
decides which), drawn once. With ``--dropout`` the steps run in training mode: compiled code draws other dropout
masks than eager mode, so the losses differ by sampling noise, but a fault in the compiled dropout (its mask
regenerated for the backward pass) shows as a trajectory that leaves eager's. Written to ``<out>.md`` and
``<out>.json``:

    python bench/compile_agreement.py --model BERT4Rec --device cuda --steps 100 --set hidden_size=256 \\
        inner_size=256 n_layers=4 n_heads=4 train_batch_size=256 --out docs/results/compile_check/gpu/agreement
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor, nn

from common import build_model, load_data, machine_name, make_config, prepare_data, provenance_lines
from recbole_qrec.fileio import atomic_open, write_json_atomic
from recbole_qrec.results import git_state
from recbole_qrec.trainer.acceleration import compiled, replays_cuda_graphs

BACKENDS = ("eager", "aot_eager", "cudagraphs", "inductor")  # cudagraphs: on a CUDA device only
LOSS_POINTS = 6  # steps whose losses the table shows, evenly spaced from the first to the last
GRADIENT_FLOOR = 1e-4  # of the largest gradient norm: below it a gradient counts as zero (an attention key bias's is)


def train_steps(model: nn.Module, loss_of: Callable, batches: list, learning_rate: float, seed: int,
                cuda_graphs: bool, dropout: bool) -> tuple[list[float], dict[str, Tensor]]:
    """The losses of Adam steps on ``batches`` and the gradients of the first step (in eval mode, no dropout,
    unless ``dropout``)."""
    torch.manual_seed(seed)
    model.train(dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    losses, first_gradients = [], {}
    for batch in batches:
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        optimizer.zero_grad()
        loss = loss_of(batch)
        loss.backward()
        losses.append(loss.item())
        if not first_gradients:
            first_gradients = {name: parameter.grad.detach().clone() for name, parameter in model.named_parameters()
                               if parameter.grad is not None}
        optimizer.step()
    return losses, first_gradients


def gradient_differences(gradients: dict[str, Tensor], reference: dict[str, Tensor]) -> dict[str, float]:
    """``|g - g_ref| / max(|g_ref|, floor)`` per parameter (Frobenius norms), largest first; ``floor`` is
    :data:`GRADIENT_FLOOR` times the largest reference norm, so that a gradient that is zero in exact arithmetic
    compares its rounding noise with the other gradients' scale, not with its own."""
    floor = GRADIENT_FLOOR * max(float(gradient.norm()) for gradient in reference.values())
    differences = {name: float((gradients[name] - gradient).norm()) / max(float(gradient.norm()), floor)
                   for name, gradient in reference.items() if name in gradients}
    return dict(sorted(differences.items(), key=lambda item: -item[1]))


def compare(model: nn.Module, batches: list, backends: list[str], learning_rate: float, seed: int,
            inductor_mode: str, dropout: bool = False) -> dict:
    """Each backend's losses and first-step gradients against eager mode's, from ``model``'s current weights."""
    initial = copy.deepcopy(model.state_dict())
    eager_method = model.calculate_loss
    eager_losses, eager_gradients = train_steps(model, eager_method, batches, learning_rate, seed, False, dropout)
    runs = {}
    for backend in backends:
        model.load_state_dict(initial)
        torch._dynamo.reset()
        settings = {"compile_model": True, "compile_backend": backend, "compile_mode": inductor_mode}  # as a run's
        losses, gradients = train_steps(model, compiled(eager_method, settings), batches, learning_rate, seed,
                                        replays_cuda_graphs(settings), dropout)
        runs[backend] = {
            "losses": losses,
            "first_loss_difference": abs(losses[0] - eager_losses[0]) / abs(eager_losses[0]),
            "largest_loss_difference": max(abs(a - b) / abs(b) for a, b in zip(losses, eager_losses)),
            "missing_gradients": sorted(set(eager_gradients) - set(gradients)),
            "gradient_differences": gradient_differences(gradients, eager_gradients),
        }
    model.load_state_dict(initial)
    return {"eager_losses": eager_losses, "runs": runs}


def loss_points(steps: int) -> list[int]:
    """Up to :data:`LOSS_POINTS` step indices from the first to the last."""
    return sorted({round(i * (steps - 1) / (LOSS_POINTS - 1)) for i in range(LOSS_POINTS)})


def report(result: dict, header: list[str], steps: int) -> str:
    """The markdown report: losses at a few steps per backend, then each backend's largest gradient differences."""
    points = loss_points(steps)
    columns = ["backend", "first-step loss difference", "largest loss difference",
               "largest first-step gradient difference", *(f"loss at step {point + 1}" for point in points)]
    lines = [*header, "", "| " + " | ".join(columns) + " |",
             "|---|---|---|---|" + "---|" * len(points)]
    eager = result["eager_losses"]
    lines.append("| eager mode |  |  |  | " + " | ".join(f"{eager[point]:.4f}" for point in points) + " |")
    for backend, run in result["runs"].items():
        name, largest = next(iter(run["gradient_differences"].items()), ("", float("nan")))
        lines.append(f"| {backend} | {run['first_loss_difference']:.2e} | {run['largest_loss_difference']:.2e} | "
                     f"{largest:.2e} ({name}) | " + " | ".join(f"{run['losses'][point]:.4f}" for point in points)
                     + " |")
    for backend, run in result["runs"].items():
        lines += ["", f"First-step gradient differences under `{backend}`, largest first:", "",
                  "| parameter | relative difference |", "|---|---|"]
        lines += [f"| {name} | {value:.2e} |" for name, value in list(run["gradient_differences"].items())[:10]]
        if run["missing_gradients"]:
            lines.append(f"\nNo gradient under `{backend}`: {', '.join(run['missing_gradients'])}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python bench/compile_agreement.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", default="Instruments")
    parser.add_argument("--data_path", help="folder of the processed datasets (default: $QREC_DATA_DIR)")
    parser.add_argument("--users", type=int, help="only the dataset's first USERS users (a quick check)")
    parser.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS,
                        help="default: all of them that run on --device (cudagraphs on a CUDA device only)")
    parser.add_argument("--inductor-mode", default="default", choices=["default", "reduce-overhead"],
                        help="compile_mode of the inductor backend")
    parser.add_argument("--steps", type=int, default=50, help="training batches, the same for every backend")
    parser.add_argument("--dropout", action="store_true", help="training mode: dropout on (see above)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--out", type=Path, required=True, help="output prefix: writes <out>.md and <out>.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data_path = prepare_data(args.dataset, work, users=args.users, data_path=args.data_path)
        config = make_config(args.model, args.dataset, data_path, work, args.device, args.set)
        torch.set_float32_matmul_precision(config["float32_matmul_precision"])
        _, train_data, _, _ = load_data(config)
        batches = [batch.to(config["device"]) for _, batch in zip(range(args.steps), train_data)]
        model = build_model(config, train_data)
        backends = args.backends or [backend for backend in BACKENDS
                                     if backend != "cudagraphs" or torch.device(config["device"]).type == "cuda"]
        result = compare(model, batches, backends, config["learning_rate"], config["seed"], args.inductor_mode,
                         args.dropout)
    commit, dirty = git_state()
    header = [f"# `compile_model` against eager mode: {args.model} on {args.dataset}", "",
              *provenance_lines(f"python bench/compile_agreement.py {' '.join(sys.argv[1:])}",
                                f"{commit}{' (with uncommitted changes)' if dirty else ''}"),
              f"- {len(batches)} training batches of the `{config['data_path_mode']}` data path, the same for every "
              f"backend; Adam at learning rate {config['learning_rate']}; dropout {'on' if args.dropout else 'off'}; "
              f"inductor mode `{args.inductor_mode}`; float32 matmul precision "
              f"`{config['float32_matmul_precision']}`",
              "- differences are relative to eager mode: |compiled - eager| / |eager| (a gradient's against at least "
              f"{GRADIENT_FLOOR:g} of the largest eager gradient norm)"]
    text = report(result, header, len(batches))
    with atomic_open(args.out.with_suffix(".md")) as file:
        file.write(text)
    write_json_atomic(args.out.with_suffix(".json"), {
        "command": " ".join(sys.argv), "commit": commit, "dirty": dirty, "machine": machine_name(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model,
        "dataset": args.dataset, "steps": len(batches), "dropout": args.dropout, "settings": args.set, **result})
    print(text)


if __name__ == "__main__":
    main()
