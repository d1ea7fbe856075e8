"""`kdbench` command line: one module per subcommand, each with `add_parser(subparsers)` and `run(args)`.

Bad input raises KdbenchError anywhere below; it is printed as one line and the exit code is 2.
`--import MODULE` (before or after the subcommand) and $KDBENCH_IMPORT import the user's plugin
modules (their datasets, models, methods) for every command and its worker processes.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
import warnings
from typing import Sequence

from ..errors import KdbenchError

# subcommand modules, in help order; a module that is missing (not yet written) is skipped
COMMANDS = ["list_cmd", "data_cmd", "teacher_cmd", "run_cmd", "sweep_cmd", "report_cmd", "latency_cmd", "export_cmd", "check_cmd", "bench_cmd"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's default prints usage too)
        sub = self.prog.partition(" ")[2]  # "kdbench sweep" -> "sweep"; main() adds the "kdbench: error:" prefix
        raise KdbenchError(f"{message} (see `kdbench {sub + ' ' if sub else ''}--help`)")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="kdbench", description="Knowledge-distillation benchmark: train, sweep, measure, report.")
    parser.add_argument("--version", action="version", version=f"kdbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log one line per training epoch")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"kdbench.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"kdbench.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    _add_import_option(parser)
    return parser


IMPORT_HELP = ("import a Python module first (repeatable; also $KDBENCH_IMPORT, comma-separated): its registered "
               "datasets, models and methods are then known to this command and its worker processes")


def _add_import_option(parser: argparse.ArgumentParser, depth: int = 0, seen: set[int] | None = None) -> None:
    """`--import MODULE` on the parser and every subcommand below it, one dest per level (a subcommand's
    values would otherwise replace the level above's); `import_option_values` joins them."""
    seen = set() if seen is None else seen
    if id(parser) in seen:  # an alias lists one parser twice
        return
    seen.add(id(parser))
    parser.add_argument("--import", dest=f"import_modules_{depth}", action="append", metavar="MODULE", help=IMPORT_HELP,
                        default=argparse.SUPPRESS)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_import_option(child, depth + 1, seen)


def import_option_values(args: argparse.Namespace) -> list[str]:
    """Every `--import` of the command line, outermost first."""
    levels = sorted((k for k in vars(args) if k.startswith("import_modules_")), key=lambda k: int(k.rpartition("_")[2]))
    return [m for k in levels for m in getattr(args, k)]


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:  # noqa: ANN001 - warnings' signature
    """kdbench's own warnings (plugins, student sizes, caches) as `kdbench: warning: ...`, one line."""
    if getattr(category, "__module__", "").startswith("kdbench."):
        return f"kdbench: warning: {one_line(str(message))}\n"
    return _FORMAT_WARNING(message, category, filename, lineno, line)


_FORMAT_WARNING = warnings.formatwarning


_OWN_PREFIX = re.compile(r"^(?:kdbench(?: [a-z][\w-]*)?: (?:error: )?)+")


def one_line(message: str) -> str:
    """Error messages are printed as exactly one line (a wrapped library message would break that),
    after the one `kdbench: error:` prefix: a message that carries its own is not prefixed twice."""
    text = " ".join(part.strip() for part in message.splitlines() if part.strip())
    return _OWN_PREFIX.sub("", text) or "unknown error"


def line_buffered_stdout() -> None:
    """Per-run lines reach a redirected log (`nohup kdbench sweep ... > log`) as they happen: Python
    block-buffers a stdout that is not a terminal, which held a sweep's lines back for hours."""
    if not sys.stdout.isatty() and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)


def main(argv: Sequence[str] | None = None) -> int:
    line_buffered_stdout()
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # named here, so that the hint points at the subcommand's own --help
            command = f"{args.command} " if getattr(args, "command", None) else ""
            raise KdbenchError(f"unrecognized arguments: {' '.join(extra)} (see `kdbench {command}--help`)")
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
        warnings.formatwarning = _one_line_warning
        from ..registry import import_from_env, import_modules

        import_modules(import_option_values(args), "--import")  # not importable: one line, exit 2
        import_from_env()
        if not getattr(args, "command", None):
            parser.print_help()
            return 0
        return int(args.func(args) or 0)
    except KdbenchError as e:
        print(f"kdbench: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kdbench list | head`
        return 0
    except OSError as e:  # a path, permission or disk problem the user can fix: one line, not a traceback
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"kdbench: error: {one_line(e.strerror or str(e) or type(e).__name__)}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
