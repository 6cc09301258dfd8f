"""Experiments: one YAML file -> a grid of align / finetune / evaluate stages -> cached, resumable runs.

An experiment file holds the shared settings of each stage (`base.align`, `base.finetune`,
`base.repair`, `base.evaluate`: keys of that stage's config file) and the axes of the grid
(`grid.methods`, `grid.poison_ratios`, `grid.tasks`, `grid.seeds`, optional `grid.attack` sweeps and
`grid.repairs`). `expand` turns it into stages, each with a fully resolved stage config and its own
run directory

    <output>/align/<method>-s<seed>-<hash>                      one per method x seed
    <output>/finetune/<method>-s<seed>-<task>-p<p>[-...]-<hash>  one per attack of it
    <output>/repair/<attack's name>-<repair>-<hash>             one per attack x repair method
    <output>/evaluate/<same name as the evaluated run>-<hash>

where `<hash>` is the stage config's fingerprint. A finetune config names its alignment run's
folder, so one alignment serves every poison ratio and task, and any change upstream gives new
folders downstream. `plan` marks each stage cached (its manifest says done with the same
fingerprint) or to run; `run_experiment` runs the rest in dependency order. A finished folder of
the same stage under an older fingerprint rule (same name, another hash) is adopted: renamed to
today's name, with a link at the old name for the paths other runs recorded. Killing it at any
moment is safe: a rerun skips finished stages and the interrupted one resumes from its newest
checkpoint (the stages do that themselves, see `safeft.stages.runs`).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safeft.config import Config, deep_merge, option
from safeft.errors import ConfigError, SafeftError
from safeft.io import write_json
from safeft.methods import METHODS
from safeft.pipeline.report import INDEX_FILE, NO_DEFENSE  # the index the report reads; the undefended row
from safeft.repair import NO_REPAIR, REPAIRS

FINETUNE_METHOD_NAMES = tuple(n for n, spec in METHODS.items() if spec.runs_in("finetune"))

log = logging.getLogger("safeft")

PLACEHOLDER_OUTPUT = "<set by the experiment>"

# Keys the grid sets in each stage's config: giving them in `base.<stage>` would be silently overridden.
GRID_KEYS = {
    "align": ("output", "method", "data_dir"),
    "finetune": ("output", "from_run", "model", "task", "poison_ratio", "data_dir"),
    "repair": ("output", "run", "method", "data_dir"),
    "evaluate": ("output", "run", "model", "task", "data_dir"),
}

# grid.attack axis -> (path of the key in the finetune config, short tag in folder names)
ATTACK_AXES = {
    "learning_rate": (("train", "learning_rate"), "lr"),
    "epochs": (("train", "epochs"), "ep"),
    "max_steps": (("train", "max_steps"), "steps"),
    "samples": (("samples",), "n"),
    "adapter": (("adapter",), ""),
}


@dataclass
class BaseSettings(Config):
    """Settings shared by all stages of one kind (keys of that stage's config file)"""

    align: dict[str, Any] = option(
        default_factory=dict,
        help="align config keys (see 'safeft align --help'); the grid sets method, train.seed and output",
    )
    finetune: dict[str, Any] = option(
        default_factory=dict,
        help="finetune config keys; the grid sets from_run/model, task, poison_ratio, train.seed, output and the attack axes",
    )
    repair: dict[str, Any] = option(
        default_factory=dict,
        help="repair config keys (see 'safeft repair --help'); the grid sets run, method and output",
    )
    evaluate: dict[str, Any] = option(
        default_factory=dict, help="evaluate config keys; the grid sets run/model, task and output"
    )

    def check(self) -> list[str]:
        return [
            f"{kind}: got {getattr(self, kind)!r}, expected a mapping of {kind} config keys"
            for kind in GRID_KEYS
            if not isinstance(getattr(self, kind), dict)
        ]

    def grid_key_problems(self) -> list[str]:
        """Keys the grid sets: a value given here would be silently overridden."""
        problems = []
        for kind, owned in GRID_KEYS.items():
            value = getattr(self, kind)
            for key in owned:
                if key in value:
                    where = "the top-level data_dir" if key == "data_dir" else "the grid"
                    problems.append(
                        f"base.{kind}.{key}: got {value[key]!r}, but {where} sets it; remove it here"
                    )
            if isinstance(value.get("train"), dict) and "seed" in value["train"]:
                problems.append(
                    f"base.{kind}.train.seed: got {value['train']['seed']!r}, but grid.seeds sets it; remove it here"
                )
        return problems


@dataclass
class AttackAxes(Config):
    """Sweeps of the attack's settings (an empty list keeps the base.finetune value)"""

    learning_rate: list[float] = option(
        default_factory=list, help="attack learning rates (finetune train.learning_rate)", range=(0, 1)
    )
    epochs: list[float] = option(
        default_factory=list,
        help="attack epochs (finetune train.epochs; needs train.max_steps -1)",
        range=(0, None),
    )
    max_steps: list[int] = option(
        default_factory=list, help="attack optimizer steps (finetune train.max_steps)", range=(-1, None)
    )
    samples: list[int] = option(
        default_factory=list, help="rows in the poisoned mix, n (finetune samples)", range=(1, None)
    )
    adapter: list[str] = option(
        default_factory=list,
        help="adapter modes of the attack (finetune adapter)",
        choices=("auto", "continue", "new"),
    )

    def swept(self) -> dict[str, list[Any]]:
        return {name: getattr(self, name) for name in ATTACK_AXES if getattr(self, name)}


@dataclass
class Grid(Config):
    """The axes of the experiment: every combination is run"""

    methods: list[str] = option(
        default_factory=lambda: ["sft"], help="alignment methods (see 'safeft align --help' for the names)"
    )
    poison_ratios: list[float] = option(
        default_factory=lambda: [0.1], help="fractions of harmful rows in the attack, p", range=(0, 1)
    )
    tasks: list[str] = option(
        default_factory=lambda: ["sst2"], help="benign tasks of the attack (and of fine-tune accuracy)"
    )
    seeds: list[int] = option(
        default_factory=lambda: [42], help="training seeds (alignment and attack)", range=(0, None)
    )
    attack: AttackAxes = field(default_factory=AttackAxes)
    method_options: dict[str, Any] = option(
        default_factory=dict,
        help="sweeps of a defense's own hyper-parameters: {method: {field: [values]}}, e.g. "
        "{booster: {simulated_step_size: [0.1, 1.0]}}; every combination is its own alignment (and report row)",
    )
    repairs: list[str] = option(
        default_factory=lambda: [NO_REPAIR],
        help="post-fine-tuning repairs of every attack: 'none' (evaluate the attacked model as it is) and/or "
        "repair methods (see 'safeft repair --help'); each repaired attack is its own report row, "
        "'<method> + <repair>'. SafeLoRA needs an alignment, so it skips the no-defense row",
        choices=(NO_REPAIR, *REPAIRS),
    )
    finetune_methods: list[str] = option(
        default_factory=list,
        help="fine-tuning methods of every attack: sft and/or fine-tuning-stage defenses (lisa, panacea); each "
        "defense is its own report row '<method> + <defense>'. Empty: base.finetune's method",
        choices=FINETUNE_METHOD_NAMES,
    )
    include_no_defense: bool = option(True, "also attack the non-aligned base model (the 'no defense' row)")
    include_unattacked: bool = option(
        True, "also evaluate every aligned model before any attack (the 'aligned, not attacked' column)"
    )

    def check(self) -> list[str]:
        problems = []
        for key in ("poison_ratios", "tasks", "seeds", "repairs"):
            if not getattr(self, key):
                problems.append(f"{key}: got an empty list, expected at least one value")
        if not self.methods and not self.include_no_defense:
            problems.append("methods: got an empty list with include_no_defense false: nothing to run")
        for key in ("methods", "poison_ratios", "tasks", "seeds", "repairs", "finetune_methods"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                problems.append(f"{key}: got duplicate values {values!r}; list each value once")
        problems += method_option_problems(self.method_options, self.methods)
        return problems


@dataclass
class LauncherSettings(Config):
    """Resources of each stage's job under `safeft run --launcher slurm|local` (flags override them)"""

    partition: str | None = option(None, "Slurm partition (default: the cluster's default partition)")
    gpus_per_stage: int = option(0, "GPUs of each stage's job (0: a CPU job)", range=(0, None))
    cpus_per_stage: int | None = option(
        None, "CPU cores of each stage's job (default: the cluster's default)", range=(1, None)
    )
    time_min: int = option(
        240,
        "time limit of each stage's job, in minutes (a job stopped at its limit is requeued and resumes from its checkpoint)",
        range=(1, None),
    )
    mem_gb: float | None = option(
        None, "memory of each stage's job, in GB (default: the cluster's default)", range=(1, None)
    )
    slurm_extra: dict[str, Any] = option(
        default_factory=dict,
        help="further sbatch options, e.g. {account: my_lab, qos: normal, constraint: a100}",
    )


@dataclass
class ExperimentConfig(Config):
    """An experiment: shared stage settings and the grid of runs"""

    name: str = option(None, "experiment name (the default runs folder is runs/<name>)")
    output: str | None = option(None, "runs folder (default: runs/<name>)")
    data_dir: str | None = option(
        None, "folder with the local data files, for every stage (default: $SAFEFT_DATA_DIR, then the Hub)"
    )
    base: BaseSettings = field(default_factory=BaseSettings)
    grid: Grid = field(default_factory=Grid)
    launcher: LauncherSettings = field(default_factory=LauncherSettings)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ExperimentConfig:
        # An explicitly empty grid is a forgotten one, not a request for the default axes.
        problems = []
        if isinstance(data, dict) and "grid" in data and not data["grid"]:
            problems.append(
                f"grid: got {data['grid']!r}, expected the axes of the experiment (at least methods)"
            )
        try:
            exp = super().from_dict(data, source)
        except ConfigError as e:
            raise ConfigError(problems + e.problems, source) from None
        if problems:
            raise ConfigError(problems, source)
        return exp

    def check(self) -> list[str]:
        if not self.name:
            return ["name: required (a short name for the experiment, e.g. booster_cpu_repro)"]
        if any(c in self.name for c in "/\\ "):
            return [f"name: got {self.name!r}, expected no slashes or spaces (it names a folder)"]
        return []

    @property
    def runs_dir(self) -> Path:
        return Path(self.output or Path("runs") / self.name)


@dataclass
class Stage:
    """One stage of an experiment: what it runs, where, and after which stages."""

    kind: str  # align, finetune or evaluate
    config: Config  # the fully resolved stage config (its `output` is `path`)
    path: Path  # its run directory
    depends_on: list[str]  # ids of the stages that must be done first
    labels: dict[str, Any]  # its place in the grid: method, seed, task, poison_ratio, attack, attacked
    cached: bool | None = None  # set by `plan`
    legacy_path: Path | None = None  # set by `plan`: its finished folder under an older fingerprint rule

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.path.name}"


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    return ExperimentConfig.load(path, overrides)


def _num(value: float) -> str:
    return f"{value:g}"


def _attack_combinations(axes: AttackAxes) -> list[dict[str, Any]]:
    swept = axes.swept()
    return [dict(zip(swept, values, strict=True)) for values in itertools.product(*swept.values())]


def _attack_overrides(attack: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The finetune-config keys an attack-axis combination sets, and its tag for folder names."""
    overrides: dict[str, Any] = {}
    tag = ""
    for axis, value in attack.items():
        keys, short = ATTACK_AXES[axis]
        node = overrides
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
        tag += f"-{short}{value if isinstance(value, str) else _num(value)}"
    return overrides, tag


def method_option_problems(sweeps: Any, methods: list[str]) -> list[str]:
    """What is wrong with `grid.method_options` (field names are checked against each method's config)."""
    if not isinstance(sweeps, dict):
        return [f"method_options: got {sweeps!r}, expected a mapping {{method: {{field: [values]}}}}"]
    problems = []
    for method, fields in sweeps.items():
        if method not in methods:
            problems.append(f"method_options.{method}: not among grid.methods ({', '.join(methods)})")
            continue
        if not isinstance(fields, dict) or not fields:
            problems.append(
                f"method_options.{method}: got {fields!r}, expected a mapping {{field: [values]}}"
            )
            continue
        known = [f.name for f in dataclasses.fields(METHODS[method].config_cls)]
        for name, values in fields.items():
            if name not in known:
                problems.append(
                    f"method_options.{method}.{name}: not a field of {method} (fields: {', '.join(known)})"
                )
            elif not isinstance(values, list) or not values:
                problems.append(
                    f"method_options.{method}.{name}: got {values!r}, expected a non-empty list of values"
                )
    return problems


def _method_variants(method: str, sweeps: dict[str, Any]) -> list[tuple[dict[str, Any], str, str]]:
    """(option overrides, folder-name tag, report label) of every combination of a method's swept options."""
    fields = sweeps.get(method) or {}
    variants = []
    for values in itertools.product(*fields.values()):
        options = dict(zip(fields, values, strict=True))
        shown = [f"{k}={v if isinstance(v, str) else _num(v)}" for k, v in options.items()]
        tag = "".join(f"-{k}{v if isinstance(v, str) else _num(v)}" for k, v in options.items())
        variants.append((options, tag, f"{method} ({', '.join(shown)})" if shown else method))
    return variants


class _Expander:
    """Builds the stages of one experiment, collecting every config problem instead of stopping at the first."""

    def __init__(self, exp: ExperimentConfig):
        from safeft.stages.align import AlignConfig
        from safeft.stages.evaluate import EvaluateConfig
        from safeft.stages.finetune import FinetuneConfig
        from safeft.stages.repair import RepairConfig

        self.exp = exp
        self.classes = {
            "align": AlignConfig,
            "finetune": FinetuneConfig,
            "repair": RepairConfig,
            "evaluate": EvaluateConfig,
        }
        self.stages: dict[str, Stage] = {}
        self.problems: dict[tuple[str, str], list[str]] = {}  # (kind, problem) -> stage names

    def make(
        self, kind: str, name: str, overrides: dict[str, Any], labels: dict[str, Any], depends_on: list[Stage]
    ) -> Stage | None:
        from safeft.stages.runs import config_fingerprint

        data = deep_merge(getattr(self.exp.base, kind), overrides)
        data["output"] = PLACEHOLDER_OUTPUT
        if self.exp.data_dir is not None:
            data["data_dir"] = self.exp.data_dir
        try:
            cfg = self.classes[kind].from_dict(data, source=f"{kind} stage {name}")
        except ConfigError as e:
            for p in e.problems:
                self.problems.setdefault((kind, p), []).append(name)
            return None
        # The fingerprint ignores `output`, so the folder can be named after it before it is set.
        path = self.exp.runs_dir / kind / f"{name}-{config_fingerprint(cfg)[:8]}"
        stage = Stage(
            kind, dataclasses.replace(cfg, output=str(path)), path, [d.id for d in depends_on], labels
        )
        self.stages.setdefault(stage.id, stage)
        return stage

    def evaluate(self, target: Stage | str, name: str, labels: dict[str, Any], task: str) -> None:
        source = {"run": str(target.path)} if isinstance(target, Stage) else {"model": target}
        self.make(
            "evaluate", name, {**source, "task": task}, labels, [target] if isinstance(target, Stage) else []
        )

    def attacks(self, parent: Stage | str, method: str, seed: int, short: str | None = None) -> None:
        """Every attack (task x poison ratio x attack sweep) of one aligned model (or of the bare model), and its evaluation.

        `method` is the report label; `short` the folder-name prefix (default: the method's name).
        """
        short = short or ("none" if method == NO_DEFENSE else method)
        source = (
            {"from_run": str(parent.path), "model": None}
            if isinstance(parent, Stage)
            else {"from_run": None, "model": parent}
        )
        grid = self.exp.grid
        # An empty finetune_methods axis keeps base.finetune's method (and the folder names without a tag).
        finetune_methods: list[str | None] = list(grid.finetune_methods) or [None]
        for task, ratio, attack, finetune_method in itertools.product(
            grid.tasks, grid.poison_ratios, _attack_combinations(grid.attack), finetune_methods
        ):
            overrides, tag = _attack_overrides(attack)
            overrides = deep_merge(
                overrides, {**source, "task": task, "poison_ratio": ratio, "train": {"seed": seed}}
            )
            label = method
            if finetune_method is not None:
                overrides["method"] = finetune_method
                if (
                    METHODS[finetune_method].stage == "finetune"
                ):  # a fine-tuning-stage defense: its own row and folder
                    tag += f"-{finetune_method}"
                    label = f"{method} + {finetune_method}"
            name = f"{short}-s{seed}-{task}-p{_num(ratio)}{tag}"
            labels = {
                "method": label,
                "seed": seed,
                "task": task,
                "poison_ratio": ratio,
                "attack": attack,
                "attacked": True,
            }
            ft = self.make("finetune", name, overrides, labels, [parent] if isinstance(parent, Stage) else [])
            if ft is not None:
                self.repairs(ft, name, labels, task, aligned=isinstance(parent, Stage))

    def repairs(self, ft: Stage, name: str, labels: dict[str, Any], task: str, aligned: bool) -> None:
        """The evaluation of an attack as it is ('none') and of each repair of it."""
        for repair in self.exp.grid.repairs:
            if repair == NO_REPAIR:
                self.evaluate(ft, name, labels, task)
                continue
            if REPAIRS[repair].needs_alignment and not aligned:
                continue  # SafeLoRA projects onto the alignment's change: the bare model has none
            repaired_labels = {**labels, "method": f"{labels['method']} + {repair}", "repair": repair}
            stage = self.make(
                "repair", f"{name}-{repair}", {"run": str(ft.path), "method": repair}, repaired_labels, [ft]
            )
            if stage is not None:
                self.evaluate(stage, f"{name}-{repair}", repaired_labels, task)

    def expand(self) -> list[Stage]:
        grid = self.exp.grid
        if grid.include_no_defense:
            base_model = self.base_model()
            if grid.include_unattacked:
                for task in grid.tasks:
                    self.evaluate(
                        base_model,
                        f"none-unattacked-{task}",
                        {
                            "method": NO_DEFENSE,
                            "seed": None,
                            "task": task,
                            "poison_ratio": None,
                            "attack": {},
                            "attacked": False,
                        },
                        task,
                    )
            for seed in grid.seeds:
                self.attacks(base_model, NO_DEFENSE, seed)
        sweeps = grid.method_options if isinstance(grid.method_options, dict) else {}
        for method, seed in itertools.product(grid.methods, grid.seeds):
            for options, tag, label in _method_variants(method, sweeps):
                overrides: dict[str, Any] = {"method": method, "train": {"seed": seed}}
                if options:
                    overrides["methods"] = {method.replace("-", "_"): options}
                name = f"{method}{tag}-s{seed}"
                align = self.make("align", name, overrides, {"method": label, "seed": seed}, [])
                if align is None:
                    continue
                if grid.include_unattacked:
                    for task in grid.tasks:
                        labels = {
                            "method": label,
                            "seed": seed,
                            "task": task,
                            "poison_ratio": None,
                            "attack": {},
                            "attacked": False,
                        }
                        self.evaluate(align, f"{name}-unattacked-{task}", labels, task)
                self.attacks(align, label, seed, short=f"{method}{tag}")
        self.check_sweeps()
        if self.problems or self.exp.base.grid_key_problems():
            lines = self.exp.base.grid_key_problems()
            for (kind, problem), names in self.problems.items():
                more = f" and {len(names) - 1} more" if len(names) > 1 else ""
                lines.append(f"{kind} stage {names[0]}{more}: {problem}")
            raise ConfigError(lines, source=f"experiment {self.exp.name}")
        return list(self.stages.values())

    def base_model(self) -> str:
        """The model the alignment stage starts from: what the 'no defense' row attacks."""
        model = self.exp.base.align.get("model")
        if model:
            return str(model)
        return next(f.default for f in dataclasses.fields(self.classes["align"]) if f.name == "model")

    def check_sweeps(self) -> None:
        """Axes that would silently do nothing."""
        if not self.exp.grid.attack.epochs:
            return
        for st in self.stages.values():
            if st.kind == "finetune" and st.config.train.max_steps > 0:  # type: ignore[attr-defined]
                problem = f"grid.attack.epochs: has no effect while base.finetune.train.max_steps = {st.config.train.max_steps} > 0; set max_steps: -1"  # type: ignore[attr-defined]
                self.problems.setdefault(("finetune", problem), []).append(st.path.name)


def expand(exp: ExperimentConfig) -> list[Stage]:
    """The experiment's stages in an order that respects dependencies (each parent before its children).

    Raises ConfigError listing every problem of every stage config (each distinct problem once).
    """
    return _Expander(exp).expand()


def plan(stages: list[Stage]) -> list[Stage]:
    """Mark each stage cached (manifest done with the same config fingerprint) or to run.

    A stage whose folder does not exist may have finished under an older fingerprint rule, in a
    folder of the same name with another hash: `legacy_path` records it (adopted by `adopt_legacy_run`).
    """
    from safeft.stages.runs import RunDir

    moved: dict[str, str] = {}  # legacy folder -> today's, for the children that name it as their parent
    for st in stages:
        st.legacy_path = None if st.path.exists() else _legacy_folder(st, moved)
        if st.legacy_path is not None:
            moved[str(st.legacy_path)] = str(st.path)
            st.cached = True
        else:
            st.cached = RunDir(st.path).is_done_for(st.config, moved)
    return stages


def _legacy_folder(stage: Stage, moved: dict[str, str]) -> Path | None:
    """A finished folder `<name>-<other hash>` whose saved config has this stage's fingerprint today."""
    from safeft.stages.runs import RunDir

    name = stage.path.name.rsplit("-", 1)[0]
    pattern = re.compile(re.escape(name) + r"-[0-9a-f]{8}")
    if not stage.path.parent.is_dir():
        return None
    for candidate in sorted(stage.path.parent.iterdir()):
        if candidate.is_symlink() or not pattern.fullmatch(candidate.name):
            continue
        if RunDir(candidate).is_done_for(stage.config, moved):
            return candidate
    return None


def adopt_legacy_run(stage: Stage) -> None:
    """Rename a stage's legacy folder to today's name, leave a link at the old name (the weights
    paths and parent paths other manifests recorded go through it) and record today's fingerprint."""
    from safeft.stages.runs import FINGERPRINT_VERSION, RunDir, config_fingerprint

    legacy = stage.legacy_path
    if legacy is None or stage.path.exists():
        return
    legacy.rename(stage.path)
    os.symlink(stage.path.name, legacy, target_is_directory=True)
    run = RunDir.open(stage.path)
    run.write_manifest(
        legacy_fingerprint=run.manifest.get("fingerprint"),
        renamed_from=legacy.name,
        fingerprint=config_fingerprint(stage.config),
        fingerprint_version=FINGERPRINT_VERSION,
    )
    log.info("adopted %s as %s (finished under an older fingerprint rule)", legacy, stage.path)
    stage.legacy_path = None


def _status(stage: Stage) -> str:
    if stage.legacy_path is not None:
        return f"cached as {stage.legacy_path.name}"
    if stage.cached:
        return "cached"
    from safeft.stages.runs import RunDir

    checkpoint = RunDir(stage.path).latest_checkpoint()
    return f"resume from {Path(checkpoint).name}" if checkpoint else "run"


def format_plan(exp: ExperimentConfig, stages: list[Stage]) -> str:
    to_run = sum(not s.cached for s in stages)
    lines = [
        f"experiment {exp.name}: {len(stages)} stages, {len(stages) - to_run} cached, {to_run} to run (runs folder: {exp.runs_dir})"
    ]
    width = len(str(len(stages)))
    for i, st in enumerate(stages, 1):
        after = f"  after {', '.join(st.depends_on)}" if st.depends_on else ""
        lines.append(f"  {i:>{width}}/{len(stages)}  {_status(st):<22} {st.id}{after}")
    return "\n".join(lines)


def write_index(exp: ExperimentConfig, stages: list[Stage]) -> Path:
    """`<runs>/experiment.json`: the experiment and each stage's id, grid labels and dependencies (read by the report)."""
    path = exp.runs_dir / INDEX_FILE
    write_json(
        path,
        {
            "name": exp.name,
            "experiment": exp.to_dict(),
            "stages": [
                {"id": s.id, "kind": s.kind, "labels": s.labels, "depends_on": s.depends_on} for s in stages
            ],
        },
    )
    return path


def run_stage(stage: Stage, num_processes: int = 1, strict: bool = False) -> bool:
    """Run one stage unless it is done: in this process, or on `num_processes` processes launched with torchrun.

    `strict`: evaluations refuse to score rows their model was trained on. A repair is one pass in
    one process. A stage whose run folder another process holds (a second `safeft run` or a Slurm
    job sharing the runs folder: the folder's `run_lock`) is waited for, then found done instead of
    run again. Returns whether it ran here.
    """
    from safeft.stages.runs import RunDir, RunInUse, config_fingerprint, wait_for_run_lock

    while True:
        wait_for_run_lock(stage.path)
        if RunDir(stage.path).is_done(config_fingerprint(stage.config)):
            log.info("%s: done by another process meanwhile", stage.id)
            return False
        try:
            _run_stage_here(stage, num_processes, strict)
            return True
        except RunInUse:  # another process claimed it between the wait and the claim: wait for it
            continue


def _run_stage_here(stage: Stage, num_processes: int, strict: bool) -> None:
    if num_processes > 1 and stage.kind != "repair":
        from safeft.launch import launch

        # The launched processes read the resolved config from a file beside the run directory (the
        # folder itself is the stage's to claim).
        config_path = stage.path.parent / f".{stage.path.name}.config.yaml"
        stage.config.save(config_path)
        argv = [stage.kind, "--config", str(config_path)]
        if strict and stage.kind == "evaluate":
            argv.append("--strict")
        try:
            code = launch(argv, num_processes)
        finally:
            config_path.unlink(missing_ok=True)
        if code != 0:
            raise SafeftError(
                f"stage {stage.id} failed with exit code {code}; see {stage.path / 'log.txt'}. Rerun the same command to resume it."
            )
        return
    if stage.kind == "align":
        from safeft.stages.align import run_align

        run_align(stage.config)  # type: ignore[arg-type]
    elif stage.kind == "finetune":
        from safeft.stages.finetune import run_finetune

        run_finetune(stage.config)  # type: ignore[arg-type]
    elif stage.kind == "repair":
        from safeft.stages.repair import run_repair

        run_repair(stage.config)  # type: ignore[arg-type]
    else:
        from safeft.stages.evaluate import run_evaluate

        run_evaluate(stage.config, strict=strict)  # type: ignore[arg-type]


def execute(
    exp: ExperimentConfig,
    *,
    dry_run: bool = False,
    num_processes: int = 1,
    strict: bool = False,
    jobs: int = 1,
    launcher: str | None = None,
) -> int:
    """Expand, plan, print or run, then write the report; returns the exit code.

    With `jobs` > 1 or a `launcher`, independent stages run concurrently (`safeft.pipeline.scheduler`);
    otherwise one after the other in this process.
    """
    if num_processes < 1:
        raise SafeftError(f"--num-processes: got {num_processes}, expected an integer >= 1")
    stages = plan(expand(exp))
    if dry_run:
        print(format_plan(exp, stages))
        return 0
    for st in stages:
        adopt_legacy_run(st)
    index = write_index(exp, stages)
    if jobs != 1 or launcher is not None:
        from safeft.pipeline.scheduler import run_grid

        code = run_grid(
            stages,
            index,
            jobs=jobs,
            launcher=launcher,
            settings=exp.launcher,
            num_processes=num_processes,
            strict=strict,
        )
        if code != 0:
            _report_so_far(exp)
            return code
        from safeft.pipeline.report import write_report

        print(write_report(exp.runs_dir))
        return 0
    total = len(stages)
    log.info(
        "experiment %s: %d stages, %d cached; runs folder %s",
        exp.name,
        total,
        sum(bool(s.cached) for s in stages),
        exp.runs_dir,
    )
    start = time.perf_counter()
    for i, st in enumerate(stages, 1):
        if st.cached:
            log.info("stage %d/%d: %s (cached, skipped)", i, total, st.id)
            continue
        log.info("stage %d/%d: %s (%s)", i, total, st.id, _status(st))
        t0 = time.perf_counter()
        try:
            ran = run_stage(st, num_processes, strict)
        except SafeftError:
            _report_so_far(exp)
            raise
        gc.collect()  # free the previous stage's model before loading the next
        if ran:
            log.info("stage %d/%d: %s done in %.0f s", i, total, st.id, time.perf_counter() - t0)
    log.info("experiment %s: all %d stages done in %.0f s", exp.name, total, time.perf_counter() - start)
    from safeft.pipeline.report import write_report

    print(write_report(exp.runs_dir))
    return 0


def _report_so_far(exp: ExperimentConfig) -> None:
    """After a failed stage: a report of the finished stages, so their numbers are not lost from view."""
    from safeft.pipeline.report import write_report

    try:
        write_report(exp.runs_dir)
        log.info("report of the finished stages written to %s", exp.runs_dir)
    except SafeftError:
        pass  # nothing finished yet


def run_experiment(
    path: str | Path,
    *,
    dry_run: bool = False,
    data_dir: str | None = None,
    output: str | None = None,
    num_processes: int = 1,
    strict: bool = False,
    jobs: int = 1,
    launcher: str | None = None,
    launcher_settings: dict[str, Any] | None = None,
) -> int:
    """`safeft run EXPERIMENT.yaml`: run (or, with dry_run, plan) every stage not already done, then report.

    `data_dir`, `output` and `launcher_settings` (keys of the `launcher:` section) override the
    file's values (the command line wins, as for every stage).
    """
    overrides: dict[str, Any] = {
        key: value for key, value in (("data_dir", data_dir), ("output", output)) if value
    }
    if launcher_settings:
        overrides["launcher"] = launcher_settings
    return execute(
        load_experiment(path, overrides),
        dry_run=dry_run,
        num_processes=num_processes,
        strict=strict,
        jobs=jobs,
        launcher=launcher,
    )
