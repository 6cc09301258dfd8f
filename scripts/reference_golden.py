"""Golden numbers for tests/test_reference_equivalence.py, produced by the reference trainers themselves.

    python scripts/reference_golden.py --refs /work/refs            # every case
    python scripts/reference_golden.py --refs /work/refs --only lisa,repnoise

`--refs` is a folder holding local checkouts named `<owner>+<repo>` (git-disl+Booster,
Lslland+T-Vaccine, git-disl+Vaccine, git-disl+Lisa); `--booster PATH` etc. name one checkout
directly. Each checkout must be at the commit listed in `REFERENCES` (checked with git).

What it does, per case of `tests/_reference_support.CASES`: builds the tiny Llama + LoRA from the
fixed seed, imports the reference repository's trainer class *unchanged* from its checkout, runs
it for k steps through `transformers.Trainer.train` on the case's batches (training rows in
order; the method's extra batches fed through the reference's own dataloader attributes), and
writes `tests/fixtures/reference/<case>.json` (provenance, settings, token ids, the reference's
random draws) and `<case>.safetensors` (the LoRA tensors after k steps). No reference code is
copied: the checkouts are imported from their paths at run time; only numbers are stored.

The compatibility layer (ours, in `safeft.bench.reference`, shared with `safeft bench --reference`;
the references were written for transformers ~4.4x, we run 5.x):

- `training_step` accepts Trainer's `num_items_in_batch` argument and drops it;
- `use_apex` and `do_grad_scaling` are False (attributes Trainer 5 no longer defines);
- `transformers.file_utils.is_torch_tpu_available` (removed in Trainer 5) is a stub returning False;
- T-Vaccine's `activate_layers` batch key is dropped before the model call (only its patched
  modeling files read it, to skip activation checkpointing; it does not change the numbers);
- RepNoise: the reference casts its difference mask to bfloat16 (`loss_func/repnoise_loss.py:131`)
  and `masked_token_ce_loss` multiplies the labels by it (line 70), which rounds most token ids to
  other tokens. The golden numbers are made with that bug neutralised: `masked_token_ce_loss`, as
  `rep_noise_loss` sees it, receives the mask as booleans (exact 0/1 for logits and labels alike).
  Everything else runs as written, including the bfloat16 cast of the hidden states at line 151.

Training rows come in dataset order (a SequentialSampler) on both sides; the references' extra
streams (Booster's, RepNoise's and T-Vaccine's harmful batches, Lisa's alignment batches) are
replaced by iterators over the case's fixed batches. T-Vaccine draws its blocks with
`np.random.choice`; the draws and the sampling probabilities are recorded in the fixture, and the
test feeds the draws to safeft (its generator is a different one) and compares the probabilities.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import shlex
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import _reference_support as ground  # noqa: E402
from safeft.bench import reference  # noqa: E402
from safeft.bench.reference import git_commit, import_reference_trainer, neutralise_label_rounding  # noqa: E402

# The checkouts the golden numbers come from: key -> (folder name, GitHub repository, commit).
REFERENCES = {
    "booster": ("git-disl+Booster", "https://github.com/git-disl/Booster", "6421918"),
    "tvaccine": ("Lslland+T-Vaccine", "https://github.com/Lslland/T-Vaccine", "4513750"),
    "vaccine": ("git-disl+Vaccine", "https://github.com/git-disl/Vaccine", "8937f68"),
    "lisa": ("git-disl+Lisa", "https://github.com/git-disl/Lisa", "68e3659"),
}

# T-Vaccine's block draws (np.random.choice) start from this seed: chosen so that the 4-block
# case does not draw the same pair at every step ({2, 3}, then {0, 1}); with seed 0 it draws {0, 1} thrice.
DRAW_SEED = 8

# Case -> (reference key, trainer class in its trainer.py, reference args set on TrainingArguments).
REFERENCE_RUNS: dict[str, tuple[str | None, str, dict[str, Any]]] = {
    # The references' SFT is transformers.Trainer itself (e.g. Booster train.py's default branch).
    "sft": (None, "Trainer", {}),
    "vaccine": ("vaccine", "VaccineTrainer", {"rho": 2.0}),
    "tvaccine_4blocks": (
        "tvaccine",
        "BaseTrainer",
        {"rho": 3.0, "probability_steps": 2, "lisa_interval_steps": 1, "lisa_activated_layers": 2},
    ),
    "tvaccine_28blocks": (
        "tvaccine",
        "BaseTrainer",
        {"rho": 3.0, "probability_steps": 2, "lisa_interval_steps": 1, "lisa_activated_layers": 3},
    ),
    "booster": (
        "booster",
        "BoosterAlignmentTrainer",
        {"lamb": 5.0, "alpha": 0.1, "rho": 2.0, "perturb_aware": "False", "guide_data_num": 1},
    ),
    "booster_vaccine": (
        "booster",
        "BoosterAlignmentTrainer",
        {"lamb": 5.0, "alpha": 0.1, "rho": 2.0, "perturb_aware": "True", "guide_data_num": 1},
    ),
    # Booster's RepNoiseTrainer: rep_noise_loss(beta=args.lamb, alpha=args.rho).
    "repnoise": ("booster", "RepNoiseTrainer", {"lamb": 1.0, "rho": 0.5}),
    "lisa": (
        "lisa",
        "LisaTrainer",
        {
            "alignment_step": 2,
            "finetune_step": 2,
            "rho": 1.0,
            "guide_data_num": 1,
            "num_train_epochs": ground.LISA_REFERENCE_EPOCHS,
        },
    ),
}
REFERENCE_LINES = {
    "sft": "transformers.Trainer (the references' SFT)",
    "vaccine": "trainer.py VaccineTrainer (lines 53-183)",
    "tvaccine_4blocks": "trainer.py BaseTrainer (lines 72-378)",
    "tvaccine_28blocks": "trainer.py BaseTrainer (lines 72-378)",
    "booster": "trainer.py BoosterAlignmentTrainer (lines 125-390), perturb_aware False",
    "booster_vaccine": "trainer.py BoosterAlignmentTrainer (lines 125-390), perturb_aware True",
    "repnoise": "trainer.py RepNoiseTrainer (lines 1134-1192), loss_func/repnoise_loss.py rep_noise_loss",
    "lisa": "trainer.py LisaTrainer (lines 40-211)",
}


# ----- importing a reference unchanged: safeft.bench.reference (shared with `safeft bench --reference`)


def compatible(trainer_cls: type) -> type:
    """The reference class under the compatibility layer, fed its training rows in dataset order."""
    return ground.sequential(reference.compatible(trainer_cls))


# ----- one case ------------------------------------------------------------------------------------


@contextlib.contextmanager
def recording_draws(trainer: Any) -> Iterator[list[dict[str, Any]]]:
    """T-Vaccine: every block draw of the reference (its np.random.choice) with the probabilities used."""
    draws: list[dict[str, Any]] = []
    original = trainer.switch_active_layers

    def record(n_layers: int, probability: Any, total_layers: int) -> Any:
        drawn = original(n_layers, probability=probability, total_layers=total_layers)
        draws.append(
            {
                "step": trainer.state.global_step,
                "blocks": [int(i) for i in drawn],
                "probabilities": [float(p) for p in probability],
            }
        )
        return drawn

    trainer.switch_active_layers = record
    try:
        yield draws
    finally:
        del trainer.switch_active_layers


def run_case(name: str, checkouts: dict[str, Path], out: Path, command: str) -> dict[str, Any]:
    from safetensors.torch import save_file
    from transformers import Trainer

    case = ground.CASES[name]
    ref_key, class_name, ref_args = REFERENCE_RUNS[name]
    rows = ground.make_rows(case)
    model = ground.build_model(case.blocks)
    initial = ground.weights_digest(model)

    if ref_key is None:
        trainer_cls = ground.sequential(Trainer)
        commit = None
    else:
        module = import_reference_trainer(checkouts[ref_key])
        trainer_cls = compatible(getattr(module, class_name))
        commit = git_commit(checkouts[ref_key]) or "not a git checkout"
        expected = REFERENCES[ref_key][2]
        if not commit.startswith(expected):
            raise SystemExit(
                f"{checkouts[ref_key]} is at {commit}, expected {expected}: check out that commit"
            )
        if name == "repnoise":  # the label-rounding bug neutralised, see the module doc
            neutralise_label_rounding(module.rep_noise_loss.__globals__)
    with tempfile.TemporaryDirectory() as tmp:
        extra = {k: v for k, v in ref_args.items() if k == "num_train_epochs"}
        args = ground.training_arguments(case, tmp, **extra)
        for key, value in ref_args.items():
            if key != "num_train_epochs":
                setattr(args, key, value)
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=rows["train_rows"],
            data_collator=ground.collate,
            callbacks=[ground.ReseedEachStep()],
        )
        feeds = {which: ground.Feed(which, batches) for which, batches in rows["feeds"].items()}
        attach_feeds(name, trainer, feeds, rows)
        np.random.seed(DRAW_SEED)  # T-Vaccine's np.random.choice
        with recording_draws(trainer) if ref_key == "tvaccine" else contextlib.nullcontext([]) as draws:
            trainer.train()
        for feed in feeds.values():
            assert feed.used == len(feed.batches), (
                f"{name}: {feed.name} used {feed.used} of {len(feed.batches)}"
            )
    tensors = ground.lora_tensors(model)
    meta_path, tensors_path = ground.fixture_paths(name, out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tensors_path))
    import peft
    import transformers

    meta = {
        "case": name,
        "provenance": {
            "repository": REFERENCES[ref_key][1] if ref_key else "transformers.Trainer",
            "commit": commit,
            "trainer": REFERENCE_LINES[name],
            "reference_args": ref_args,
            "command": command,
            "generated": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
                "numpy": np.__version__,
            },
            "shims": "training_step(num_items_in_batch) dropped; use_apex/do_grad_scaling False; "
            "is_torch_tpu_available stub; T-Vaccine's activate_layers key dropped before the model call"
            + (
                "; RepNoise label-rounding bug neutralised: masked_token_ce_loss receives its mask as "
                "booleans, not bfloat16 (labels stay exact; the hidden states' bfloat16 cast is kept)"
                if name == "repnoise"
                else ""
            ),
        },
        "steps": case.steps,
        "initial_weights_sha256": initial,
        "weight_seed": ground.WEIGHT_SEED,
        "row_seed": ground.ROW_SEED,
        "noise_seed": ground.NOISE_SEED,
        "draw_seed": DRAW_SEED,
        "train_rows": rows["train_rows"],
        "feeds": rows["feeds"],
        "draws": draws,
    }
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def attach_feeds(name: str, trainer: Any, feeds: dict[str, ground.Feed], rows: dict[str, Any]) -> None:
    """Put the case's extra batches where each reference trainer reads them (its own init first)."""
    if name.startswith("booster"):
        trainer.init(rows["feeds"]["harmful"][0])  # builds its dataloader; replaced just below
        trainer.harmful_dataloader = trainer.harmful_data_iter = feeds["harmful"]
    elif name == "repnoise":
        trainer.init(rows["feeds"]["harmful"][0])
        trainer.harmful_dataloader = feeds["harmful"]  # it calls iter() on it every step
    elif name.startswith("tvaccine"):
        trainer.specific_data_init(rows["feeds"]["harmful"][0])
        trainer.dangerous_dataloader = trainer.data_iter_danferous = feeds["harmful"]
    elif name == "lisa":
        trainer.init(rows["feeds"]["alignment"][0])
        trainer.alignment_dataloader = trainer.data_iter = feeds["alignment"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", type=Path, default=None, help="folder of <owner>+<repo> checkouts")
    for key, (folder, _, _) in REFERENCES.items():
        parser.add_argument(f"--{key}", type=Path, default=None, help=f"checkout of {folder}")
    parser.add_argument("--only", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--out", type=Path, default=ground.FIXTURES)
    ns = parser.parse_args(argv)
    checkouts: dict[str, Path] = {}
    for key, (folder, _, _) in REFERENCES.items():
        path = getattr(ns, key) or (ns.refs / folder if ns.refs else None)
        if path is not None:
            checkouts[key] = path.resolve()
    names = [n for n in ns.only.split(",") if n] or list(ground.CASES)
    for n in names:
        if n not in ground.CASES:
            raise SystemExit(f"unknown case {n!r}; cases: {', '.join(ground.CASES)}")
        key = REFERENCE_RUNS[n][0]
        if key is not None and key not in checkouts:
            raise SystemExit(f"case {n} needs the {REFERENCES[key][0]} checkout: give --refs or --{key}")
    command = "python scripts/reference_golden.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    torch.use_deterministic_algorithms(True)
    for n in names:
        meta = run_case(n, checkouts, ns.out, command)
        print(
            f"{n}: {len(meta['train_rows'])} rows, {meta['steps']} steps -> {ns.out / n}.{{json,safetensors}}"
        )


if __name__ == "__main__":
    main()
