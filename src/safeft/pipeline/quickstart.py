"""`safeft quickstart`: a small complete experiment — SFT vs Booster, one attack, CPU judge — in minutes.

It is `configs/experiments/quickstart.yaml` run like any experiment (cached and resumable: run it
again and finished stages are reused), with two overrides:

- the runs folder (`--output`);
- the data: the real files when a data folder is given (`--data-dir` or `$SAFEFT_DATA_DIR`),
  otherwise (or with `--demo`) a small built-in set of templated placeholder data written into
  `<output>/demo_data/` — announced as a mechanics demo, not a benchmark.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from safeft.errors import SafeftError
from safeft.pipeline.demo_data import BANNER, write_demo_data
from safeft.pipeline.experiment import execute, load_experiment

log = logging.getLogger("safeft")

CONFIG_NAME = "experiments/quickstart.yaml"


def quickstart_config() -> Path:
    """The shipped quickstart experiment: inside the package if installed with its configs, else the repository's configs/."""
    here = Path(__file__).resolve()
    candidates = [here.parents[1] / "configs" / CONFIG_NAME, here.parents[3] / "configs" / CONFIG_NAME]
    for path in candidates:
        if path.is_file():
            return path
    raise SafeftError(
        f"the quickstart experiment file was not found (looked in {', '.join(map(str, candidates))}); "
        "run from a safeft checkout, or pass the file to 'safeft run'."
    )


def demo_overrides(paths: dict[str, str]) -> dict[str, Any]:
    """Point every data key of the experiment at the demo files (the data dir is not used)."""
    return {
        "data_dir": None,
        "base": {
            "align": {"alignment_data": paths["refusals"], "harmful_data": paths["harmful_pool"]},
            "finetune": {
                "task_data": paths["sst2_train"],
                "harmful_data": paths["attack"],
                "eval_prompts": paths["eval_prompts"],
                "alignment_data": paths["refusals"],
            },
            "evaluate": {
                "harmful_prompts": paths["eval_prompts"],
                "harmless_prompts": paths["harmless"],
                "task_data": paths["sst2_eval"],
            },
        },
    }


def run_quickstart(
    output: str | Path = "runs/quickstart", data_dir: str | None = None, demo: bool = False
) -> int:
    """Run the quickstart experiment into `output`; print the results table; return the exit code."""
    from safeft.embedded import require_embedded_packages

    require_embedded_packages("safeft quickstart (SmolLM2-135M and the CPU judge)")
    output = Path(output)
    data_dir = data_dir or os.environ.get("SAFEFT_DATA_DIR") or None
    if demo or not data_dir:
        print(f"*** {BANNER} ***")
        if not demo:
            print(
                "    (no data folder given: pass --data-dir ../shared/data or set $SAFEFT_DATA_DIR for the real datasets)"
            )
        overrides = {"output": str(output), **demo_overrides(write_demo_data(output / "demo_data"))}
    else:
        if not Path(data_dir).is_dir():
            raise SafeftError(
                f"--data-dir {data_dir}: no such folder. Pass the folder with the data files (e.g. ../shared/data), or --demo for the built-in demo set."
            )
        overrides = {"output": str(output), "data_dir": data_dir}
    exp = load_experiment(quickstart_config(), overrides)
    start = time.perf_counter()
    code = execute(exp)
    minutes = (time.perf_counter() - start) / 60
    print(f"\nquickstart finished in {minutes:.1f} min; runs, tables and plots are in {output}/")
    if demo or not data_dir:
        print(f"*** {BANNER} ***")
    return code
