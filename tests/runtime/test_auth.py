"""API keys: file format, constant-time verification, rotation without restart, no key in logs."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from autoglm_runtime.auth import ApiKeys, ApiKeysError, key_id, parse_keys, presented_key


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str) -> None:
    # Kubernetes swaps Secret files atomically (new file, symlink flip): do the same.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    p = tmp_path / "keys"
    write(p, "# team A\nsk-alpha-0001\n\n   sk-beta-0002  \n#sk-commented-out\n")
    return p


def test_file_format_skips_blanks_and_comments(keys_file: Path) -> None:
    keys = ApiKeys(keys_file)
    assert keys.count == 2
    assert keys.verify("sk-alpha-0001") == key_id("sk-alpha-0001")
    assert keys.verify("sk-beta-0002") == key_id("sk-beta-0002")
    assert keys.verify("sk-commented-out") is None
    assert keys.verify("# team A") is None


@pytest.mark.parametrize(
    "presented", [None, "", "sk-alpha", "sk-alpha-00011", "SK-ALPHA-0001", "sk-alpha-000"]
)
def test_wrong_keys_are_refused(keys_file: Path, presented: str | None) -> None:
    assert ApiKeys(keys_file).verify(presented) is None


def test_key_id_is_short_stable_and_not_the_key() -> None:
    ident = key_id("sk-secret-value")
    assert ident == key_id("sk-secret-value")
    assert ident != key_id("sk-secret-valuf")
    assert ident.startswith("k-")
    assert len(ident) == 14
    assert "secret" not in ident
    # Not a plain digest of the key either (domain-separated), so it is no lookup index into digests.
    assert ident[2:] not in hashlib.sha256(b"sk-secret-value").hexdigest()


def test_every_key_is_compared_without_early_exit(keys_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import autoglm_runtime.auth as auth

    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    keys = ApiKeys(keys_file)
    keys.verify("sk-alpha-0001")  # matches the first key: the second is still compared
    assert len(calls) == 2
    calls.clear()
    keys.verify("nope")
    assert len(calls) == 2
    # Equal-length digests: the comparison time does not depend on the presented key's length.
    assert {len(a) for a, _ in calls} == {32}


def test_rotation_without_restart(keys_file: Path) -> None:
    clock = FakeClock()
    keys = ApiKeys(keys_file, check_interval_s=1.0, clock=clock)
    assert keys.verify("sk-alpha-0001")
    write(keys_file, "sk-gamma-0003\nsk-beta-0002\n")
    # Within the check interval the old set still answers (one stat per interval, not per request).
    assert keys.verify("sk-alpha-0001")
    clock.now += 1.5
    assert keys.verify("sk-gamma-0003") == key_id("sk-gamma-0003")
    assert keys.verify("sk-alpha-0001") is None
    assert keys.verify("sk-beta-0002")
    assert keys.reloads == 1


def test_empty_file_on_reload_fails_closed(keys_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    keys = ApiKeys(keys_file, clock=clock)
    write(keys_file, "# all keys revoked\n")
    clock.now += 5
    with caplog.at_level(logging.ERROR):
        assert keys.verify("sk-alpha-0001") is None
    assert "every request will get 401" in caplog.text


def test_unreadable_file_on_reload_keeps_last_keys(keys_file: Path) -> None:
    clock = FakeClock()
    keys = ApiKeys(keys_file, clock=clock)
    keys_file.unlink()
    clock.now += 5
    assert keys.verify("sk-alpha-0001") == key_id("sk-alpha-0001")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "cannot read it"), ("\n# only comments\n", "no keys found"), (b"\xff\xfe\x00", "not UTF-8")],
)
def test_unusable_file_at_start_is_a_clear_error(
    tmp_path: Path, content: str | bytes | None, fragment: str
) -> None:
    p = tmp_path / "keys"
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif content is not None:
        p.write_text(content)
    with pytest.raises(ApiKeysError, match=fragment) as err:
        ApiKeys(p)
    assert str(p) in str(err.value)


def test_keys_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    canary = "sk-CANARY-7f3e9b1d"
    p = tmp_path / "keys"
    write(p, canary + "\n")
    clock = FakeClock()
    with caplog.at_level(logging.DEBUG):
        keys = ApiKeys(p, clock=clock)
        keys.verify(canary)
        keys.verify(canary + "x")
        write(p, canary + "\nsk-other\n")
        clock.now += 5
        keys.verify(canary)
        write(p, "\n")
        clock.now += 5
        keys.verify(canary)
    assert caplog.records  # it did log (loads, reloads) ...
    assert "CANARY" not in caplog.text  # ... but never a key
    assert all("CANARY" not in repr(r.args) for r in caplog.records)


@pytest.mark.parametrize(
    ("authorization", "x_api_key", "expected"),
    [
        ("Bearer sk-1", None, "sk-1"),
        ("bearer   sk-1  ", None, "sk-1"),
        ("Basic dXNlcjpwYXNz", None, None),
        ("Bearer ", None, None),
        (None, "sk-2", "sk-2"),
        ("Bearer sk-1", "sk-2", "sk-1"),
        (None, None, None),
    ],
)
def test_presented_key(authorization: str | None, x_api_key: str | None, expected: str | None) -> None:
    assert presented_key(authorization, x_api_key) == expected


def test_parse_keys() -> None:
    assert parse_keys("a\r\n b \n\n#c\n  # d\n") == ["a", "b"]
