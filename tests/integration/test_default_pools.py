"""The shipped default pools name exactly the models of their recordings."""

from __future__ import annotations

import pytest

from emafusion.stores.pool import default_pool_path, load_default_pool
from emafusion.stores.recordings import RecordSet

pytestmark = pytest.mark.slow


def test_default_pools_cover_their_recordings(routerbench: RecordSet, mmlu_pro: RecordSet) -> None:
    for records in (routerbench, mmlu_pro):
        pool = load_default_pool(records.name)
        pool.check_recordings(records)
        assert sorted(pool.names) == records.models
        assert "approximate" in default_pool_path(records.name).read_text().lower()
