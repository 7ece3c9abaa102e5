"""The ``featalign`` console script.

Subcommands are grouped (``featalign plugins list|check|nodes``); add a group by
writing a ``_add_<group>(subparsers)`` function that sets ``func`` on its parsers
and calling it from :func:`build_parser`. A command function takes the parsed
arguments and returns the exit code.

Exit codes: 0 success; 1 a check failed; 2 a user error (bad arguments, unknown
network, broken plugin file), reported as one sentence on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from featalign import __version__

__all__ = ["UserError", "build_parser", "main", "parse_option"]

log = logging.getLogger(__name__)


class UserError(Exception):
    """A mistake in the command line; printed as one sentence, exit code 2."""


def parse_option(text: str) -> tuple[str, Any]:
    """Parse a ``KEY=VALUE`` build option.

    The value is read as JSON when it parses (numbers, true/false/null, lists,
    quoted strings), otherwise kept as a string.

    Args:
        text: ``KEY=VALUE``.

    Returns:
        (key, value).

    Raises:
        UserError: if there is no ``=`` or the key is not an identifier.

    Example:
        >>> parse_option("width=8"), parse_option("pool=max"), parse_option("x=0.5")
        (('width', 8), ('pool', 'max'), ('x', 0.5))
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise UserError(
            f"option {text!r} is not KEY=VALUE with KEY a Python identifier, e.g. --option width=8."
        )
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def _options(items: Sequence[str] | None) -> dict[str, Any]:
    return dict(parse_option(t) for t in items or ())


def _plugin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plugin-dir",
        action="append",
        default=[],
        metavar="DIR",
        type=Path,
        help="extra folder of plugin files, searched after the built-in plugins/ (repeatable)",
    )


def _option_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="build option passed to the plugin's build(**options), value read as JSON when "
        "possible (repeatable), e.g. --option width=8",
    )


def _cmd_plugins_list(args: argparse.Namespace) -> int:
    from featalign.plugins import list_networks

    specs = list_networks(args.plugin_dir)
    if not specs:
        print("no networks found; put plugin files in plugins/ or pass --plugin-dir")
        return 0
    rows = [("NAME", "IN", "INVARIANT_TO", "LAYERS", "FILE")]
    rows += [
        (
            s.name,
            str(s.in_channels),
            ",".join(s.invariant_to) or "-",
            ",".join(s.layers),
            s.display_source,
        )
        for s in specs
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i and args.verbose_list:
            print(f"    {specs[i - 1].description}")
    return 0


def _cmd_plugins_check(args: argparse.Namespace) -> int:
    from featalign.check import check_network

    report = check_network(args.name, _options(args.option), args.plugin_dir)
    print(report.format())
    return report.exit_code


def _cmd_plugins_nodes(args: argparse.Namespace) -> int:
    from featalign.extractor import graph_nodes
    from featalign.plugins import PluginError, get_network

    spec = get_network(args.name, args.plugin_dir)
    try:
        model = spec.build(**_options(args.option))
        nodes = graph_nodes(model)
    except Exception as exc:  # the plugin's failure, reported as one sentence
        raise PluginError(
            f"{spec.display_source}: could not build and trace network '{spec.name}' "
            f"({type(exc).__name__}: {' '.join(str(exc).split())}); fix the plugin or its options."
        ) from exc
    for node in nodes:
        print(node)
    return 0


def _add_plugins(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plugins",
        help="list and validate network plugins",
        description="List and validate network plugins (files in plugins/, --plugin-dir "
        "folders, and modules advertised under the entry-point group featalign.networks).",
    )
    psub = p.add_subparsers(dest="plugins_command", metavar="COMMAND", required=True)

    q = psub.add_parser(
        "list",
        help="list the available networks without building them",
        description="List the available networks (name, input channels, declared "
        "invariances, layers, file) without building any.",
    )
    _plugin_args(q)
    q.add_argument(
        "-l",
        "--long",
        dest="verbose_list",
        action="store_true",
        help="also print each network's description",
    )
    q.set_defaults(func=_cmd_plugins_list)

    q = psub.add_parser(
        "check",
        help="build a network and check its contract and declared invariances",
        description="Build NAME, run smooth random images through it and report per layer: "
        "shape, measured stride and grid offset, finite outputs, determinism, translation "
        "covariance at stride multiples, and relative differences (norm ratios) under "
        "90-degree rotations, flips and transpose (checked where declared, informative "
        "otherwise). Exit 0 if "
        "everything holds, 1 if a check fails, 2 on a usage error.",
    )
    q.add_argument("name", metavar="NAME", help="network name (see `featalign plugins list`)")
    _plugin_args(q)
    _option_args(q)
    q.set_defaults(func=_cmd_plugins_check)

    q = psub.add_parser(
        "nodes",
        help="list the graph node names of a network (for nodes= in a plugin)",
        description="Build NAME and print the graph node names that torchvision's "
        "create_feature_extractor accepts (traced in eval mode), one per line: the values "
        "to use in a plugin's nodes= mapping.",
    )
    q.add_argument("name", metavar="NAME", help="network name")
    _plugin_args(q)
    _option_args(q)
    q.set_defaults(func=_cmd_plugins_nodes)


def _cmd_compare(args: argparse.Namespace) -> int:
    from featalign.io import FileError, atomic_path
    from featalign.summary.compare import DEFAULT_TOL, CompareError, compare_runs

    tol = DEFAULT_TOL if args.tol is None else args.tol
    try:
        result = compare_runs(args.old, args.new, tol=tol)
    except CompareError as exc:
        raise UserError(str(exc)) from exc
    print(result.format(), end="")
    if args.json is not None:
        try:
            with atomic_path(args.json) as tmp:
                tmp.write_text(result.to_json())
        except (OSError, FileError) as exc:
            raise UserError(f"cannot write --json {args.json} ({exc}).") from exc
    return result.exit_code


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="what moved between two runs of the workflow (verdicts, errors, recognition)",
        description="Compare the tables of two workflow runs, each given as its results "
        "folder (holding tables/) or its repository root (holding results/tables/): the "
        "claims of claims.csv (counts, claims in one run only, every changed verdict, changed "
        "agreements), and per measure the errors of errors.csv (and per alignment the rates "
        "of recognition.csv where both runs have it) that rose or fell by more than --tol. "
        "Exit 0 if no verdict changed, 1 if any did, 2 if a folder or table is missing or "
        "the two runs' tables have different columns.",
    )
    p.add_argument("old", metavar="OLD", type=Path, help="the first run (results/ or the root)")
    p.add_argument("new", metavar="NEW", type=Path, help="the second run, the same way")
    p.add_argument(
        "--tol",
        type=float,
        default=None,
        help="absolute change above which a measurement rose or fell; smaller changes count "
        "as identical (default 1e-4, featalign.summary.compare.DEFAULT_TOL)",
    )
    p.add_argument(
        "--json",
        metavar="FILE",
        type=Path,
        help="also write the comparison to FILE as JSON",
    )
    p.set_defaults(func=_cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``featalign`` command.

    Returns:
        The parser; each leaf command sets ``func(args) -> int``.
    """
    parser = argparse.ArgumentParser(
        prog="featalign",
        description="Can warping CNN feature maps undo an affine transformation of the "
        "input? Tools around the featalign workflow.",
    )
    parser.add_argument("--version", action="version", version=f"featalign {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_plugins(sub)
    _add_compare(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``featalign`` command.

    Args:
        argv: arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit code: 0 success, 1 a check failed, 2 a user error.
    """
    from featalign.plugins import PluginError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else 2
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (UserError, PluginError) as exc:
        print(f"featalign: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("featalign: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
