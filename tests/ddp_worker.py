"""Worker of test_train.py's DDP test: each of 2 processes trains on its half of the batch; rank 0 saves the
synchronised gradients of a plain and a gradient-cached step."""

import sys
from pathlib import Path

import torch
from accelerate import PartialState
from training_setup import demo_split, gradients, make_trainer, small_model

from dataset_scripts.teacher_embeddings import TeacherEmbeddings

folder, cache = Path(sys.argv[1]), sys.argv[2]
state = PartialState()
train = demo_split(cache, "train", images=8)
teacher = TeacherEmbeddings.load(folder / "teacher.safetensors")
model = small_model(folder, [])
trainer, collator = make_trainer(model, folder / f"ddp{state.process_index}", teacher=teacher)
halves = [range(0, 3), range(3, 8)]  # differently sized shares
batch = collator([train[i] for i in halves[state.process_index]])
wrapped = trainer.accelerator.prepare_model(model)
model.train()
results = {}
for mode, chunk_size in (("plain", None), ("cached", 2)):
    trainer.args.gradcache_chunk_size = chunk_size
    model.zero_grad()
    loss = trainer.training_step(wrapped, batch)
    results[mode] = {"loss": loss.detach(), "grads": gradients(model)}
if state.is_main_process:
    torch.save(results, folder / "ddp_gradients.pt")
