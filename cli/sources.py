"""Arguments every command that reads recordings shares, and what they select."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from emafusion.stores.download import DATASETS

# What a command needs is imported when it runs: `emafusion --help` stays fast.
if TYPE_CHECKING:
    from emafusion.nodes.resources import DeploymentSettings
    from emafusion.stores.pool import Pool
    from emafusion.stores.recordings import RecordSet
    from emafusion.stores.taxonomy import Taxonomy


def add_source_args(parser: argparse.ArgumentParser, skip_invalid: bool = True) -> None:
    """--dataset | --recordings (one required), --pool, --data-dir[, --skip-invalid]."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=DATASETS, help="a published recording set")
    source.add_argument(
        "--recordings", type=Path, metavar="FILE.jsonl", help="your own recordings (JSON Lines)"
    )
    parser.add_argument(
        "--pool", type=Path, metavar="FILE", help="pool file (TOML); default: the dataset's"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="recordings directory (default: $EMAFUSION_DATA_DIR, ...)"
    )
    if skip_invalid:
        parser.add_argument(
            "--skip-invalid",
            action="store_true",
            help="skip invalid JSONL lines (and count them) instead of stopping at the first",
        )


def load_records(args: argparse.Namespace) -> RecordSet:
    from emafusion.stores.recordings import load_dataset

    return load_dataset(
        dataset=args.dataset,
        recordings=args.recordings,
        data_dir=getattr(args, "data_dir", None),
        skip_invalid=getattr(args, "skip_invalid", False),
    )


def pool_for(args: argparse.Namespace, records: RecordSet) -> Pool | None:
    from emafusion.stores.pool import PoolError, load_default_pool, load_pool

    if getattr(args, "pool", None):
        return load_pool(args.pool)
    try:
        return load_default_pool(args.dataset or records.name)
    except PoolError:
        return None


def taxonomy_for(args: argparse.Namespace, records: RecordSet) -> Taxonomy:
    from emafusion.stores.taxonomy import (
        Taxonomy,
        TaxonomyError,
        default_taxonomy_path,
        load_taxonomy,
    )

    if getattr(args, "taxonomy", None):
        return load_taxonomy(args.taxonomy)
    try:
        return load_taxonomy(default_taxonomy_path(args.dataset or records.name))
    except TaxonomyError:
        # A user's recordings without a taxonomy file: categories come from the labels.
        return Taxonomy.from_names(records.categories)


def deployment_from_args(
    args: argparse.Namespace, *, router_dir: Path | None = None, persist_outcomes: bool = False
) -> DeploymentSettings:
    """The deployment a command's arguments describe (the command line is the deployment)."""
    from emafusion.nodes.resources import DeploymentSettings

    return DeploymentSettings(
        dataset=None if getattr(args, "recordings", None) else getattr(args, "dataset", None),
        recordings=getattr(args, "recordings", None),
        pool=getattr(args, "pool", None),
        router_dir=router_dir if router_dir is not None else getattr(args, "router_dir", None),
        taxonomy=getattr(args, "taxonomy", None),
        judge_pool=getattr(args, "judge_pool", None),
        data_dir=getattr(args, "data_dir", None),
        persist_outcomes=persist_outcomes,
        store_url=getattr(args, "store_url", None),
    )


def add_store_url_arg(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """--store-url: the PostgreSQL database a shared memory lives in (default:
    $EMAFUSION_STORE_URL; unset, the memory lives in the router directory)."""
    default = os.environ.get("EMAFUSION_STORE_URL", "").strip() or None
    parser.add_argument(
        "--store-url",
        default=default,
        required=required and default is None,
        metavar="postgresql://...",
        help="shared memory database (default: $EMAFUSION_STORE_URL; unset: router directory)",
    )
