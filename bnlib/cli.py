"""Command line: ``python -m bnlib {run,book,report,params}``.

    python -m bnlib run memorization -p batch_size 64 -p norms batch,none [--profile quick]
    python -m bnlib book [--profile quick] [--force] [--strict]
    python -m bnlib report [--profile smoke | --set quick-1a2b3c4d] [--json]
    python -m bnlib params memorization
"""

from __future__ import annotations

import argparse
import sys

from . import book, report, results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bnlib", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute one chapter with papermill at given parameters")
    run.add_argument("chapter", help=f"one of: {', '.join(book.chapter_names())}")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="a papermill parameter (repeatable); values are strings, converted by the chapter")
    run.add_argument("--profile", choices=("smoke", "quick", "paper"), help="shorthand for -p profile NAME")
    run.add_argument("--force", action="store_true", help="execute even if an up-to-date copy exists")
    build = commands.add_parser("book", help="execute every chapter, then build the website into _build/html")
    build.add_argument("--profile", choices=("smoke", "quick", "paper"), default="quick")
    build.add_argument("--force", action="store_true", help="re-execute notebooks (trained models stay cached)")
    build.add_argument("--strict", action="store_true", help="treat Sphinx warnings as errors")
    rep = commands.add_parser("report", help="print the headline table from cached results")
    rep.add_argument("--json", action="store_true", help="print JSON (stable shape, see bnlib.report)")
    which = rep.add_mutually_exclusive_group()
    which.add_argument("--profile", choices=("smoke", "quick", "paper"),
                       help="the book's results at this profile (default: the profile of the last book built)")
    which.add_argument("--set", dest="result_set", help="a result set by name (`run` prints it), e.g. quick-1a2b3c4d")
    params = commands.add_parser("params", help="list a chapter's papermill parameters and defaults")
    params.add_argument("chapter")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            document = book.resolve_chapter(args.chapter)
            parameters = dict(args.parameter)
            if args.profile:
                parameters["profile"] = args.profile
            result_set = book.run_result_set(document, parameters)
            output, ran = book.execute(document, parameters, force=args.force)
            print(f"{'executed' if ran else 'up to date'}: {output}\nresult set: {result_set} "
                  f"(`python -m bnlib report --set {result_set}`)")
        elif args.command == "book":
            html = book.book(args.profile, force=args.force, strict=args.strict)
            print(f"website: {html / 'index.html'}")
        elif args.command == "report":
            result_set = args.result_set or args.profile or book.built_result_set() or "quick"
            table = report.headline(results.read_summaries(result_set))
            print(report.as_json(table) if args.json else report.text(table, result_set))
        elif args.command == "params":
            document = book.resolve_chapter(args.chapter)
            for name, spec in book.declared_parameters(document).items():
                print(f"{name:16s} {spec['default']:>24s}  {spec.get('help', '')}")
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
