"""``python -m fedapp check ...`` (preflight) and ``python -m fedapp compare ...`` (runs side by side)."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fedapp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser(
        "check",
        help="validate a run config and node configs as the apps would, without starting Flower",
        description="Validate a run config (and node configs) exactly as the ServerApp and "
        "ClientApps would, without a SuperLink or Ray; print one line, exit 0 (ok) or 1.",
    )
    check.add_argument(
        "--run-config", "-c", action="append", default=[], metavar="OVERRIDES",
        help="as for flwr run: 'key=value ...' with TOML values, or one .toml file (repeatable)",
    )
    check.add_argument(
        "--node-config", action="append", default=[], metavar="NODE",
        help="a SuperNode's --node-config, e.g. 'partition-id=0 num-partitions=2' (repeatable)",
    )
    check.add_argument(
        "--num-supernodes", type=int, default=0, metavar="N",
        help="also check the N node configs a simulation injects (partition-id 0..N-1)",
    )
    check.add_argument(
        "--no-data", action="store_true", help="skip loading the server's and nodes' data"
    )
    check.set_defaults(run=_check)

    compare = sub.add_parser(
        "compare",
        help="table and overlay plot of several runs' results",
        description="Print a table of runs (final and best accuracy, bytes per client-round, "
        "seconds per round, strategy, differing config keys) and write an overlay plot.",
    )
    compare.add_argument("runs", nargs="+", help="result directories (<output-dir>/<run-name>)")
    compare.add_argument(
        "--out", default="compare.png", help="overlay plot (PNG) to write (default: compare.png)"
    )
    compare.set_defaults(run=_compare)
    return parser


def _check(args: argparse.Namespace) -> int:
    from fedapp.check import main as check_main

    return check_main(args.run_config, args.node_config,
                      num_supernodes=args.num_supernodes, data=not args.no_data)


def _compare(args: argparse.Namespace) -> int:
    from fedapp.compare import main as compare_main

    return compare_main(args.runs, args.out)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
