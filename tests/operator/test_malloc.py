"""The allocator settings the operator applies at start (glibc only)."""

from __future__ import annotations

import platform

import pytest

from autoglm_operator import malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt/malloc_trim")
def test_glibc_arenas_and_trim() -> None:
    assert malloc.limit_arenas(2) is True
    assert isinstance(malloc.trim(), bool)


def test_missing_libc_is_harmless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(malloc, "_glibc", lambda: None)
    assert malloc.limit_arenas() is False
    assert malloc.trim() is False
