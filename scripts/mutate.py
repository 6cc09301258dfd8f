"""A small mutation-testing run: change one operator or constant at a time and see whether a test fails.

Why not mutmut: each mutant here runs only the tests of the module it mutates (the method tests
train tiny models and take ~30 s each), on a copy of the repository, within a time budget. A
mutant *survives* when the mapped tests still pass; `docs/testing.md` lists the survivors.

    python scripts/mutate.py --budget-min 40 --sample 60 --log ~/safeft-runs/mutation.log

Mutation operators (on the AST; each mutant is one change): comparison (< <=, > >=, == !=, in
not in, is is not), arithmetic (+ -, * /), a number constant c -> c + 1, True <-> False, and a
call statement removed (the "no-op" mutant).
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# module -> the fast tests that specify it
TESTS = {
    "src/safeft/methods/tvaccine.py": ["tests/test_methods_tvaccine.py"],
    "src/safeft/methods/lisa.py": ["tests/test_methods_lisa.py"],
    "src/safeft/methods/repnoise.py": ["tests/test_methods_repnoise.py"],
    "src/safeft/methods/vaccine.py": ["tests/test_methods_vaccine.py"],
    "src/safeft/methods/booster.py": ["tests/test_methods_booster.py"],
    "src/safeft/methods/hooks.py": ["tests/test_hooks.py", "tests/test_methods_vaccine.py"],
    "src/safeft/methods/loss.py": ["tests/test_loss.py"],
    "src/safeft/methods/base.py": [
        "tests/test_methods_base.py",
        "tests/test_methods_booster.py",
        "tests/test_methods_vaccine.py",
    ],
    "src/safeft/methods/sft.py": ["tests/test_loss.py", "tests/test_methods_registry.py"],
    "src/safeft/methods/__init__.py": ["tests/test_methods_registry.py"],
    "src/safeft/data/mix.py": ["tests/test_mix.py"],
}

SWAPS: dict[type, type] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
}


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                ids.add(id(body[0]))
    return ids


def sites(source: str) -> list[tuple[int, str, int]]:
    """(node number in ast.walk order, description, line) of every mutation site."""
    tree = ast.parse(source)
    docstrings = _docstring_nodes(tree)
    # Config defaults and ranges (`option(0.1, ..., range=(0.0, None))`) are choices, not logic.
    in_options = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "option"
        for inner in ast.walk(node)
    }
    out = []
    for number, node in enumerate(ast.walk(tree)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Compare):
            for k, op in enumerate(node.ops):
                if type(op) in SWAPS:
                    out.append((number, f"compare{k}:{type(op).__name__}->{SWAPS[type(op)].__name__}", line))
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in SWAPS:
            out.append((number, f"binop:{type(node.op).__name__}->{SWAPS[type(node.op)].__name__}", line))
        elif (
            isinstance(node, ast.Constant)
            and type(node.value) in (int, float, bool)
            and id(node) not in in_options
        ):
            if isinstance(node.value, bool):
                out.append((number, f"bool:{node.value}->{not node.value}", line))
            else:
                out.append((number, f"const:{node.value}->{node.value + 1}", line))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and id(node) not in docstrings:
            out.append((number, "call-removed", line))
    return out


def mutate(source: str, number: int, what: str) -> str:
    tree = ast.parse(source)
    for n, node in enumerate(ast.walk(tree)):
        if n != number:
            continue
        if what.startswith("compare"):
            k = int(what[len("compare") : what.index(":")])
            node.ops[k] = SWAPS[type(node.ops[k])]()
        elif what.startswith("binop"):
            node.op = SWAPS[type(node.op)]()
        elif what.startswith("bool"):
            node.value = not node.value
        elif what.startswith("const"):
            node.value = node.value + 1
        elif what == "call-removed":
            node.value = ast.Constant(None)
        break
    return ast.unparse(tree)


def run_tests(copy: Path, tests: list[str], timeout: float) -> str:
    env = {
        "PYTHONPATH": str(copy / "src"),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PATH": "/usr/bin:/bin",
    }
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "killed (timeout)"
    return "survived" if done.returncode == 0 else "killed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-min", type=float, default=40.0, help="stop starting mutants after this")
    parser.add_argument("--sample", type=int, default=60, help="mutants drawn (seeded) from all sites")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per mutant's tests")
    parser.add_argument("--only", nargs="*", help="module paths (default: all mapped modules)")
    parser.add_argument("--log", type=Path, required=True, help="JSON lines, one per mutant")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout to mutate (default: this one)")
    args = parser.parse_args()
    repo = args.repo.resolve()
    modules = args.only or list(TESTS)
    modules = [m for m in modules if (repo / m).is_file()]
    candidates = [(m, *s) for m in modules for s in sites((repo / m).read_text())]
    random.Random(args.seed).shuffle(candidates)
    chosen = candidates[: args.sample]
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="safeft-mutants-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(
            REPO, copy, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "results", "__pycache__")
        )
        args.log.parent.mkdir(parents=True, exist_ok=True)
        with args.log.open("a") as log:
            log.write(
                json.dumps({"start": time.strftime("%Y-%m-%dT%H:%M:%S"), "sites": len(candidates)}) + "\n"
            )
            for module, number, what, line in chosen:
                if time.time() - start > args.budget_min * 60:
                    break
                original = (repo / module).read_text()
                (copy / module).write_text(mutate(original, number, what))
                t0 = time.time()
                tests = [t for t in TESTS[module] if (copy / t).is_file()]  # an older checkout has fewer
                verdict = run_tests(copy, tests, args.timeout)
                (copy / module).write_text(original)
                row = {
                    "module": module,
                    "line": line,
                    "mutation": what,
                    "verdict": verdict,
                    "s": round(time.time() - t0),
                }
                log.write(json.dumps(row) + "\n")
                log.flush()


if __name__ == "__main__":
    main()
