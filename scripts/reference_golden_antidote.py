"""Golden numbers for tests/test_repair_antidote.py, produced by git-disl/Antidote's own pruning function.

    python scripts/reference_golden_antidote.py --refs /work/refs

`--refs` holds the checkout `git-disl+Antidote` at 26e2ade. Imports its `utils.py` unchanged and calls
`prune_wanda_outlier` on a fixed two-block model whose only Linear layers are LoRA matrices
(`lora_A.default`, `lora_B.default`, found by the reference's own `find_layers`), with six calibration
rows at batch size 1 (as the reference's scripts), at four dense ratios. The blocks are ours (a
residual LoRA update and a tanh) and take the keyword arguments the reference passes. Writes
tests/fixtures/reference/antidote.safetensors (the LoRA weights, the input of every matrix for every
row, the reference's masks) and antidote.json (provenance).
"""

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--refs", required=True, help="folder with the checkout git-disl+Antidote")
REF = Path(parser.parse_args().refs) / "git-disl+Antidote"
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference"
sys.path.insert(0, str(REF))
spec = importlib.util.spec_from_file_location("antidote_utils", REF / "utils.py")
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)

HIDDEN, RANK = 24, 10


class LoraPair(nn.Module):
    def __init__(self):
        super().__init__()
        self.lora_A = nn.ModuleDict({"default": nn.Linear(HIDDEN, RANK, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(RANK, HIDDEN, bias=False)})

    def forward(self, x):
        return self.lora_B["default"](self.lora_A["default"](x))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = nn.Module()
        self.self_attn.q_proj = LoraPair()

    def forward(self, x, attention_mask=None, position_ids=None):
        return (torch.tanh(x + self.self_attn.q_proj(x)),)


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, HIDDEN)
        self.layers = nn.ModuleList([Block(), Block()])


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = Inner()
        self.config = types.SimpleNamespace(use_cache=False)

    def forward(self, input_ids):
        x = self.model.embed(input_ids)
        mask = torch.ones_like(input_ids)
        pos = torch.arange(input_ids.shape[1]).unsqueeze(0)
        for layer in self.model.layers:
            x = layer(x, attention_mask=mask, position_ids=pos)[0]
        return x


torch.manual_seed(0)
model = Model()
with torch.no_grad():
    for layer in model.model.layers:
        a = layer.self_attn.q_proj.lora_A["default"].weight
        a[:, 7] = a[:, 5]  # equal scores in columns 5 and 7 (their inputs are equal too): the tie rule
model.model.embed.weight.data[:, 7] = model.model.embed.weight.data[:, 5]
g = torch.Generator().manual_seed(3)
lengths = [5, 9, 3, 7, 6, 8]
samples = [torch.randint(0, 50, (1, n), generator=g) for n in lengths]

# The input of every LoRA matrix for every sample (a plain forward with hooks: independent of the reference).
inputs = {}


def keep(name):
    def hook(m, args, out):
        inputs.setdefault(name, []).append(args[0].detach()[0].clone())

    return hook


handles = [m.register_forward_hook(keep(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
with torch.no_grad():
    for s in samples:
        model(s)
for h in handles:
    h.remove()

tensors = {}
for n, m in model.named_modules():
    if isinstance(m, nn.Linear):
        tensors[f"weight.{n}"] = m.weight.detach().clone()
        tensors[f"inputs.{n}"] = torch.cat(inputs[n])  # rows of all samples, in order
tensors["lengths"] = torch.tensor(lengths)

meta = {
    "provenance": {
        "repo": "git-disl/Antidote",
        "commit": "26e2ade",
        "function": "utils.py::prune_wanda_outlier (unmodified; args.full_finetuning='False', sample_num=len(samples))",
        "command": f"python scripts/reference_golden_antidote.py --refs /work/refs (torch {torch.__version__})",
    },
    "dense_ratios": [0.1, 0.05, 0.2, 0.3],
}
for d in meta["dense_ratios"]:
    args = types.SimpleNamespace(
        dense_ratio=d, sample_num=len(samples), model="llama", full_finetuning="False"
    )
    masks = ref.prune_wanda_outlier(
        args, model, [{"input_ids": s} for s in samples], device=torch.device("cpu")
    )
    for k, v in masks.items():
        # key: base_model.model.model.layers.<i>.self_attn.q_proj.lora_A.default.weight
        name = k.removeprefix("base_model.model.").removesuffix(".weight")
        tensors[f"mask{d}.{name}"] = v.detach().clone()
print(sorted(tensors))
save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "antidote.safetensors"))
(OUT / "antidote.json").write_text(json.dumps(meta, indent=1) + "\n")
print({k: int(v.sum()) for k, v in tensors.items() if k.startswith("mask")})
