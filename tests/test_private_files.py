"""Private files and passphrases (issue 11, smaller items): temporary files with
unpredictable names opened O_EXCL|O_NOFOLLOW, so a planted symlink or file is never written
through; passphrases of few characters refused."""

from __future__ import annotations

import os
import stat

import pytest

from node import keystore
from node.fileio import write_private_file


def test_a_planted_symlink_at_the_old_predictable_temp_name_is_never_followed(tmp_path):
    """Before: the temp name was `.<name>.tmp-<pid>`, opened O_TRUNC without O_NOFOLLOW: a
    local attacker's symlink there made the hub write the secret into the attacker's file."""
    target = tmp_path / "keys.json"
    victim = tmp_path / "attacker-readable"
    victim.write_bytes(b"")
    os.symlink(victim, tmp_path / f".{target.name}.tmp-{os.getpid()}")
    write_private_file(target, b"secret")
    assert victim.read_bytes() == b"" and target.read_bytes() == b"secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing left behind


def test_temporary_names_are_unpredictable_and_created_exclusively(tmp_path, monkeypatch):
    names: list[tuple[str, int]] = []
    real_open = os.open

    def recording_open(path, flags, mode=0o777, **kwargs):
        names.append((os.fspath(path), flags))
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    for _ in range(3):
        write_private_file(tmp_path / "state.json", b"x")
    temps = [(name, flags) for name, flags in names if name.endswith(".tmp")]
    assert len({name for name, _ in temps}) == 3  # a new random name each time
    assert all(flags & os.O_EXCL and flags & os.O_NOFOLLOW and flags & os.O_CREAT for _, flags in temps)


def test_exclusive_never_replaces_a_file_that_appeared(tmp_path):
    path = tmp_path / "hub.toml"
    path.write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        write_private_file(path, b"mine", exclusive=True)
    assert path.read_bytes() == b"theirs"


def test_an_error_names_the_file(tmp_path):
    with pytest.raises(OSError) as err:
        write_private_file(tmp_path / "missing-dir" / "keys.json", b"x")
    assert "missing-dir" in str(err.value.filename)


@pytest.mark.parametrize("weak", ["aaaaaaaaaaaa", "abcabcabcabc", "aaaaaaaaaaaaaaaaaabcdef", "short-pass"])
def test_weak_passphrases_are_refused(weak):
    with pytest.raises(keystore.KeystoreError):
        keystore.check_passphrase_strength(weak.encode())


@pytest.mark.parametrize("good", ["test-passphrase-0123456789", "a long passphrase", "correct horse battery staple"])
def test_reasonable_passphrases_are_accepted(good):
    keystore.check_passphrase_strength(good.encode())
