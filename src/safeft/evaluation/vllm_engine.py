"""Generation with vLLM (`--engine vllm`; `pip install 'safeft[vllm]'`, a GPU machine): the run's LoRA adapter
is loaded natively (`LoRARequest`) instead of merged into the weights.

A run's weights are a chain: a base model (or a full model a stage saved), then LoRA adapters, one
per stage that trained one. vLLM serves one base model with one adapter per request, so
`vllm_generator` gives it the base and the chain's last adapter; when the chain holds more than one
adapter (an attack that trained a new adapter on an aligned one), the earlier ones are merged into
a base folder first (safetensors, in the evaluation's run directory) and only the last is loaded
as an adapter. Greedy decoding (temperature 0), `max_new_tokens` per prompt, answers in input order.
vLLM's kernels differ from transformers', so its answers can differ in rare near-ties: an
evaluation with this engine has its own config fingerprint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safeft.errors import SafeftError

log = logging.getLogger("safeft")


@dataclass
class VllmGenerator:
    """Answers from one vLLM engine: `base` (a folder or Hub id) with `adapter` (a PEFT folder) loaded natively."""

    base: str
    adapter: str | None
    lora_rank: int
    dtype: str = "bfloat16"
    tensor_parallel_size: int = 1
    _llm: Any = None

    def engine(self) -> Any:
        if self._llm is None:
            LLM = _vllm().LLM  # noqa: N806 - vLLM's class
            options: dict[str, Any] = (
                {"enable_lora": True, "max_lora_rank": self.lora_rank} if self.adapter else {}
            )
            self._llm = LLM(
                model=self.base,
                dtype=self.dtype,
                tensor_parallel_size=self.tensor_parallel_size,
                seed=0,
                **options,
            )
        return self._llm

    def __call__(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        vllm = _vllm()
        params = vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        request = (
            vllm.lora.request.LoRARequest("run", 1, self.adapter) if self.adapter else None
        )  # one adapter id per engine: every prompt uses the run's adapter
        outputs = self.engine().generate(list(prompts), params, lora_request=request, use_tqdm=False)
        return [out.outputs[0].text.strip() for out in outputs]


def _vllm() -> Any:
    try:
        import vllm
        import vllm.lora.request  # noqa: F401 - LoRARequest
    except ImportError:
        raise SafeftError(
            "engine vllm: the vllm package is not installed. On a GPU machine: pip install 'safeft[vllm]'; "
            "otherwise use --engine loop (the default)."
        ) from None
    return vllm


def vllm_generator(
    base_model: str,
    chain: list[dict[str, str]],
    scratch: Path,
    *,
    dtype: str = "bfloat16",
    cache: str | Path | None = None,
) -> VllmGenerator:
    """The generator for a run's weights chain (see the module docstring); merged bases are written under `scratch`."""
    from safeft.models import _resolve_path, load_weights_chain

    if base_model.startswith("tiny-random-"):
        raise SafeftError(
            f"engine vllm: {base_model} is built in memory; vLLM needs a model folder or Hub id"
        )
    last_full = max((i for i, w in enumerate(chain) if w["kind"] == "model"), default=-1)
    base = chain[last_full]["path"] if last_full >= 0 else _resolve_path(base_model, cache)
    adapters = [w for w in chain[last_full + 1 :] if w["kind"] == "adapter"]
    if not adapters:
        return VllmGenerator(base, None, 0, dtype)
    if len(adapters) > 1:
        merged = scratch / "vllm_base"
        if not (merged / "model.safetensors").is_file():
            log.info("engine vllm: merging %d earlier adapters into %s", len(adapters) - 1, merged)
            model, tok = load_weights_chain(
                base_model, chain[: chain.index(adapters[-1])], cache=cache, merge_last=True
            )
            model.save_pretrained(merged, safe_serialization=True)
            tok.save_pretrained(merged)
        base = str(merged)
    adapter = adapters[-1]["path"]
    rank = int(json.loads((Path(adapter) / "adapter_config.json").read_text())["r"])
    return VllmGenerator(base, adapter, rank, dtype)
