"""Arguments every command that reads recordings shares."""

from __future__ import annotations

import argparse
from pathlib import Path

from emafusion.stores.download import DATASETS


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
