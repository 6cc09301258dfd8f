"""`--engine vllm` up to the engine call: what vLLM is given (base, native LoRA adapter, greedy params), on CPU.

vLLM itself needs a GPU; the test replaces only the `vllm` package (its LLM, SamplingParams and
LoRARequest) with a recorder.
"""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from safeft.evaluation.vllm_engine import vllm_generator
from safeft.models import load_model


class FakeLLM:
    created: list[dict] = []
    calls: list[tuple] = []

    def __init__(self, **kwargs):
        FakeLLM.created.append(kwargs)

    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        FakeLLM.calls.append((list(prompts), params, lora_request))
        return [
            types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f"  answer {i} ")])
            for i in range(len(prompts))
        ]


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.created, FakeLLM.calls = [], []
    vllm = types.ModuleType("vllm")
    vllm.LLM = FakeLLM
    vllm.SamplingParams = lambda **kw: ("SamplingParams", kw)
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = lambda name, id_, path: ("LoRARequest", name, id_, path)
    lora.request = request
    vllm.lora = lora
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    return vllm


def saved_base_and_adapters(tmp_path, n_adapters):
    """A tiny Llama saved as a model folder, and `n_adapters` LoRA adapters (random B: not a no-op)."""
    from peft import LoraConfig, get_peft_model

    model, tok = load_model("tiny-random-llama")
    base = tmp_path / "base"
    model.save_pretrained(base, safe_serialization=True)
    tok.save_pretrained(base)
    chain = []
    for i in range(n_adapters):
        peft_model = get_peft_model(
            load_model(str(base))[0], LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        )
        torch.manual_seed(i)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
        peft_model.save_pretrained(tmp_path / f"adapter{i}")
        chain.append({"kind": "adapter", "path": str(tmp_path / f"adapter{i}")})
    return str(base), chain


def test_one_adapter_is_loaded_natively_with_greedy_decoding(tmp_path, fake_vllm):
    base, chain = saved_base_and_adapters(tmp_path, 1)
    generate = vllm_generator(base, chain, tmp_path / "eval")
    answers = generate(["p1", "p2", "p3"], 48)
    assert answers == ["answer 0", "answer 1", "answer 2"]
    (created,) = FakeLLM.created
    assert created["model"] == base and created["enable_lora"] is True and created["max_lora_rank"] == 4
    ((prompts, params, lora),) = FakeLLM.calls
    assert prompts == ["p1", "p2", "p3"]
    assert params == ("SamplingParams", {"temperature": 0.0, "max_tokens": 48})
    assert lora == ("LoRARequest", "run", 1, chain[0]["path"])
    assert not (tmp_path / "eval" / "vllm_base").exists()  # nothing merged: the base is served as is


def test_earlier_adapters_are_merged_into_a_base_and_the_last_one_stays_native(tmp_path, fake_vllm):
    from peft import PeftModel

    base, chain = saved_base_and_adapters(tmp_path, 2)
    generate = vllm_generator(base, chain, tmp_path / "eval")
    merged = tmp_path / "eval" / "vllm_base"
    assert generate.base == str(merged) and generate.adapter == chain[1]["path"]
    assert (merged / "model.safetensors").is_file()
    # The merged base computes what the base with the first adapter (unmerged, PEFT) computes.
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(load_model(base)[0], chain[0]["path"])(ids).logits
        got = load_model(str(merged))[0](ids).logits
        plain = load_model(base)[0](ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter really changed the model
    generate(["p"], 8)
    assert FakeLLM.created[0]["model"] == str(merged)
    assert FakeLLM.calls[0][2] == ("LoRARequest", "run", 1, chain[1]["path"])


def test_evaluate_stage_with_engine_vllm_scores_the_engine_s_answers(tmp_path, fake_vllm):
    from safeft.pipeline.demo_data import write_demo_data
    from safeft.stages.evaluate import EvaluateConfig, run_evaluate

    base, _ = saved_base_and_adapters(tmp_path, 0)
    data = write_demo_data(tmp_path / "data", n_eval=3)
    cfg = EvaluateConfig(
        output=str(tmp_path / "eval"),
        model=base,
        judge="keyword",
        harmful_prompts=data["eval_prompts"],
        limit=3,
        harmless_limit=0,
        engine="vllm",
    )
    run = run_evaluate(cfg)
    rows = [json.loads(line) for line in (run.path / "harmful_samples.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in rows] == ["answer 0", "answer 1", "answer 2"]
    assert FakeLLM.created[0]["model"] == base and "enable_lora" not in FakeLLM.created[0]
    assert json.loads((run.path / "metrics.json").read_text())["decoding"]["engine"] == "vllm"


def test_without_vllm_installed_the_error_says_how_to_get_it(tmp_path, monkeypatch):
    from safeft.errors import SafeftError

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    base, chain = saved_base_and_adapters(tmp_path, 1)
    with pytest.raises(SafeftError, match=r"pip install 'safeft\[vllm\]'"):
        vllm_generator(base, chain, tmp_path / "eval")(["p"], 4)
