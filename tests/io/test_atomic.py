"""Tests of bpnn_jax.io.atomic: a file written atomically appears complete or not at all."""

from __future__ import annotations

import os
import stat

import pytest

from bpnn_jax.errors import BPNNInputError
from bpnn_jax.io import atomic_write


def test_atomic_write(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write("new")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    with atomic_write(target) as fh:
        fh.write("new")
    assert target.read_text() == "new"
    with atomic_write(tmp_path / "b.bin", "wb") as fh:
        fh.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o666 & ~umask
    with pytest.raises(BPNNInputError, match="mode"):
        with atomic_write(target, "a"):
            pass
    with pytest.raises(BPNNInputError, match="does not exist"):
        with atomic_write(tmp_path / "nodir" / "x.txt"):
            pass
