"""A taxonomy file that cannot be read is an error naming the file and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from emafusion.stores.taxonomy import TaxonomyError, load_taxonomy


def test_a_missing_taxonomy_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "none.toml"
    with pytest.raises(TaxonomyError, match="no such taxonomy file. Fix: name an existing") as err:
        load_taxonomy(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content", [b"[categories", b"\x00\xff", b"name = 'x'\n", None])
def test_an_unreadable_taxonomy_names_the_file_and_the_fix(
    tmp_path: Path, content: bytes | None
) -> None:
    path = tmp_path / "t.toml"
    if content is None:
        path.mkdir()  # a directory where the file should be
    else:
        path.write_bytes(content)
    with pytest.raises(TaxonomyError, match="Fix:") as err:
        load_taxonomy(path)
    assert str(path) in str(err.value)
