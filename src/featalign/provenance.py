"""Which featalign code a workflow job runs, as a digest that changes when that code does.

Snakemake's ``code`` rerun trigger watches a rule's own script only, not the library it
imports, so a fix in :mod:`featalign.align` alone would leave every cached alignment in
place. Each rule therefore passes :func:`code_digest` of its script as a parameter: the
digest covers the script and every ``featalign`` module it imports, directly or
through other featalign modules (imports inside functions included), so a change to
that code reruns exactly the jobs that run it (the ``params`` trigger).

The digest is taken of the parsed code without docstrings (``ast.dump``), so comments,
docstrings and formatting do not count: editing documentation reruns nothing.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

__all__ = ["code_digest", "code_modules", "featalign_imports"]

#: The folder of the featalign package.
PACKAGE = Path(__file__).resolve().parent


def _module_file(name: str) -> Path | None:
    """``featalign.x`` -> its source file (None for names that are not featalign modules)."""
    parts = name.split(".")
    if parts[0] != "featalign":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def featalign_imports(tree: ast.AST) -> set[str]:
    """The featalign modules a parsed file imports (``from featalign import x`` counts x).

    Example:
        >>> sorted(featalign_imports(ast.parse("from featalign import geometry, __version__")))
        ['featalign', 'featalign.geometry']
    """
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "featalign"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "featalign":
                continue
            found.add(node.module)
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if _module_file(sub) is not None:
                    found.add(sub)
    # a submodule import runs its package's __init__ too
    found |= {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}
    return found


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return tree


@functools.lru_cache(maxsize=512)
def _summary(path: Path, _stamp: tuple[int, int]) -> tuple[frozenset[str], str]:
    """(featalign imports, digest of the code) of one file, parsed once per version.

    A workflow evaluates the digest of every job's rule while it builds the DAG: parsing
    each module once (the cache key includes the file's mtime and size) keeps that to a
    fraction of a second.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imports = frozenset(featalign_imports(tree))
    digest = hashlib.sha256(ast.dump(_strip_docstrings(tree)).encode()).hexdigest()
    return imports, digest


def _file(path: Path) -> tuple[frozenset[str], str]:
    st = path.stat()
    return _summary(path.resolve(), (st.st_mtime_ns, st.st_size))


def _closure(scripts: tuple[Path, ...]) -> dict[str, str]:
    """Digests of the scripts and of every featalign module they reach through imports."""
    summaries = {f"<script {i}>": _file(Path(p)) for i, p in enumerate(scripts)}
    digests = {name: d for name, (_, d) in summaries.items()}
    todo = sorted(set().union(*(imports for imports, _ in summaries.values())))
    while todo:
        name = todo.pop()
        if name in digests:
            continue
        path = _module_file(name)
        if path is None:
            continue
        imports, digests[name] = _file(path)
        todo += sorted(imports - set(digests))
    return digests


def code_modules(*scripts: str | Path) -> list[str]:
    """The featalign modules whose code :func:`code_digest` of ``scripts`` covers."""
    return sorted(n for n in _closure(tuple(map(Path, scripts))) if not n.startswith("<"))


def code_digest(*scripts: str | Path) -> str:
    """A short digest of ``scripts`` and of all featalign code they import.

    Args:
        scripts: Python files (a workflow script, and for network rules the plugin file,
            whose own featalign imports, e.g. :mod:`featalign.pretrained`, then count).

    Returns:
        16 hex digits; equal for code that differs only in comments, docstrings or
        formatting.

    Raises:
        FileNotFoundError: if a script does not exist.
    """
    h = hashlib.sha256()
    for name, digest in sorted(_closure(tuple(map(Path, scripts))).items()):
        h.update(f"{name}={digest};".encode())
    return h.hexdigest()[:16]
