"""`kdbench` command line: one module per subcommand, each with `add_parser(subparsers)` and `run(args)`.

Bad input raises KdbenchError anywhere below; it is printed as one line and the exit code is 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from typing import Sequence

from ..errors import KdbenchError

# subcommand modules, in help order; a module that is missing (not yet written) is skipped
COMMANDS = ["list_cmd", "data_cmd", "teacher_cmd", "run_cmd", "sweep_cmd", "report_cmd", "check_cmd", "bench_cmd"]


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
    return parser


_OWN_PREFIX = re.compile(r"^(?:kdbench(?: [a-z][\w-]*)?: (?:error: )?)+")


def one_line(message: str) -> str:
    """Error messages are printed as exactly one line (a wrapped library message would break that),
    after the one `kdbench: error:` prefix: a message that carries its own is not prefixed twice."""
    text = " ".join(part.strip() for part in message.splitlines() if part.strip())
    return _OWN_PREFIX.sub("", text) or "unknown error"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # named here, so that the hint points at the subcommand's own --help
            command = f"{args.command} " if getattr(args, "command", None) else ""
            raise KdbenchError(f"unrecognized arguments: {' '.join(extra)} (see `kdbench {command}--help`)")
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
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
