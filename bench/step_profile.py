"""Where one training step's time goes: a model on Instruments (BERT4Rec at QBert4Rec's width and batch size: hidden
256, inner 256, 4 layers, 4 heads, batch 256; any other model at its defaults), with the trainer's optimizer (fused
on CUDA) and, under ``compile_model``, the trainer's compiled loss; needs a CUDA device.
Prints milliseconds per step (50 steps after 10 of warm-up, synchronised), per batch drawn from the training loader
and per forward pass; over 10 profiled steps, the GPU's kernel time and the launches per step, then torch.profiler's
tables by self CUDA time and by self CPU time:

    python bench/step_profile.py QBert4Rec --data_path dataset/ > docs/results/step_profile/QBert4Rec.log
    python bench/step_profile.py SASRec --data_path dataset/ --set compile_model=True compile_backend=cudagraphs

QBert4Rec's stages 1-2 run shortened (1 epoch each) and it does not pretrain: the step of stage 3 is what is timed.
"""

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from recbole_qrec.config import build_config
from recbole_qrec.data import create_dataset, data_preparation
from recbole_qrec.tokenize import ensure_semantic_ids
from recbole_qrec.trainer import get_trainer
from recbole_qrec.trainer.acceleration import replays_cuda_graphs
from recbole_qrec.utils import get_model

parser = argparse.ArgumentParser(prog="python bench/step_profile.py", description=__doc__.split("\n\n")[0])
parser.add_argument("model")
parser.add_argument("--data_path", required=True, help="atomic files folder holding Instruments/")
parser.add_argument("--checkpoint_dir", default="saved")
parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
args = parser.parse_args()
EQUAL_WIDTH = {"hidden_size": 256, "inner_size": 256, "n_layers": 4, "n_heads": 4, "train_batch_size": 256}
config = build_config(args.model, "Instruments", config_dict={
    "data_path": args.data_path, "checkpoint_dir": args.checkpoint_dir, "injection_epochs": 1, "sid_epochs": 1,
    "pretrain_epochs": 0, "pretrain_datasets": [], **(EQUAL_WIDTH if args.model == "BERT4Rec" else {})},
    cmd_args=[f"--{item}" for item in args.set])
torch.set_float32_matmul_precision(config["float32_matmul_precision"])  # as the entry point sets it
replayed = replays_cuda_graphs(config)
print(config["data_path_mode"], config["device"], "compiled" if config["compile_model"] else "eager",
      "CUDA graphs" if replayed else "")
if args.model == "QBert4Rec":
    ensure_semantic_ids(config, [])
train = data_preparation(config, create_dataset(config))[0]
model = get_model(args.model)(config, train._dataset).to(config["device"])
trainer = get_trainer(config["MODEL_TYPE"], args.model)(config, model)
optimizer = trainer.optimizer
print(type(optimizer), optimizer.defaults.get("fused"))


def drawn(count: int) -> list:
    """``count`` batches of the full batch size from the training loader, over as many epochs as that takes (each
    epoch's last, smaller batch is left out: a step of another shape would recompile a compiled loss); no batch
    beyond the ``count``-th is drawn, so that timing this times ``count`` batches."""
    batches: list = []
    while len(batches) < count:
        before = len(batches)
        for batch in train:
            if len(batch) == config["train_batch_size"]:
                batches.append(batch)
            if len(batches) == count:
                break
        if len(batches) == before:
            raise SystemExit(f"{args.model}'s training split has no batch of {config['train_batch_size']} rows — set "
                             "a smaller --set train_batch_size=N")
    return batches


batches = [batch.to(config["device"]) for batch in drawn(60)]


def step(batch) -> None:
    """One training step as the trainer takes it."""
    if replayed:
        torch.compiler.cudagraph_mark_step_begin()
    optimizer.zero_grad()
    model.calculate_loss(batch).backward()
    if trainer.clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), **trainer.clip_grad_norm)
    optimizer.step()


def milliseconds_each(run, count: int) -> float:
    """Mean milliseconds of ``count`` calls of ``run`` (a block of them, synchronised at both ends)."""
    torch.cuda.synchronize()
    start = time.time()
    run()
    torch.cuda.synchronize()
    return (time.time() - start) / count * 1000


for batch in batches[:10]:
    step(batch)
print("ms/step", milliseconds_each(lambda: [step(batch) for batch in batches[10:60]], 50))
print("ms/batch load", milliseconds_each(lambda: drawn(50), 50))


def forwards() -> None:
    for batch in batches[10:60]:
        if replayed:
            torch.compiler.cudagraph_mark_step_begin()
        optimizer.zero_grad()
        model.calculate_loss(batch)


print("ms/forward", milliseconds_each(forwards, 50))
PROFILED_STEPS = 10
# the CUDA runtime calls that start work on the GPU: a kernel each, or a whole captured graph
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cudaGraphLaunch")
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiled:
    for batch in batches[10:10 + PROFILED_STEPS]:
        step(batch)
    torch.cuda.synchronize()
events = profiled.key_averages()
launches = sum(event.count for event in events if event.key in LAUNCH_CALLS)
device_ms = sum(event.self_device_time_total for event in events) / 1000
print(f"per profiled step: {device_ms / PROFILED_STEPS:.2f} ms of GPU kernels, {launches / PROFILED_STEPS:.0f} "
      f"launches ({', '.join(LAUNCH_CALLS)})")
print(events.table(sort_by="self_cuda_time_total", row_limit=22, max_name_column_width=60))
print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
