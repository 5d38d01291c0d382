"""Atomic writes give ordinary files: the permissions a plain ``open(path, "w")`` would give."""

from __future__ import annotations

import os
import stat

from purrception.io import atomic_save_json, atomic_write, current_umask


def test_atomic_writes_get_the_permissions_of_an_ordinary_file(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.bin", lambda tmp: open(tmp, "wb").close())
        atomic_save_json(tmp_path / "b.json", {"x": 1})
        with open(tmp_path / "plain", "w"):
            pass
        assert current_umask() == 0o027
    finally:
        os.umask(old)
    want = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert want == 0o640
    for name in ("a.bin", "b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name
