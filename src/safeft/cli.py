"""The `safeft` command line: one subcommand per stage, options generated from the typed configs.

Each stage's options come from its config dataclass (`--config FILE.yaml` plus `--field value`
overrides, which win). Errors caused by the input print as one paragraph and exit with code 2;
`--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

from safeft import __version__
from safeft.errors import ConfigError, SafeftError

log = logging.getLogger("safeft")


def _stage_parser(
    sub: Any, name: str, config_cls: Any, help: str, description: str
) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help=help, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="YAML file whose keys are the options below; options given on the command line win",
    )
    p.add_argument(
        "--num-processes",
        type=int,
        default=1,
        metavar="N",
        help="run on N data-parallel processes (re-launched with torchrun; for FSDP/DeepSpeed/multi-node use 'accelerate launch -m safeft.cli', see docs/distributed.md)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --output (finished, of another config or another stage); "
        "the old run stays intact until the new one is complete",
    )
    config_cls.add_arguments(p)
    return p


def _load_stage_config(config_cls: Any, args: argparse.Namespace) -> Any:
    return config_cls.load(args.config, config_cls.overrides_from_args(args))


def cmd_models(args: argparse.Namespace) -> int:
    from safeft.models import KNOWN_MODELS, cache_dir, describe_resolution

    if args.resolve:
        print(describe_resolution(args.resolve, args.cache_dir))
        return 0
    print(f"Known models (cache: {cache_dir(args.cache_dir)}):")
    for name in KNOWN_MODELS:
        print("  " + describe_resolution(name, args.cache_dir))
    print("Any local folder with config.json or any Hugging Face Hub id also works as --model.")
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from safeft.data.inspect import format_inspection, inspect_source

    print(format_inspection(inspect_source(args.source, data_dir=args.data_dir, as_source=args.as_source)))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from safeft.pipeline.validate import validate_file

    failed = 0
    for path in args.files:
        try:
            kind = validate_file(path, kind=args.kind)
            print(f"ok   {path} ({kind})")
        except ConfigError as e:
            failed += 1
            print(f"FAIL {e}")
    return 2 if failed else 0


def cmd_align(args: argparse.Namespace) -> int:
    from safeft.stages.align import AlignConfig, run_align

    run = run_align(_load_stage_config(AlignConfig, args), overwrite=args.overwrite)
    print(f"alignment run: {run.path}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from safeft.stages.finetune import FinetuneConfig, run_finetune

    run = run_finetune(_load_stage_config(FinetuneConfig, args), overwrite=args.overwrite)
    print(f"fine-tuning run: {run.path}")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    from safeft.stages.repair import RepairConfig, run_repair

    if args.num_processes > 1:
        raise SafeftError(
            "safeft repair runs in one process (a single pass over the adapter); drop --num-processes"
        )
    run = run_repair(_load_stage_config(RepairConfig, args), overwrite=args.overwrite)
    print(f"repair run: {run.path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from safeft.evaluation.result import EvaluationResult
    from safeft.io import read_json
    from safeft.stages.evaluate import EvaluateConfig, rejudge, run_evaluate

    if args.rejudge:
        judge = getattr(args, "cfg:judge", None)
        if not judge:
            raise SafeftError(
                "--rejudge EVAL_DIR needs --judge NAME: the judge to score the saved answers with"
            )
        print(EvaluationResult.from_metrics(rejudge(args.rejudge, judge)).summary())
        print(f"evaluation: {args.rejudge}")
        return 0
    run = run_evaluate(_load_stage_config(EvaluateConfig, args), overwrite=args.overwrite, strict=args.strict)
    print(EvaluationResult.from_metrics(read_json(run.path / "metrics.json")).summary())
    print(f"evaluation: {run.path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from safeft.pipeline.experiment import run_experiment

    return run_experiment(
        args.experiment,
        dry_run=args.dry_run,
        data_dir=args.data_dir,
        output=args.output,
        num_processes=args.num_processes,
        jobs=args.jobs,
        launcher=args.launcher,
        launcher_settings={
            key: getattr(args, key)
            for key in ("partition", "gpus_per_stage", "cpus_per_stage", "time_min", "mem_gb")
            if getattr(args, key) is not None
        },
        strict=args.strict,
    )


def cmd_report(args: argparse.Namespace) -> int:
    from safeft.pipeline.report import write_report

    print(write_report(args.runs_dir, fa_tolerance=args.fa_tolerance))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from safeft.pipeline.paired import SAMPLES_FILE, compare, judges_of, paired_count_cells
    from safeft.tables import markdown_table

    reference = Path(args.reference)
    rows = []
    for run in map(Path, args.runs):
        counts = compare(run, reference)
        if counts is None:
            missing = [str(d / SAMPLES_FILE) for d in (run, reference) if not (d / SAMPLES_FILE).is_file()]
            raise SafeftError(
                f"cannot pair {run} with {reference}: "
                + (f"missing {', '.join(missing)}" if missing else "they share no prompt")
                + " (give evaluation run directories)"
            )
        # every judge both evaluations saved (older evaluations: their own judge only)
        shared = [j for j in judges_of(run) if j in judges_of(reference)]
        for judge, judged in (
            [(None, counts)] if not shared else [(j, compare(run, reference, j)) for j in shared]
        ):
            assert judged is not None
            cells = paired_count_cells(judged)
            cells[1] += f" [{judged['hs_ci95'][0]:.1f}, {judged['hs_ci95'][1]:.1f}]"
            cells[2] += f" [{judged['reference_hs_ci95'][0]:.1f}, {judged['reference_hs_ci95'][1]:.1f}]"
            rows.append([str(run), judge or "(its own)", *cells])
    header = [
        "evaluation",
        "judge",
        "prompts",
        "HS [95% CI]",
        "reference HS [95% CI]",
        "flagged only here",
        "only for reference",
        "p",
    ]
    print(f"reference: {reference}\n\n" + markdown_table(header, rows))
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from safeft.pipeline.quickstart import run_quickstart

    return run_quickstart(output=args.output, data_dir=args.data_dir, demo=args.demo)


def cmd_judge_train(args: argparse.Namespace) -> int:
    from safeft.evaluation.cpu_judge import judge_train_main

    return judge_train_main(args)


def cmd_judge_eval(args: argparse.Namespace) -> int:
    from safeft.evaluation.judge_eval import judge_eval_main

    return judge_eval_main(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from safeft.bench import run_bench

    return run_bench(
        model=args.model,
        smoke=args.smoke,
        output=args.output,
        data_dir=args.data_dir,
        quickstart=args.quickstart,
        reps=args.reps,
        seq_len=args.seq_len,
        precisions=(
            ()
            if args.precisions == "none"
            else tuple(args.precisions.split(","))
            if args.precisions
            else None
        ),
        methods=tuple(args.methods.split(",")) if args.methods else None,
        threads=args.threads,
        compare_full_logits=tuple(args.compare_full_logits.split(",")) if args.compare_full_logits else None,
        reference=tuple(p for p in args.reference.split(",") if p) if args.reference else None,
        variants=tuple(v for v in args.compare.split(",") if v) if args.compare else None,
    )


def build_parser() -> argparse.ArgumentParser:
    from safeft.stages.align import AlignConfig
    from safeft.stages.evaluate import EvaluateConfig
    from safeft.stages.finetune import FinetuneConfig
    from safeft.stages.repair import RepairConfig

    parser = argparse.ArgumentParser(
        prog="safeft", description="Defend LLMs against harmful fine-tuning: align, attack, evaluate, report."
    )
    parser.add_argument("--version", action="version", version=f"safeft {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "models",
        help="list known model names and where they resolve",
        description="List the short model names and where each resolves.",
    )
    p.add_argument(
        "--resolve",
        metavar="NAME",
        help="say what --model NAME would load (short name, local folder or Hub id)",
    )
    p.add_argument("--cache-dir", help="model cache (default: $SAFEFT_CACHE or ~/.cache/safeft)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("data", help="inspect data sources", description="Work with data sources.")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = data_sub.add_parser(
        "inspect",
        help="rows, fields, label balance and a sample of a source or file",
        description="Rows, fields, label balance and a sample of a data source or file.",
    )
    q.add_argument(
        "source",
        metavar="NAME|PATH",
        help="a source name (see the error for the list) or a JSON/JSONL/CSV/parquet file",
    )
    q.add_argument(
        "--as",
        dest="as_source",
        metavar="SOURCE",
        help="validate the file against this source's schema, e.g. --as beavertails",
    )
    q.add_argument("--data-dir", help="folder with the local data files (default: $SAFEFT_DATA_DIR)")
    q.set_defaults(func=cmd_data_inspect)

    p = sub.add_parser(
        "validate",
        help="check config and experiment files, reporting every error",
        description="Parse and check config or experiment files; every problem is reported at once.",
    )
    p.add_argument("files", nargs="+", metavar="CONFIG", help="YAML files")
    p.add_argument(
        "--kind",
        choices=("align", "finetune", "repair", "evaluate", "experiment"),
        help="what the file configures (default: inferred)",
    )
    p.set_defaults(func=cmd_validate)

    _stage_parser(
        sub,
        "align",
        AlignConfig,
        "alignment stage: SFT or a defense",
        "Safety-align a model with SFT, Vaccine, T-Vaccine, Booster, Booster+Vaccine or RepNoise and write a run directory.",
    ).set_defaults(func=cmd_align)
    _stage_parser(
        sub,
        "finetune",
        FinetuneConfig,
        "fine-tuning stage: the harmful fine-tuning attack (or Lisa)",
        "Fine-tune an aligned run (or a bare model) on a poisoned mix of a benign task and harmful rows.",
    ).set_defaults(func=cmd_finetune)
    _stage_parser(
        sub,
        "repair",
        RepairConfig,
        "post-fine-tuning stage: repair a fine-tuned LoRA adapter (SafeLoRA, Antidote)",
        "Repair a fine-tuning run's LoRA adapter with SafeLoRA or Antidote and write a run directory that "
        "'safeft evaluate --run' evaluates.",
    ).set_defaults(func=cmd_repair)
    p = _stage_parser(
        sub,
        "evaluate",
        EvaluateConfig,
        "harmful score and task accuracy of a run or model",
        "Generate answers to harmful prompts and task rows; judge them; write metrics.json and per-sample JSONL. "
        "With --rejudge EVAL_DIR --judge NAME: score the saved answers of an evaluation with another judge instead (nothing is generated).",
    )
    p.add_argument(
        "--rejudge",
        metavar="EVAL_DIR",
        help="score the saved answers of this evaluation with --judge NAME and add its HS to the evaluation's files (no generation; other options are ignored)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse to score rows the model was trained on (alignment, attack or Lisa rows; the overlap "
        "is checked and reported in metrics.json 'leaks' either way)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "run",
        help="run an experiment grid (cached, resumable)",
        description="Expand an experiment file into align -> finetune -> repair -> evaluate stages, run what is not done, and write the report.",
    )
    p.add_argument("experiment", metavar="EXPERIMENT.yaml")
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan (which stages run, which are cached) and stop"
    )
    p.add_argument("--data-dir", help="folder with the local data files (overrides the file)")
    p.add_argument(
        "--output",
        metavar="RUNS_DIR",
        help="runs folder (overrides the file's 'output'; default runs/<name>)",
    )
    p.add_argument(
        "--num-processes",
        type=int,
        default=1,
        help="launch each training stage on N processes with Accelerate (gloo on CPU, NCCL on GPU)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="evaluations refuse to score rows their model was trained on (see 'safeft evaluate --strict')",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="run up to N independent stages at once, each in its own process on its own GPUs "
        "(CUDA_VISIBLE_DEVICES) or share of the CPU threads; a failed stage skips only its descendants",
    )
    p.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        help="run each stage as a submitit job: 'slurm' submits the whole grid (parents as afterok "
        "dependencies), 'local' runs the jobs on this machine; resources from the file's launcher: section",
    )
    group = p.add_argument_group("job resources (--launcher; override the experiment's launcher: section)")
    group.add_argument("--partition", help="Slurm partition")
    group.add_argument("--gpus-per-stage", type=int, help="GPUs of each stage's job")
    group.add_argument("--cpus-per-stage", type=int, help="CPU cores of each stage's job")
    group.add_argument("--time-min", type=int, help="time limit of each stage's job, in minutes")
    group.add_argument("--mem-gb", type=float, help="memory of each stage's job, in GB")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "report",
        help="results table, system table and plots of a runs folder",
        description="Write results.md/.csv, system.md/.csv and plots for an experiment's runs folder.",
    )
    p.add_argument("runs_dir", metavar="RUNS_DIR")
    p.add_argument(
        "--fa-tolerance",
        type=float,
        default=5.0,
        metavar="POINTS",
        help="worst case over the attacks: an attack counts if its fine-tune accuracy is at most this many points below the best of that method's attacks (default 5)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "compare",
        help="prompt-by-prompt HS comparison of evaluations (exact McNemar test)",
        description="Compare each evaluation run directory with a reference one on the harmful prompts both "
        "answered: HS of each, prompts flagged for only one of the two, exact McNemar p-value. Works across "
        "experiments (`safeft report` does it within one, against SFT).",
    )
    p.add_argument("reference", metavar="REFERENCE_EVAL_DIR")
    p.add_argument("runs", metavar="EVAL_DIR", nargs="+")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "quickstart",
        help="a small complete experiment on the embedded defaults (<= 10 min on 2 CPU cores)",
        description="SFT vs Booster on smollm2-135m, one attack, CPU judge; prints the results table.",
    )
    p.add_argument("--output", default="runs/quickstart", help="runs folder")
    p.add_argument(
        "--data-dir",
        help="folder with the real data files (default: $SAFEFT_DATA_DIR; without data, a built-in demo set)",
    )
    p.add_argument(
        "--demo", action="store_true", help="use the built-in demo data even when real data is available"
    )
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser(
        "judge",
        help="train the CPU judge; measure any judge against human labels",
        description="Train the CPU judge shipped with safeft, or measure judges against labelled pairs.",
    )
    judge_sub = p.add_subparsers(dest="judge_command", metavar="ACTION", required=True)
    q = judge_sub.add_parser(
        "train",
        help="retrain the CPU judge from labelled QA pairs",
        description="Fine-tune the MiniLM encoder's top layers on the labelled QA pairs of the data folder (split by "
        "prompt) and refusals (the response head), fit the request-harm head on the labelled requests, choose the "
        "request weight and the threshold on the validation pairs, write the compact judge; prints its metrics.",
    )
    q.add_argument(
        "--output",
        required=True,
        help="folder for the judge (copy it to src/safeft/assets/cpu_judge to ship it)",
    )
    q.add_argument("--data-dir", help="folder with the local data files (default: $SAFEFT_DATA_DIR)")
    q.add_argument(
        "--train-layers", type=int, default=4, help="top MiniLM layers fine-tuned (0-6; the rest frozen)"
    )
    q.add_argument("--epochs", type=int, default=2, help="passes over the training pairs")
    q.add_argument(
        "--harmless-answer-rows",
        type=int,
        default=0,
        help="answered harmless requests (AlpacaEval) added as harmless pairs (0 in the shipped judge)",
    )
    q.add_argument(
        "--no-request-head",
        dest="request_head",
        action="store_false",
        help="train the response head alone (the v2 recipe); by default a request-harm head is trained too "
        "and the score is P(answer harmful) x P(request harmful)^w",
    )
    q.add_argument(
        "--response-head-from",
        metavar="DIR",
        help="take the response head (overlay.safetensors) of this judge folder instead of training it "
        "(45 min); e.g. src/safeft/assets/cpu_judge, which this recipe reproduces byte for byte",
    )
    q.add_argument(
        "--embedding-cache",
        metavar="DIR",
        default="~/.cache/safeft/request_embeddings",
        help="folder where the request embeddings are kept between trainings (same texts, base and threads: same "
        "numbers); '' to recompute",
    )
    q.add_argument("--seed", type=int, default=0, help="training seed (the split by prompt is fixed)")
    q.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; part of the recipe: the same seed and thread count give the same judge",
    )
    q.add_argument(
        "--validation-only",
        action="store_true",
        help="measure on the validation pairs only (to compare recipes without looking at the test sets)",
    )
    q.set_defaults(func=cmd_judge_train)
    q = judge_sub.add_parser(
        "eval",
        help="agreement of judges with human labels (accuracy, precision, recall, F1, κ, 95% intervals)",
        description="Score labelled (prompt, response, harmful?) pairs with each judge and compare with the labels: "
        "accuracy, precision, recall, F1 (harmful = positive) and Cohen's κ, each with a 95% bootstrap interval.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    q.add_argument(
        "--data", action="append", metavar="FILE", help="a labelled JSONL/JSON/CSV file (repeatable)"
    )
    q.add_argument(
        "--heldout",
        action="append",
        metavar="NAME",
        help="one of the CPU judge's held-out sets, rebuilt from --data-dir: heldout (held-out prompts of "
        "BeaverTails + PKU-SafeRLHF) or eval_prompts (pairs of the 1,000 evaluation prompts) (repeatable)",
    )
    q.add_argument("--data-dir", help="data folder for --heldout (default: $SAFEFT_DATA_DIR)")
    q.add_argument(
        "--judge",
        action="append",
        metavar="NAME",
        help="judge to evaluate (repeatable; default: cpu and keyword)",
    )
    q.add_argument("--prompt-field", default="prompt", help="field holding the request")
    q.add_argument("--response-field", default="response", help="field holding the answer")
    q.add_argument(
        "--label-field",
        default=None,
        help="field holding the label (default: 'harmful' if present, else 'is_safe'); values true/false, 1/0, yes/no, harmful/unharmful, unsafe/safe",
    )
    q.add_argument(
        "--label-means-safe",
        action="store_true",
        help="the label field is true for a harmless pair (implied for a field named is_safe)",
    )
    q.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the intervals")
    q.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    q.add_argument("--output", metavar="FILE.json", help="also write the results as JSON")
    q.set_defaults(func=cmd_judge_eval)

    p = sub.add_parser(
        "bench",
        help="time and memory of every method and of evaluation",
        description="Measure, in one run, seconds per step and peak memory of each method (ratios to SFT) and generation/judge throughput; writes docs/benchmarks.md.",
    )
    p.add_argument(
        "--model", default=None, help="model to benchmark (default smollm2-135m; smoke tiny-random-llama)"
    )
    p.add_argument("--smoke", action="store_true", help="tiny-random-llama, few repetitions: seconds, for CI")
    p.add_argument("--output", default="docs/benchmarks.md", help="Markdown file to write")
    p.add_argument(
        "--data-dir",
        default=None,
        help="data folder: BeaverTails evaluation prompts for generation (default $SAFEFT_DATA_DIR, else templated prompts)",
    )
    p.add_argument(
        "--quickstart", action="store_true", help="also time `safeft quickstart` end to end (minutes)"
    )
    p.add_argument("--reps", type=int, default=None, help="timed rounds per precision (default 3; smoke 2)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per row (default 64; smoke 16)")
    p.add_argument(
        "--precisions",
        default=None,
        help="comma-separated: fp32,bf16 (default both; smoke fp32); 'none': no training benchmark (evaluation only)",
    )
    p.add_argument(
        "--methods", default=None, help="comma-separated method names (default all; must include sft)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's choice; 1 is steadier on a loaded machine)",
    )
    p.add_argument(
        "--compare-full-logits",
        default=None,
        metavar="METHODS",
        help="comma-separated methods to step a second time with the loss from the full logits "
        "(before/after of the deferred output layer, in the same rounds)",
    )
    p.add_argument(
        "--reference",
        default=None,
        metavar="PATH[,PATH]",
        help="local checkouts of the papers' repositories (e.g. git-disl/Booster, Lslland/T-Vaccine): step their "
        "trainers side by side with safeft's for the same methods (only that is run) and write that section of "
        "--output plus <output>.reference.json",
    )
    p.add_argument(
        "--compare",
        default=None,
        metavar="VARIANT[,VARIANT]",
        help="with --reference: also step each method these ways in the same rounds: full-logits, deferred "
        "(the loss's output layer forced), adamw-foreach, adamw-forloop (instead of the fused AdamW), checkpointed "
        "(train.checkpointing: on)",
    )
    p.set_defaults(func=cmd_bench)
    return parser


def _negative_numbers_attached(argv: list[str]) -> list[str]:
    """`--opt -1e-3` -> `--opt=-1e-3`: argparse takes a value like -1e-3 for an option and stops.

    The value then reaches the config's own check, which says what range the option accepts.
    """
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and token.startswith("-"):
            try:
                float(token)
            except ValueError:
                pass
            else:
                out[-1] = f"{out[-1]}={token}"
                continue
        out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    if not debug:
        # Deprecation notices of transformers/PEFT/torch internals are for safeft's developers, not its
        # users (the test suite shows them); --debug shows them too.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        parser = build_parser()
        args = parser.parse_args(_negative_numbers_attached(argv))
        if getattr(args, "num_processes", 1) < 1:
            raise SafeftError(f"--num-processes: got {args.num_processes}, expected an integer >= 1")
        from safeft.launch import inside_launched_process, launch

        if (
            args.command in ("align", "finetune", "evaluate")
            and args.num_processes > 1
            and not inside_launched_process()
        ):
            return launch(argv, args.num_processes)
        if int(os.environ.get("RANK", "0")) != 0:
            # One copy of the INFO log and of the printed summary: rank 0's (errors still show).
            logging.getLogger("safeft").setLevel(logging.WARNING)
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except SafeftError as e:
        if debug:
            raise
        print(f"safeft: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("safeft: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
