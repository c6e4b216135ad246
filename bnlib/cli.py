"""Command line: ``python -m bnlib {run,book,report,params}``.

    python -m bnlib run memorization -p batch_size 64 -p norms batch,none [--profile quick]
    python -m bnlib book [--profile quick] [--force] [--strict]
    python -m bnlib report [--profile smoke | --set quick-1a2b3c4d] [--json]
    python -m bnlib params memorization
    python -m bnlib zoo --profile paper [-p NAME VALUE ...] [--engine dask --address tcp://host:8786]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import book, chapter, report, results


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
    params.add_argument("--write-cell", action="store_true",
                        help="rewrite the chapter's parameters cell from bnlib's configuration (for maintainers)")
    zoo_cmd = commands.add_parser("zoo", help="train the model zoo of every norm into the cache (here or on a cluster)")
    zoo_cmd.add_argument("--profile", choices=("smoke", "quick", "paper"), default="quick")
    zoo_cmd.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                         help="an experiment parameter, as the chapters take it (repeatable)")
    zoo_cmd.add_argument("--engine", choices=("local", "dask"), default="local",
                         help="local: this machine (parameter 'workers'); dask: a Dask cluster (bnlib.engine)")
    zoo_cmd.add_argument("--address", help="dask: scheduler address (tcp://host:8786) or scheduler file (*.json); "
                         "omitted = a local cluster, unless --jobqueue")
    zoo_cmd.add_argument("--jobqueue", choices=("slurm", "pbs"), help="dask: start workers as batch jobs")
    zoo_cmd.add_argument("--jobs", type=int, default=1, help="dask --jobqueue: batch jobs (with --gpu: one GPU each)")
    zoo_cmd.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                         help="dask: one vmap group per task, placed on a worker with a free GPU resource "
                              "(default: on for the paper profile)")
    zoo_cmd.add_argument("--retries", type=int, default=3, help="dask: retries of a task that raised")
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
            if args.write_cell:
                changed = chapter.write_parameters_cell(Path(document).name)
                print(f"{document}.ipynb: parameters cell {'rewritten' if changed else 'already up to date'}")
                return 0
            for name, spec in book.declared_parameters(document).items():
                print(f"{name:16s} {spec['default']:>24s}  {spec.get('help', '')}")
        elif args.command == "zoo":
            _zoo(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _zoo(args: argparse.Namespace) -> None:
    from . import config, zoo

    cfg = config.load(args.profile, **dict(args.parameter))
    if args.engine == "local":
        for norm in cfg.norms:
            zoo.train_zoo(cfg, norm)
    else:
        from . import engine

        gpu = args.profile == "paper" if args.gpu is None else args.gpu
        client = engine.connect(args.address, jobqueue=args.jobqueue, jobs=args.jobs, gpu=gpu)
        with client:
            reports = engine.train_zoo(client, cfg, gpu=gpu, retries=args.retries)
        print(f"trained {sum(len(r['trained']) for r in reports)} members in {len(reports)} tasks on "
              f"{len({(r['host'], r['pid']) for r in reports})} workers")
    for norm in cfg.norms:
        print(f"zoo {norm}: {cfg.n_models} members complete in {zoo.zoo_entry(cfg, norm).folder}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
