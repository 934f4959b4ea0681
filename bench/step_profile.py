"""Where one training step's time goes: QBert4Rec (its defaults) or BERT4Rec at QBert4Rec's width and batch size
(hidden 256, inner 256, 4 layers, 4 heads, batch 256) on Instruments, with the trainer's optimizer (fused on CUDA).
Prints milliseconds per step (50 steps after 10 of warm-up, synchronised), per batch drawn from the training loader
and per forward pass, then torch.profiler's tables of 10 steps by self CUDA time and by self CPU time:

    python bench/step_profile.py QBert4Rec --data_path dataset/ > docs/results/step_profile/QBert4Rec.log

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
from recbole_qrec.utils import get_model

parser = argparse.ArgumentParser(prog="python bench/step_profile.py", description=__doc__.split("\n\n")[0])
parser.add_argument("model", choices=["QBert4Rec", "BERT4Rec"])
parser.add_argument("--data_path", required=True, help="atomic files folder holding Instruments/")
parser.add_argument("--checkpoint_dir", default="saved")
args = parser.parse_args()
model_name = args.model
extra = {"hidden_size": 256, "inner_size": 256, "n_layers": 4, "n_heads": 4, "train_batch_size": 256} if model_name == "BERT4Rec" else {}
cfg = build_config(model_name, "Instruments", config_dict={"data_path": args.data_path, "checkpoint_dir": args.checkpoint_dir,
      "injection_epochs": 1, "sid_epochs": 1, "pretrain_epochs": 0, "pretrain_datasets": [], **extra})
print(cfg["data_path_mode"], cfg["device"])
ensure_semantic_ids(cfg, []) if model_name == "QBert4Rec" else None
ds = create_dataset(cfg)
train = data_preparation(cfg, ds)[0]
model = get_model(model_name)(cfg, train._dataset).to(cfg["device"])
trainer = get_trainer(cfg["MODEL_TYPE"], model_name)(cfg, model)
opt = trainer.optimizer
print(type(opt), opt.defaults.get("fused"))
batches = [b for _, b in zip(range(60), train)]
def step(b):
    opt.zero_grad()
    loss = model.calculate_loss(b)
    loss.backward()
    if trainer.clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), **trainer.clip_grad_norm)
    opt.step()
for b in batches[:10]: step(b)
torch.cuda.synchronize(); t = time.time()
for b in batches[10:60]: step(b)
torch.cuda.synchronize(); print("ms/step", (time.time() - t) / 50 * 1000)
t = time.time(); bs = [b for _, b in zip(range(50), train)]; torch.cuda.synchronize(); print("ms/batch load", (time.time() - t) / 50 * 1000)
t = time.time()
for b in batches[10:60]:
    opt.zero_grad(); loss = model.calculate_loss(b)
torch.cuda.synchronize(); print("ms/forward", (time.time() - t) / 50 * 1000)
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
    for b in batches[10:20]: step(b)
    torch.cuda.synchronize()
print(p.key_averages().table(sort_by="self_cuda_time_total", row_limit=22, max_name_column_width=60))
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
