"""read_small_file / write_new_file: the same bytes and errors as open()."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mailpipe.common.small_files import read_small_file, write_new_file


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 3 * 65536 + 17])
def test_reads_every_byte_whatever_the_size(tmp_path: Path, size: int) -> None:
    path = tmp_path / "f"
    data = os.urandom(size)
    path.write_bytes(data)
    assert read_small_file(str(path)) == data
    assert read_small_file(str(path), limit=1000) == data[:1000]
    assert read_small_file(str(path), limit=70000) == data[:70000]


def test_a_missing_file_raises_as_open_does(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_small_file(str(tmp_path / "absent"))


def test_writes_a_new_file_with_the_umask_applied_and_never_over_another(tmp_path: Path) -> None:
    path = tmp_path / "new"
    old_mask = os.umask(0o027)
    try:
        write_new_file(str(path), [b"abc", memoryview(b"def"), bytearray(b"g")], fsync=True)
    finally:
        os.umask(old_mask)
    assert path.read_bytes() == b"abcdefg"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    with pytest.raises(FileExistsError):
        write_new_file(str(path), [b"other"])
    assert path.read_bytes() == b"abcdefg"
