"""`emafusion data check|export|fetch|path`: the recordings."""

from __future__ import annotations

import argparse
from pathlib import Path

from emafusion.cli.sources import add_source_args, load_records, pool_for
from emafusion.stores.download import DATASETS, dataset_files, resolve_data_dir


def cmd_data_check(args: argparse.Namespace) -> int:
    from emafusion.stores.cost import COST_ESTIMATED, Prices, per_1k
    from emafusion.stores.providers import recorded_call_cost

    records = load_records(args)
    pool = pool_for(args, records)
    print(f"dataset {records.name}: {len(records):,} records from {records.source}")
    for note in records.notes:
        print(f"  note: {note}")
    if records.skipped:
        print(f"  skipped {records.skipped:,} invalid lines")
    published = records.published_row_cost_per_1k
    header = f"{'model':<36} {'records':>8} {'accuracy':>9} {'cost/1k USD':>12}"
    if published:
        header += f" {'per row':>9}"
    print(header)
    any_estimated = False
    for model in records.models:
        outcomes = [r.outcomes[model] for r in records.records if model in r.outcomes]
        recs = [r for r in records.records if model in r.outcomes]
        accuracy = sum(o.score for o in outcomes) / len(outcomes)
        costs: list[float] = []
        estimated = False
        for record, outcome in zip(recs, outcomes, strict=True):
            if outcome.cost_usd is None and (pool is None or model not in pool.names):
                continue
            prices = pool.get(model).prices if pool and model in pool.names else Prices(0, 0)
            _, cost, source = recorded_call_cost(prices, record.query, outcome)
            costs.append(cost)
            estimated |= source == COST_ESTIMATED
        cost_text = f"{per_1k(sum(costs) / len(costs)):.3f}" if costs else "n/a"
        if estimated:
            cost_text += "*"
            any_estimated = True
        line = f"{model:<36} {len(outcomes):>8,} {accuracy:>9.4f} {cost_text:>12}"
        if published:
            line += f" {published.get(model, float('nan')):>9.3f}"
        print(line)
    if any_estimated:
        print(
            "  * list prices x estimated tokens (about 4 characters a token, zero-shot prompt); "
            "not recorded"
        )
    if published:
        print(
            "  cost/1k: mean recorded cost over the merged queries. per row: mean over the "
            "published rows before merging (the data README's figure; duplicated rows repeat "
            "the prompt and its cost)."
        )
    sizes = records.split_sizes()
    print("splits: " + "  ".join(f"{name} {n:,}" for name, n in sizes.items()))
    return 0


def cmd_data_export(args: argparse.Namespace) -> int:
    from emafusion.stores.recordings import write_jsonl

    records = load_records(args)
    count = write_jsonl(records.records, args.out)
    print(f"wrote {count:,} records to {args.out}")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    for dataset in args.dataset or DATASETS:
        paths = dataset_files(dataset, args.data_dir)
        print(f"{dataset}: {len(paths)} files verified in {paths[0].parent}")
    return 0


def cmd_data_path(args: argparse.Namespace) -> int:
    print(resolve_data_dir())
    return 0


def add_data_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="recordings: check, export, fetch, path")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    check = data_commands.add_parser(
        "check", help="per model: records, accuracy, cost per 1k queries; split sizes"
    )
    add_source_args(check)
    check.set_defaults(handler=cmd_data_check)

    export = data_commands.add_parser("export", help="write recordings as JSON Lines")
    add_source_args(export)
    export.add_argument("--out", type=Path, required=True, metavar="FILE.jsonl")
    export.set_defaults(handler=cmd_data_export)

    fetch = data_commands.add_parser("fetch", help="download and verify the published recordings")
    fetch.add_argument("--dataset", choices=DATASETS, action="append")
    fetch.add_argument("--data-dir", type=Path)
    fetch.set_defaults(handler=cmd_data_fetch)

    path = data_commands.add_parser("path", help="print the resolved data directory")
    path.set_defaults(handler=cmd_data_path)
