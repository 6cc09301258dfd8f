"""CPU budget of experiment files: their stages (as `safeft run --dry-run` plans them) times measured stage times.

    python scripts/study_budget.py configs/experiments/study_v2_*.yaml
    python scripts/study_budget.py configs/experiments/study_v2_q2_sweep.yaml --copied-alignments all

Prints, per file, the stages by kind and the estimated hours on two machines (docs/study_v2_plan.md
explains every number):

- "AMX": the machine of the first CPU study. Stage wall times measured there,
  results/booster_cpu_repro/stage_times.csv (bf16 on AMX): alignment per method, the 50-step attack
  (mean of the p = 0.1 and 0.2 rows), the evaluation (mean of the attacked rows).
- "here": 2 AVX2 cores, fp32 (no native bf16). Training = AMX x 2.4, the one like-for-like pair
  measured: T-Vaccine's alignment step, 21.5 s here (~/safeft-runs/booster_cpu_repro_corrected,
  steps 1-4 of log.txt, cores otherwise idle) vs 9.1 s there (911.89 s / 100 steps). Evaluation =
  AMX x 2.0: the quickstart's generation here (0.27-0.54 s per harmful prompt at 48 tokens, 0.17-0.20
  s per SST-2 row) scaled to 300 prompts x 64 tokens + 872 rows is 1.4-2.1x the 200 s there.

Stages no run has timed are estimated from the work of their step (ESTIMATED below); the attack's
time scales with its steps (epochs x rows). Alignments copied from an earlier run folder (same
fingerprint, see the plan) cost nothing: --copied-alignments lists them, "all" for every one.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from safeft.pipeline.experiment import expand, load_experiment

# Seconds on the AMX machine (results/booster_cpu_repro/stage_times.csv).
ALIGN_S = {"sft": 207.42, "vaccine": 916.04, "tvaccine": 911.89, "booster": 1256.8, "repnoise": 990.28}
ATTACK_S = 155.0  # n = 500, 1 epoch = 50 steps; 24 finetune rows, p = 0.1 / 0.2: 139-190 s
EVALUATE_S = 200.0  # 300 harmful prompts x 64 tokens + 872 SST-2 rows; attacked rows: 146-226 s
ESTIMATED = {
    # booster-vaccine: Booster's time x the fp32 step ratio of docs/benchmarks.md (3.94 / 3.06)
    "align/booster-vaccine": ALIGN_S["booster"] * 3.94 / 3.06,
    # tar: ~8 passes per step with inner_steps 4, tamper_every 2 (baselines_cpu.yaml) -> 8 x SFT
    "align/tar": 8 * ALIGN_S["sft"],
    "finetune/lisa": ATTACK_S * 0.99,  # docs/benchmarks.md: Lisa's step 0.99x SFT's
    "finetune/panacea": ATTACK_S * 3,  # 3 passes per step
    "repair/antidote": ALIGN_S["sft"],  # gradients of 1,000 calibration rows ~ 100 SFT steps
    "repair/safelora": 30.0,  # a projection per layer, plus loading
}
TRAIN_FACTOR_HERE = 2.4
EVALUATE_FACTOR_HERE = 2.0


def stage_seconds(kind: str, config: object, labels: dict) -> float:
    """AMX seconds of one stage."""
    if kind == "align":
        method = config.method  # type: ignore[attr-defined]
        return ALIGN_S.get(method) or ESTIMATED[f"align/{method}"]
    if kind == "finetune":
        steps_scale = config.train.epochs * config.samples / 500  # type: ignore[attr-defined]
        per_attack = ESTIMATED.get(f"finetune/{config.method}", ATTACK_S)  # type: ignore[attr-defined]
        return per_attack * steps_scale
    if kind == "repair":
        return ESTIMATED[f"repair/{config.method}"]  # type: ignore[attr-defined]
    return EVALUATE_S


def budget(path: Path, copied: set[str] | str) -> tuple[dict[str, int], dict[str, float], dict[str, float]]:
    """Stage counts by kind, AMX hours and hours here by kind (copied alignments cost nothing)."""
    counts: dict[str, int] = defaultdict(int)
    amx: dict[str, float] = defaultdict(float)
    here: dict[str, float] = defaultdict(float)
    for st in expand(load_experiment(path, {"output": f"runs/{path.stem}"})):
        counts[st.kind] += 1
        name = re.sub(r"-[0-9a-f]{8}$", "", st.id)
        if st.kind == "align" and (copied == "all" or name in copied):
            continue
        seconds = stage_seconds(st.kind, st.config, st.labels)
        factor = EVALUATE_FACTOR_HERE if st.kind == "evaluate" else TRAIN_FACTOR_HERE
        amx[st.kind] += seconds / 3600
        here[st.kind] += seconds * factor / 3600
    return counts, amx, here


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="+", type=Path)
    parser.add_argument(
        "--copied-alignments",
        default="",
        help="comma-separated alignment stages copied from another run folder (e.g. align/sft-s42), or 'all'",
    )
    args = parser.parse_args()
    copied: set[str] | str = (
        "all" if args.copied_alignments == "all" else set(filter(None, args.copied_alignments.split(",")))
    )
    kinds = ("align", "finetune", "repair", "evaluate")
    print("| file | stages | " + " | ".join(kinds) + " | AMX h | here h |")
    print("|---|---:|" + "---:|" * len(kinds) + "---:|---:|")
    for path in args.experiments:
        counts, amx, here = budget(path, copied)
        cells = [f"{counts[k]} ({here[k]:.1f} h)" if counts[k] else "–" for k in kinds]
        print(
            f"| {path.stem} | {sum(counts.values())} | "
            + " | ".join(cells)
            + f" | {sum(amx.values()):.1f} | {sum(here.values()):.1f} |"
        )


if __name__ == "__main__":
    main()
