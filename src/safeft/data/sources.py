"""Data sources by name: `load_source("beavertails-attack")` -> list[Record].

A name resolves to a file under the data folder (`data_dir`, else `$SAFEFT_DATA_DIR`; the layout of
shared/data, see shared/docs/DATA.md). Without the file, a source that exists on the Hugging Face Hub
is loaded from there; offline that fails with a message naming the file to provide. Anything else
that names an existing file or folder (JSON array, JSONL, CSV, parquet) is read directly, with the
schema of `as_source` or, by default, a generic one detected from the first row:
instruction/input/output or prompt/response.

Every record's `meta` has `source`, `path`, `row` (1-based line number in a JSONL or CSV file,
position in a JSON array, parquet file or Hub split) and, where the row has them, `is_safe`,
`label`, `category`, `idx`. Bad input raises `DataError` naming the file, row and field.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safeft.data.records import Record
from safeft.data.tasks import TASKS
from safeft.errors import DataError, SafeftError, unknown_name

DATA_DIR_ENV = "SAFEFT_DATA_DIR"
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
META_FIELDS = ("is_safe", "label", "category", "idx")  # copied from a row into Record.meta when present

Row = dict[str, Any]
Types = tuple[type, ...]
STR: Types = (str,)
OPT_STR: Types = (str, type(None))


# ----- reading files -----------------------------------------------------------------------------


def _read_jsonl(path: Path, text: str) -> Iterator[tuple[int, Row]]:
    # split on "\n" only: str.splitlines() would also break at U+2028 and friends inside JSON strings
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON object",
                path=str(path),
                row=number,
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", path=str(path), row=number)
        yield number, row


def _read_json(path: Path, text: str) -> Iterator[tuple[int, Row]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several objects: a JSON Lines file named .json
            yield from _read_jsonl(path, text)
            return
        raise DataError(
            f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})", path=str(path), row=e.lineno
        ) from None
    if not isinstance(data, list):
        raise DataError(
            f"expected a JSON array of objects (or one object per line), got a {type(data).__name__}",
            path=str(path),
        )
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", path=str(path), row=number)
        yield number, row


def _read_csv(path: Path, text: str) -> Iterator[tuple[int, Row]]:
    reader = csv.DictReader(text.splitlines(keepends=True))
    for row in reader:
        if None in row.values() or None in row:  # fewer (or more) cells than the header has columns
            missing = [k for k, v in row.items() if v is None and k is not None]
            raise DataError(
                f"the row has {len(reader.fieldnames or []) - len(missing) + len(row.get(None) or [])} cells, "
                f"the header has {len(reader.fieldnames or [])} columns"
                + (f"; no cell for {', '.join(map(repr, missing))}" if missing else ""),
                path=str(path),
                row=reader.line_num,
                field=missing[0] if missing else None,
            )
        # CSV cells are text: turn integer cells into ints so `label` columns validate like JSON.
        yield (
            reader.line_num,
            {k: (int(v) if isinstance(v, str) and v.lstrip("-").isdigit() else v) for k, v in row.items()},
        )


def _read_parquet(path: Path) -> Iterator[tuple[int, Row]]:
    from datasets import Dataset

    with open(path, "rb") as f:  # checked here: datasets would log its own error before raising
        head = f.read(4)
        f.seek(max(path.stat().st_size - 4, 0))
        tail = f.read(4)
    if head != b"PAR1" or tail != b"PAR1":
        raise DataError("is not a parquet file (it lacks parquet's PAR1 markers)", path=str(path))
    try:
        rows = Dataset.from_parquet(str(path))
    except Exception as e:  # pyarrow's errors for a file that is not parquet have no common base
        raise DataError(
            f"could not be read as parquet ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
            path=str(path),
        ) from None
    for number, row in enumerate(rows, start=1):
        yield number, dict(row)


def read_rows(path: str | Path) -> Iterator[tuple[int, Row]]:
    """(row number, row) of a data file, or of every data file of a folder (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in FILE_SUFFIXES)
        if not files:
            raise DataError(
                f"the folder holds no data file (expected {', '.join(FILE_SUFFIXES)})", path=str(path)
            )
        for f in files:
            yield from read_rows(f)
        return
    if not path.is_file():
        raise DataError("no such file", path=str(path))
    if path.suffix == ".parquet":
        yield from _read_parquet(path)
        return
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", path=str(path)) from None
    if path.suffix == ".csv":
        yield from _read_csv(path, text)
    elif path.suffix == ".json":
        yield from _read_json(path, text)
    else:  # .jsonl and anything else: JSON Lines
        yield from _read_jsonl(path, text)


def _type_names(types: Types) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _check_field(row: Row, name: str, types: Types, *, required: bool, path: str, number: int) -> None:
    if name not in row:
        if required:
            raise DataError(
                f"missing required field (the row has: {', '.join(row) or 'nothing'})",
                path=path,
                row=number,
                field=name,
            )
        return
    value = row[name]
    # bool is an int in Python; a label of `true` is still a wrong type.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise DataError(
            f"expected {_type_names(types)}, got {type(value).__name__} {value!r:.60}",
            path=path,
            row=number,
            field=name,
        )


# ----- sources -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One named data source: where its files are, what a row must hold and how a row becomes a Record."""

    name: str
    description: str
    files: dict[str, str]  # split -> file relative to the data folder; the first split is the default
    required: dict[str, Types]  # fields every row must have, with their allowed types
    convert: Callable[[Row], Record]  # row -> Record (provenance meta is added by the loader)
    optional: dict[str, Types] = field(default_factory=dict)  # fields that may be absent
    choices: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # allowed values of a field
    extra_meta: dict[str, Any] = field(default_factory=dict)  # added to every record's meta
    hub: dict[str, tuple[str, str | None, str]] = field(
        default_factory=dict
    )  # split -> (Hub id, config, Hub split)
    hub_unsafe_first: int | None = None  # from the Hub, keep only the first N rows with is_safe == False

    @property
    def default_split(self) -> str:
        return next(iter(self.files))

    def check_split(self, split: str | None) -> str:
        split = split or self.default_split
        if split not in self.files:
            raise SafeftError(
                f"data source {self.name!r} has no split {split!r}; available: {', '.join(self.files)}"
            )
        return split

    def records(self, rows: Iterable[tuple[int, Row]], path: str, limit: int | None = None) -> list[Record]:
        """Validate and convert rows; `path` names where they came from in errors and meta."""
        out: list[Record] = []
        for number, row in rows:
            if limit is not None and len(out) >= limit:
                break
            for name, types in self.required.items():
                _check_field(row, name, types, required=True, path=path, number=number)
            for name, types in self.optional.items():
                _check_field(row, name, types, required=False, path=path, number=number)
            for name, allowed in self.choices.items():
                if name in row and row[name] not in allowed:
                    raise DataError(
                        f"got {row[name]!r}, expected one of {', '.join(map(repr, allowed))}",
                        path=path,
                        row=number,
                        field=name,
                    )
            record = self.convert(row)
            meta = {"source": self.name, "path": path, "row": number, **self.extra_meta}
            meta.update({k: row[k] for k in META_FIELDS if k in row and row[k] is not None})
            meta.update(record.meta)
            out.append(Record(record.instruction, record.input, record.output, meta))
        if not out:
            raise DataError("no rows: the dataset is empty", path=path)
        return out

    def load(
        self, data_dir: str | Path | None = None, split: str | None = None, limit: int | None = None
    ) -> list[Record]:
        split = self.check_split(split)
        relative = self.files[split]
        folder = resolve_data_dir(data_dir)
        if folder is not None and (folder / relative).is_file():
            return self.records(read_rows(folder / relative), str(folder / relative), limit)
        return self._load_hub(split, relative, folder, limit)

    def _load_hub(self, split: str, relative: str, folder: Path | None, limit: int | None) -> list[Record]:
        where = (
            f"it is not in the data folder {folder}"
            if folder is not None
            else f"no data folder was given and ${DATA_DIR_ENV} is not set"
        )
        fix = f"Pass --data-dir (data_dir) or set {DATA_DIR_ENV} to a folder that holds {relative} (README.md, section Data)."
        if split not in self.hub:
            raise SafeftError(
                f"data source {self.name!r} (split {split!r}) reads the file {relative}, but {where}; it has no Hugging Face Hub copy. {fix}"
            )
        hub_id, config, hub_split = self.hub[split]
        if not hub_reachable():  # fail now rather than after ~40 s of retries
            raise SafeftError(
                f"data source {self.name!r} (split {split!r}) reads the file {relative}, but {where}; the Hugging Face "
                f"Hub ({hub_id!r}) cannot be reached from here (set HF_HUB_OFFLINE=1 to read a cached copy). {fix}"
            )
        try:
            from datasets import load_dataset

            dataset = load_dataset(hub_id, config, split=hub_split)
        except Exception as e:  # offline, unknown id, no permission: all end the same way for the user
            raise SafeftError(
                f"data source {self.name!r} (split {split!r}) reads the file {relative}, but {where}; loading {hub_id!r} from the Hugging Face Hub "
                f"failed too ({type(e).__name__}: {str(e)[:200]}). {fix}"
            ) from None
        rows: Iterable[tuple[int, Row]] = ((i, dict(r)) for i, r in enumerate(dataset, start=1))
        if self.hub_unsafe_first is not None:
            rows = [(i, r) for i, r in rows if r.get("is_safe") is False][: self.hub_unsafe_first]
        return self.records(rows, f"hf://{hub_id}/{hub_split}", limit)


@dataclass(frozen=True)
class HarmfulPool(Source):
    """The alignment-stage harmful pool (Booster, RepNoise, T-Vaccine's probe), per shared/docs/DATA.md.

    Unsafe rows of PKU-SafeRLHF's 2k subset, then unsafe rows of BeaverTails 30k_test with idx > 1712
    (after the 1,000 evaluation prompts); rows whose prompt is an evaluation prompt are dropped from
    both parts (PKU-SafeRLHF shares BeaverTails' prompt pool), as are the attack's (prompt, response)
    pairs; duplicate pairs are kept once (texts compared after `normalize_text`). So the pool is
    disjoint from the evaluation prompts and from the attack's pairs.
    """

    def load(
        self, data_dir: str | Path | None = None, split: str | None = None, limit: int | None = None
    ) -> list[Record]:
        self.check_split(split)
        eval_rows = SOURCES["beavertails-eval"].load(data_dir)
        eval_prompts = {normalize_text(r.instruction) for r in eval_rows}
        last_eval_idx = max(r.meta["idx"] for r in eval_rows)  # 1712 in the shared data
        candidates = [r for r in SOURCES["pku-saferlhf"].load(data_dir) if r.is_safe is False]
        candidates += [
            r
            for r in SOURCES["beavertails"].load(data_dir)
            if r.is_safe is False and r.meta["idx"] > last_eval_idx
        ]
        # PKU-SafeRLHF draws on the same prompt pool, so the evaluation prompts are removed from both parts.
        candidates = [r for r in candidates if normalize_text(r.instruction) not in eval_prompts]
        # The attack's (prompt, response) pairs are kept out too (one PKU pair equals one of them).
        seen = {
            (normalize_text(r.instruction), normalize_text(r.output))
            for r in SOURCES["beavertails-attack"].load(data_dir)
        }
        out: list[Record] = []
        for r in candidates:
            key = (normalize_text(r.instruction), normalize_text(r.output))
            if key in seen:
                continue
            seen.add(key)
            out.append(
                Record(
                    r.instruction,
                    r.input,
                    r.output,
                    {**r.meta, "source": self.name, "from": r.meta["source"]},
                )
            )
        return out[:limit] if limit is not None else out


@dataclass(frozen=True)
class HarmlessRequests(Source):
    """The requests people labelled harmless in a `guard_prompts/` set: what over-refusal is measured on."""

    of: str = "toxic-chat"  # the guard-prompt source whose harmless rows these are

    def load(
        self, data_dir: str | Path | None = None, split: str | None = None, limit: int | None = None
    ) -> list[Record]:
        self.check_split(split)
        rows = [r for r in SOURCES[self.of].load(data_dir) if r.meta["prompt_harmful"] is False]
        out = [Record(r.instruction, r.input, "", {**r.meta, "source": self.name}) for r in rows]
        return out[:limit] if limit is not None else out


def saferlhf_pairs(data_dir: str | Path | None = None) -> list[tuple[Record, Record]]:
    """(safe, unsafe) answers to the same prompt from PKU-SafeRLHF's 2k subset, one pair per prompt.

    The subset's 549 prompts each have both a safe and an unsafe answer (1 to 12 of each). A prompt
    that is a harmful-score evaluation prompt (`beavertails-eval`) is left out (30 are); of each
    prompt's answers the first safe one and the first unsafe one that is not one of the attack's
    (prompt, response) pairs are kept, in file order (one prompt has no other unsafe answer: 518
    pairs). Texts are compared after `normalize_text`.
    """
    eval_prompts = {normalize_text(r.instruction) for r in SOURCES["beavertails-eval"].load(data_dir)}
    attack_pairs = {
        (normalize_text(r.instruction), normalize_text(r.output))
        for r in SOURCES["beavertails-attack"].load(data_dir)
    }
    first: dict[str, dict[bool, Record]] = {}
    for r in SOURCES["pku-saferlhf"].load(data_dir):
        prompt = normalize_text(r.instruction)
        if prompt in eval_prompts or (prompt, normalize_text(r.output)) in attack_pairs:
            continue
        first.setdefault(prompt, {}).setdefault(bool(r.is_safe), r)
    return [(answers[True], answers[False]) for answers in first.values() if len(answers) == 2]


@dataclass(frozen=True)
class PairedSafeRLHF(Source):
    """One side of `saferlhf_pairs`: the safe answers (alignment rows) or the unsafe ones (harmful rows).

    Row k of the safe side and row k of the unsafe side share their prompt, so `pair_by_prompt`
    joins them; `meta["pair"]` is k.
    """

    safe_side: bool = True

    def load(
        self, data_dir: str | Path | None = None, split: str | None = None, limit: int | None = None
    ) -> list[Record]:
        self.check_split(split)
        out = []
        for k, pair in enumerate(saferlhf_pairs(data_dir)):
            r = pair[0] if self.safe_side else pair[1]
            out.append(Record(r.instruction, r.input, r.output, {**r.meta, "source": self.name, "pair": k}))
        return out[:limit] if limit is not None else out


def _qa(row: Row) -> Record:
    """A harmful (or labelled) QA pair: instruction = prompt, output = response."""
    return Record(row["prompt"], "", row.get("response") or "")


def _prompt_only(key: str) -> Callable[[Row], Record]:
    return lambda row: Record(row[key], "", "")


def _guard_prompt(row: Row) -> Record:
    return Record(row["prompt"], "", "", {"prompt_harmful": row["prompt_harmful"]})


def _instruction(row: Row) -> Record:
    return Record(row["instruction"], row.get("input") or "", row.get("output") or "")


_BEAVERTAILS = "PKU-Alignment/BeaverTails"
_QA_FIELDS: dict[str, Types] = {"prompt": STR, "response": STR, "is_safe": (bool,)}
_CATEGORY: dict[str, Types] = {"category": (str, dict, type(None)), "idx": (int,)}

_GUARD_FIELDS: dict[str, Types] = {"prompt": STR, "prompt_harmful": (bool,)}
_GUARD_FILES = {
    "simple-safety-tests": ("guard_prompts/simple_safety_tests.jsonl", "SimpleSafetyTests: 100 harmful prompts"),
    "aegis": ("guard_prompts/aegis_safety_test.jsonl", "Aegis safety test: 359 prompts, 232 labelled harmful"),
    "openai-moderation": ("guard_prompts/openai_moderation.jsonl", "OpenAI moderation evaluation: 1,680 texts, 522 labelled harmful"),
    "toxic-chat": ("guard_prompts/toxic_chat.jsonl", "ToxicChat test: 2,853 user requests, 362 labelled harmful"),
}  # fmt: skip


def _task_source(
    task: str,
    description: str,
    files: dict[str, str],
    hub: dict[str, tuple[str, str | None, str]],
    **extra: Any,
) -> Source:
    spec = TASKS[task]
    required = {k: v for k, v in spec.fields.items()}
    optional = {"input": OPT_STR} if task == "alpaca" else {}
    return Source(task, description, files, required, spec.to_record, optional=optional, hub=hub, **extra)


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "refusals",
            "alignment data: 2,483 harmful instructions with refusal answers (Safety-Tuned LLaMAs)",
            {"train": "safety_refusals/safety_tuned_llamas_safety_only.jsonl"},
            {"instruction": STR, "output": STR},
            _instruction,
            optional={"input": OPT_STR},
            extra_meta={"is_safe": True},
        ),
        Source(
            "beavertails",
            "BeaverTails 30k_test: 3,021 labelled QA pairs (is_safe)",
            {"test": "beavertails/30k_test.jsonl"},
            _QA_FIELDS,
            _qa,
            optional=_CATEGORY,
            hub={"test": (_BEAVERTAILS, None, "30k_test")},
        ),
        Source(
            "beavertails-eval",
            "harmful-score evaluation prompts: the first 1,000 unsafe prompts of BeaverTails 30k_test",
            {"test": "beavertails/30k_test_unsafe_first1000_prompts.jsonl"},
            {"prompt": STR},
            _prompt_only("prompt"),
            optional={"idx": (int,)},
            extra_meta={"is_safe": False},
            hub={"test": (_BEAVERTAILS, None, "30k_test")},
            hub_unsafe_first=1000,
        ),
        Source(
            "beavertails-attack",
            "harmful QA of the fine-tuning attack: the first 200 unsafe rows of BeaverTails 30k_train",
            {"train": "beavertails/30k_train_unsafe_first200.jsonl"},
            _QA_FIELDS,
            _qa,
            optional={**_CATEGORY, "unsafe_rank_bucket": STR},
            hub={"train": (_BEAVERTAILS, None, "30k_train")},
            hub_unsafe_first=200,
        ),
        HarmfulPool(
            "harmful-pool",
            "alignment-stage harmful QA: unsafe PKU-SafeRLHF rows + unsafe BeaverTails 30k_test rows after the eval prompts",
            {"train": "pku_saferlhf/test_subset_2k.jsonl + beavertails/30k_test.jsonl"},
            {},
            _qa,
        ),
        PairedSafeRLHF(
            "pku-paired-safe",
            "alignment rows paired by prompt with pku-paired-unsafe: PKU-SafeRLHF prompts -> a safe answer (518)",
            {"train": "pku_saferlhf/test_subset_2k.jsonl"},
            {},
            _qa,
            safe_side=True,
        ),
        PairedSafeRLHF(
            "pku-paired-unsafe",
            "harmful rows paired by prompt with pku-paired-safe: the same prompts -> an unsafe answer (518)",
            {"train": "pku_saferlhf/test_subset_2k.jsonl"},
            {},
            _qa,
            safe_side=False,
        ),
        Source(
            "pku-saferlhf",
            "PKU-SafeRLHF 2k subset: 2,000 labelled QA pairs (is_safe), balanced",
            {"test": "pku_saferlhf/test_subset_2k.jsonl"},
            _QA_FIELDS,
            _qa,
            optional={"idx": (int,)},
        ),
        _task_source(
            "sst2",
            "SST-2 sentiment (task format)",
            {"train": "sst2/train.jsonl", "validation": "sst2/validation.jsonl"},
            {"train": ("sst2", None, "train"), "validation": ("sst2", None, "validation")},
            choices={"label": (0, 1)},
        ),
        _task_source(
            "agnews",
            "AG News topics (task format); train is the 10,001-row ALPS subset, description only",
            {"train": "ag_news/train_subset_alps.jsonl", "test": "ag_news/test.jsonl"},
            {"train": ("ag_news", None, "train"), "test": ("ag_news", None, "test")},
            choices={"label": (0, 1, 2, 3)},
        ),
        _task_source(
            "gsm8k",
            "GSM8K grade-school maths (task format)",
            {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
            {"train": ("gsm8k", "main", "train"), "test": ("gsm8k", "main", "test")},
        ),
        _task_source(
            "alpaca",
            "T-Vaccine's alpaca data (the 805 AlpacaEval instructions)",
            {"train": "alpaca/t_vaccine_alpaca.jsonl"},
            {},
        ),
        Source(
            "advbench",
            "AdvBench harmful behaviours (520 prompts)",
            {"test": "advbench/harmful_behaviors.jsonl"},
            {"goal": STR},
            _prompt_only("goal"),
        ),
        Source(
            "harmbench",
            "HarmBench text behaviours (400 prompts)",
            {"test": "harmbench/behaviors_text_all.jsonl"},
            {"behavior": STR},
            lambda row: Record(
                row["behavior"],
                "",
                "",
                {"category": row["semantic_category"]} if row.get("semantic_category") else {},
            ),
            optional={"semantic_category": STR},
        ),
        Source(
            "jailbreakbench",
            "JBB-Behaviors (100 prompts)",
            {"test": "jailbreakbench/behaviors.jsonl"},
            {"goal": STR},
            _prompt_only("goal"),
            optional={"category": STR},
        ),
        Source(
            "strongreject",
            "StrongREJECT forbidden prompts (313)",
            {"test": "strongreject/strongreject.jsonl"},
            {"forbidden_prompt": STR},
            _prompt_only("forbidden_prompt"),
            optional={"category": STR},
        ),
        Source(
            "beavertails-evaluation",
            "BeaverTails-Evaluation: 700 prompts, 14 categories x 50",
            {"test": "beavertails_evaluation/test.jsonl"},
            {"prompt": STR, "category": STR},
            _prompt_only("prompt"),
        ),
        *(
            Source(
                name,
                description + " (prompt_harmful)",
                {"test": path},
                _GUARD_FIELDS,
                _guard_prompt,
                optional={"idx": (int,)},
            )
            for name, (path, description) in _GUARD_FILES.items()
        ),
        HarmlessRequests(
            "harmless-requests",
            "the 2,491 ToxicChat user requests labelled harmless: over-refusal is measured on them",
            {"test": "guard_prompts/toxic_chat.jsonl"},
            {},
            _guard_prompt,
        ),
    ]
}

# Schemas for files given by path without `as_source`, chosen by the first row's keys.
GENERIC_INSTRUCTION = Source(
    "file",
    "instruction/input/output rows",
    {},
    {"instruction": STR},
    _instruction,
    optional={"input": OPT_STR, "output": OPT_STR},
)
GENERIC_QA = Source(
    "file",
    "prompt/response rows",
    {},
    {"prompt": STR},
    _qa,
    optional={"response": OPT_STR, "is_safe": (bool, type(None)), **_CATEGORY},
)


# ----- public API --------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Text for overlap checks: Unicode NFKC, case-folded, whitespace collapsed and stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """`data_dir`, else $SAFEFT_DATA_DIR, else None."""
    value = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    return Path(value).expanduser() if value is not None else None


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether loading from the Hub can work: offline mode reads the local cache; else one TCP connect."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return True  # datasets reads its cache without touching the network
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _detect_schema(path: Path) -> Source:
    for number, row in read_rows(path):
        if "instruction" in row:
            return GENERIC_INSTRUCTION
        if "prompt" in row:
            return GENERIC_QA
        raise DataError(
            f"cannot tell the schema: expected an 'instruction' field (instruction/input/output) or a 'prompt' field (prompt/response); "
            f"the row has {', '.join(row) or 'nothing'}. Name the schema with --as SOURCE (a source whose fields the file has: {', '.join(SOURCES)}), or look at the file with 'safeft data inspect FILE'",
            path=str(path),
            row=number,
        )
    raise DataError("no rows: the dataset is empty", path=str(path))


def _load_file(path: Path, as_source: str | None, limit: int | None) -> list[Record]:
    if as_source is not None:
        if as_source not in SOURCES:
            raise unknown_name("data source", as_source, SOURCES)
        schema = SOURCES[as_source]
        if isinstance(schema, (HarmfulPool, PairedSafeRLHF)):
            schema = GENERIC_QA
    else:
        schema = _detect_schema(path)
    return schema.records(read_rows(path), str(path), limit)


def load_source(
    name_or_path: str,
    *,
    data_dir: str | Path | None = None,
    as_source: str | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> list[Record]:
    """Records of a named source (see `SOURCES`) or of a data file / folder.

    `split` picks a split of a named source (default: its first). `limit` keeps at most the first
    `limit` rows (fewer if fewer exist: use `take` when you need exactly n).
    """
    if limit is not None and limit < 0:
        raise SafeftError(f"limit must be >= 0, got {limit}")
    if name_or_path in SOURCES:
        return SOURCES[name_or_path].load(data_dir, split, limit)
    path = Path(name_or_path).expanduser()
    folder = resolve_data_dir(data_dir)
    if not path.exists() and folder is not None and (folder / name_or_path).exists():
        path = folder / name_or_path
    if path.exists():
        return _load_file(path, as_source, limit)
    if path.suffix in FILE_SUFFIXES or os.sep in name_or_path:
        raise DataError(
            f"no such file or folder (and it is not a source name; sources: {', '.join(SOURCES)})",
            path=str(path),
        )
    raise unknown_name("data source", name_or_path, SOURCES)


def take(records: list[Record], n: int, what: str) -> list[Record]:
    """Exactly the first `n` records; a clear error instead of silently returning fewer."""
    if n < 0:
        raise SafeftError(f"{what}: asked for {n} rows; the number of rows must be >= 0")
    if n > len(records):
        source = records[0].meta.get("path", "") if records else ""
        where = f" ({source})" if source else ""
        raise SafeftError(
            f"{what}: asked for {n} rows but only {len(records)} are available{where}. Lower the number or give a larger dataset."
        )
    return records[:n]


def with_responses(records: list[Record], what: str) -> list[Record]:
    """`records` unchanged when every row has a response to train on; else the first bad row, by file and line.

    Prompt-only sets (evaluation prompts, AdvBench, ...) load as records with an empty output;
    training on them would teach the model to answer with nothing, silently.
    """
    for r in records:
        if not r.output.strip():
            raise DataError(
                f"{what}: the row has no response to train on. Training rows need an 'output' (instruction files) "
                "or 'response' (prompt/response files) field with text; prompt-only sets are for evaluation",
                path=r.meta.get("path"),
                row=r.meta.get("row"),
                field="output",
            )
    return records


def training_rows(name_or_path: str, n: int, what: str, data_dir: str | Path | None = None) -> list[Record]:
    """Exactly the first `n` rows of a source or file, each with a response to train on (else a clear error)."""
    return with_responses(
        take(load_source(name_or_path, data_dir=data_dir), n, f"{what} from {name_or_path}"), what
    )


def pair_by_prompt(alignment: list[Record], harmful: list[Record]) -> list[Record]:
    """For each alignment row, the first harmful row with the same prompt (its partner), in order.

    Prompts are compared after `normalize_text`. An alignment row whose prompt no harmful row has is
    an error naming its file, row and field.
    """
    partners: dict[str, Record] = {}
    for r in harmful:
        partners.setdefault(normalize_text(r.instruction), r)
    out = []
    for r in alignment:
        partner = partners.get(normalize_text(r.instruction))
        if partner is None:
            where = harmful[0].meta.get("path", "the harmful data") if harmful else "the harmful data"
            raise DataError(
                f"pair_by_prompt: no harmful row has this alignment row's prompt {r.instruction!r:.80} "
                f"(searched {len(harmful)} rows of {where}). Give harmful data with a partner for every "
                "alignment prompt (e.g. pku-paired-safe with pku-paired-unsafe), or turn pair_by_prompt off",
                path=r.meta.get("path"),
                row=r.meta.get("row"),
                field="instruction",
            )
        out.append(partner)
    return out
