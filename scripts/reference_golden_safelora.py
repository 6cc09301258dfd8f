"""Golden numbers for tests/test_repair_safelora.py, produced by IBM/SafeLoRA's own class.

    python scripts/reference_golden_safelora.py --refs /work/refs

`--refs` holds the checkout `IBM+SafeLoRA` at d81fda1. Builds a tiny Llama (base), an "aligned" copy
with a seeded rank-3 change of every q/k/v weight, and a LoRA (r=4) with seeded A and B on the
aligned model; imports the reference's `model.py` and `config.py` unchanged from the checkout and runs
`SafeLoRA` on them in four settings (number 10 / 3, threshold 0.5 / 0.35). Writes
tests/fixtures/reference/safelora.safetensors (the alignment changes, the LoRA pairs, and the
reference's final B of every layer per setting) and safelora.json (provenance, the reference's
cosines). The only compatibility shim: transformers 5 no longer takes `load_in_8bit=False`, which the
reference passes to `from_pretrained`; it is dropped (it changes nothing).
"""

import argparse
import importlib.util
import json
import tempfile
import types
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig

parser = argparse.ArgumentParser()
parser.add_argument("--refs", required=True, help="folder with the checkout IBM+SafeLoRA")
REF = Path(parser.parse_args().refs) / "IBM+SafeLoRA"
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference"
spec = importlib.util.spec_from_file_location("safelora_ref", REF / "model.py")
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)
cspec = importlib.util.spec_from_file_location("safelora_cfg", REF / "config.py")
refcfg = importlib.util.module_from_spec(cspec)
cspec.loader.exec_module(refcfg)

# transformers 5 dropped load_in_8bit; the reference passes load_in_8bit=False, which changes nothing.
_orig = AutoModelForCausalLM.from_pretrained


def _from_pretrained(path, **kw):
    kw.pop("load_in_8bit", None)
    return _orig(path, **kw)


ref.AutoModelForCausalLM = types.SimpleNamespace(from_pretrained=_from_pretrained)

torch.manual_seed(0)
cfg = LlamaConfig(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
)
base = AutoModelForCausalLM.from_config(cfg).float()
aligned = AutoModelForCausalLM.from_config(cfg).float()
aligned.load_state_dict(base.state_dict())
g = torch.Generator().manual_seed(1)
tensors = {}
targets = ["q_proj", "k_proj", "v_proj"]
with torch.no_grad():
    for name, m in aligned.named_modules():
        if name.split(".")[-1] in targets:
            # a low-rank-ish alignment change (rank 3), like a LoRA alignment
            out_f, in_f = m.weight.shape
            delta = torch.randn(out_f, 3, generator=g) @ torch.randn(3, in_f, generator=g) * 0.1
            m.weight += delta
tmp = tempfile.mkdtemp()
base.save_pretrained(f"{tmp}/base")
aligned.save_pretrained(f"{tmp}/aligned")
# Deltas as the reference sees them (after the save/load round trip: float32, exact)
b2 = AutoModelForCausalLM.from_pretrained(f"{tmp}/base")
a2 = AutoModelForCausalLM.from_pretrained(f"{tmp}/aligned")
bm, am = dict(b2.named_modules()), dict(a2.named_modules())
for name in am:
    if name.split(".")[-1] in targets:
        tensors[f"delta.{name}"] = (am[name].weight - bm[name].weight).detach().contiguous()


def lora_model():
    m = AutoModelForCausalLM.from_pretrained(f"{tmp}/aligned")
    pm = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    gg = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=gg) * 0.3)
        # make some updates lie mostly in the alignment subspace (high cosine), others not
        for n, mod in pm.named_modules():
            if n.endswith(
                ("layers.0.self_attn.q_proj", "layers.2.self_attn.v_proj", "layers.3.self_attn.k_proj")
            ):
                plain = n.removeprefix("base_model.model.")
                d = tensors[f"delta.{plain}"]
                u, s, vh = torch.linalg.svd(d)
                mod.lora_B["default"].weight.copy_(u[:, :4] * 0.5)
    return pm


pm = lora_model()
for n, p in pm.named_parameters():
    if "lora_" in n:
        tensors["input." + n.removeprefix("base_model.model.").replace(".default", "")] = (
            p.detach().clone().contiguous()
        )

cases = {
    "number10": dict(select_layers_type="number", num_proj_layers=10, threshold=0.5),
    "number3": dict(select_layers_type="number", num_proj_layers=3, threshold=0.5),
    "threshold0.5": dict(select_layers_type="threshold", num_proj_layers=10, threshold=0.5),
    "threshold0.35": dict(select_layers_type="threshold", num_proj_layers=10, threshold=0.35),
}
meta = {
    "provenance": {
        "repo": "IBM/SafeLoRA",
        "commit": "d81fda1",
        "file": "model.py (class SafeLoRA, unmodified)",
        "command": "python scripts/reference_golden_safelora.py --refs /work/refs (transformers {}, peft {}, torch {}); "
        "the only shim: load_in_8bit=False is dropped from from_pretrained (transformers 5 no longer takes it)".format(
            __import__("transformers").__version__, __import__("peft").__version__, torch.__version__
        ),
    },
    "lora": {"r": 4, "alpha": 8},
    "cases": {},
}
for case, kw in cases.items():
    pm = lora_model()
    conf = refcfg.SafeLoRAConfig(
        base_model_path=f"{tmp}/base", aligned_model_path=f"{tmp}/aligned", devices="cpu", **kw
    )
    # the cosines, as the reference computes them (its number mode runs projected_weighted once for them)
    s = ref.SafeLoRA(pm, conf)
    _, cos = s.projected_weighted(s.get_aligned_matrix(), -2.0)  # threshold below any cosine: only the list
    meta["cases"][case] = {"config": kw, "cosines": [float(c) for c in cos]}
    pm2 = lora_model()
    s2 = ref.SafeLoRA(pm2, conf)
    for n, p in s2.model.named_parameters():
        if "lora_B" in n:
            tensors[f"{case}.{n.removeprefix('base_model.model.').replace('.default', '')}"] = (
                p.detach().clone().contiguous()
            )
save_file(tensors, str(OUT / "safelora.safetensors"))
(OUT / "safelora.json").write_text(json.dumps(meta, indent=1) + "\n")
print(json.dumps({k: v["cosines"] for k, v in meta["cases"].items()})[:600])
