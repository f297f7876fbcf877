"""Mutation check: does the suite notice when the product's behaviour breaks?

Each :class:`Mutation` is a named, minimal change to the code, written against behaviour: it
names a function (``name`` or ``Class.name``) that is found by its definition anywhere under
engine/, bridge/, export/ and presets/ (so it keeps working when files move), a piece of text
that occurs exactly once inside that function, and what to put there instead. The check copies
the repository to a temporary folder, applies one mutation at a time, runs the tests that
should notice, and reports ``caught`` (they failed), ``SURVIVED`` (they passed: a hole in the
suite) or ``STALE`` (the function or text is gone: the mutation needs rewriting).

    python tests/mutations.py            # every mutation
    python tests/mutations.py --quick    # a subset, a few minutes
    python tests/mutations.py -k ito     # those whose name contains "ito"
    python tests/mutations.py --list

Exit status 0 when nothing survived and nothing is stale. Rule (tests/README.md): a new
behaviour comes with a mutation here that its test catches.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "bridge", "export", "presets")


@dataclass(frozen=True)
class Mutation:
    name: str
    function: str                 # "func" or "Class.method"
    find: str                     # text occurring exactly once inside that function
    replace: str
    tests: Tuple[str, ...]        # pytest node ids (file or file::test)
    why: str = ""                 # the behaviour that breaks
    quick: bool = False
    module: str = ""              # optional: a path fragment to choose among functions of one name


def _defs(tree: ast.AST):
    """(qualified name, node) of every function, methods as Class.method (nested classes too)."""
    out = []

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((prefix + child.name, child))
                walk(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                walk(child, prefix + child.name + ".")

    walk(tree, "")
    return out


def locate(root: Path, m: Mutation) -> Tuple[Path, int, int]:
    """(file, start offset, end offset) of the function's source in ``root``; raises LookupError."""
    hits = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            if m.module and m.module not in str(path.relative_to(root)):
                continue
            text = path.read_text()
            try:
                tree = ast.parse(text)
            except SyntaxError:
                continue
            for qual, node in _defs(tree):
                if qual == m.function or qual.endswith("." + m.function):
                    lines = text.splitlines(keepends=True)
                    start = sum(len(l) for l in lines[: node.lineno - 1])
                    end = sum(len(l) for l in lines[: node.end_lineno])
                    hits.append((path, start, end))
    if not hits:
        raise LookupError(f"no function {m.function!r}")
    if len(hits) > 1:
        raise LookupError(f"{len(hits)} functions named {m.function!r}: {', '.join(str(h[0].relative_to(root)) for h in hits)} "
                          "(give module=)")
    return hits[0]


def apply(root: Path, m: Mutation) -> Path:
    """Apply ``m`` in the tree at ``root``; returns the file changed. Raises LookupError when stale."""
    path, start, end = locate(root, m)
    text = path.read_text()
    body = text[start:end]
    n = body.count(m.find)
    if n != 1:
        raise LookupError(f"{m.find!r} occurs {n} times in {m.function} ({path.relative_to(root)})")
    path.write_text(text[:start] + body.replace(m.find, m.replace) + text[end:])
    return path


def copy_repo(dst: Path) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", "venv", "__pycache__", "*.pyc", ".pytest_cache", "runs", "out",
                                    "corpus", "refmaster-demo", "*.egg-info")
    shutil.copytree(REPO, dst, ignore=ignore, symlinks=True)


def run_tests(root: Path, tests: Sequence[str], timeout: float) -> Tuple[bool, str]:
    """True when the tests passed (the mutation survived)."""
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    try:
        r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "timeout (counted as caught)"
    tail = (r.stdout + r.stderr).strip().splitlines()
    return r.returncode == 0, tail[-1] if tail else ""


def all_mutations() -> List[Mutation]:
    """Every mutation of every ``tests/mutation_list*.py`` (one file per area, so that work on
    different areas never edits the same list)."""
    import importlib

    MUTATIONS: List[Mutation] = []
    for f in sorted(Path(__file__).parent.glob("mutation_list*.py")):
        MUTATIONS += importlib.import_module(f.stem).MUTATIONS
    names = [m.name for m in MUTATIONS]
    dup = {n for n in names if names.count(n) > 1}
    assert not dup, f"mutation names used twice: {dup}"
    return list(MUTATIONS)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="only the mutations marked quick")
    ap.add_argument("-k", dest="keyword", help="only mutations whose name contains this")
    ap.add_argument("--list", action="store_true", help="list the mutations and check that each still applies")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per mutation's test run")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run of the tests without any mutation")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    muts = [m for m in all_mutations() if (not args.quick or m.quick) and (not args.keyword or args.keyword in m.name)]
    if not muts:
        print("no mutation selected")
        return 2
    # a test the module names must exist: a mutation guarded by nothing is a hole too
    missing = [(m.name, t) for m in muts for t in m.tests if not (REPO / t.split("::")[0]).exists()]
    results = []
    with tempfile.TemporaryDirectory(prefix="refmaster-mutations-") as tmp:
        pristine = Path(tmp) / "pristine"
        copy_repo(pristine)
        # the copy, not an installed (editable) refmaster, must be what the tests import
        env = dict(os.environ, PYTHONPATH=str(pristine))
        where = subprocess.run([sys.executable, "-c", "import engine, bridge; print(engine.__file__)"], cwd=pristine,
                               env=env, capture_output=True, text=True).stdout.strip()
        if not where.startswith(str(pristine)):
            print(f"the tests would import engine from {where!r}, not from the mutated copy")
            return 2
        if not args.list and not args.no_baseline:
            # a test that fails without any mutation would make every "caught" meaningless
            tests = sorted({t for m in muts for t in m.tests})
            passed, tail = run_tests(pristine, tests, args.timeout * 2)
            print(f"baseline (no mutation, {len(tests)} test ids): {'pass' if passed else 'FAIL'}  {tail[:90]}", flush=True)
            if not passed:
                return 2
        for i, m in enumerate(muts, 1):
            work = Path(tmp) / f"m{i}"
            shutil.copytree(pristine, work, symlinks=True)
            t0 = time.time()
            try:
                changed = apply(work, m)
            except LookupError as e:
                results.append((m, "STALE", str(e), 0.0))
            else:
                if args.list:
                    results.append((m, "applies", str(changed.relative_to(work)), 0.0))
                else:
                    survived, tail = run_tests(work, m.tests, args.timeout)
                    results.append((m, "SURVIVED" if survived else "caught", tail, time.time() - t0))
            shutil.rmtree(work, ignore_errors=True)
            m_, status, detail, secs = results[-1]
            print(f"[{i:>2}/{len(muts)}] {status:<8} {m.name:<40} {secs:6.1f} s  {detail[:90]}", flush=True)
    survived = [r for r in results if r[1] == "SURVIVED"]
    stale = [r for r in results if r[1] == "STALE"]
    caught = [r for r in results if r[1] == "caught"]
    print()
    if args.list:
        print(f"{len(results)} mutations, {len(stale)} stale")
    else:
        print(f"{len(results)} mutations: {len(caught)} caught, {len(survived)} survived, {len(stale)} stale")
    for m, t in missing:
        print(f"missing test file for {m}: {t}")
    for m, _, _, _ in survived:
        print(f"survived: {m.name} — {m.why}")
    return 0 if not survived and not stale and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
