"""The partner's known-hubs file (federation/known_hubs.py): real files, real key histories."""

from __future__ import annotations

import json
import stat

import pytest

from federation.known_hubs import KnownHubs, KnownHubsError, path_beside
from node import identity
from node.clock import ManualClock


def _histories(rotations: int) -> list[identity.HubIdentity]:
    """One hub after 0, 1, ... `rotations` rotations."""
    clock = ManualClock(1_700_000_000_000)
    found = [identity.generate(clock=clock)]
    for _ in range(rotations):
        clock.advance(60_000)
        found.append(found[-1].rotated(clock))
    return found


def test_a_longer_history_is_kept_across_instances_in_a_0600_file_and_a_shorter_one_refused(tmp_path):
    hub = _histories(2)
    path = path_beside(tmp_path / "partner.key")
    assert path.name == "partner.key.known-hubs.json"
    known = KnownHubs(path)
    known.remember(hub[0].chain())  # a hub that never rotated: its genesis key alone
    assert KnownHubs(path).get(hub[0].hub_id_text) == hub[0].chain()
    known.remember(hub[2].chain())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = KnownHubs(path)
    assert again.get(hub[0].hub_id_text) == hub[2].chain()
    with pytest.raises(KnownHubsError, match=rf"1 rotations, fewer than the 2 .*{path.name}"):
        again.remember(hub[1].chain())
    assert KnownHubs(path).get(hub[0].hub_id_text) == hub[2].chain()  # unchanged on disk


def test_a_forked_history_is_refused(tmp_path):
    hub = _histories(1)
    fork = hub[0].rotated(ManualClock(1_700_000_000_000 + 120_000))  # the same old key signing another successor
    known = KnownHubs(tmp_path / "k.json")
    known.remember(hub[1].chain())
    with pytest.raises(KnownHubsError, match="a fork"):
        known.remember(fork.chain())


@pytest.mark.parametrize("damage", ["not json", "a flipped statement byte", "another genesis", "wrong format"])
def test_a_damaged_file_is_refused_naming_it(tmp_path, damage):
    hub = _histories(1)
    path = tmp_path / "k.json"
    KnownHubs(path).remember(hub[1].chain())
    document = json.loads(path.read_text())
    entry = document["hubs"][hub[0].hub_id_text]
    if damage == "not json":
        path.write_text("{")
    else:
        if damage == "a flipped statement byte":
            entry["history"][0] = entry["history"][0][:-2] + ("00" if entry["history"][0][-2:] != "00" else "11")
        elif damage == "another genesis":
            entry["genesis"] = _histories(0)[0].public_key_raw.hex()
        else:
            document["format"] = "something else"
        path.write_text(json.dumps(document))
    with pytest.raises(KnownHubsError, match=f"known-hubs file {path} is damaged"):
        KnownHubs(path)


def _example():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("python_partner", Path(__file__).parents[1] / "examples" / "python_partner.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_python_example_keeps_the_same_file_and_refuses_a_shorter_history(tmp_path):
    """examples/python_partner.py remember_history: the CLI's format (each reads the other's)
    and the same refusal of a replayed older history, naming the file."""
    example = _example()
    hub = _histories(2)
    path = tmp_path / "partner.key.known-hubs.json"
    hub_id, genesis = hub[0].hub_id_text, hub[0].public_key_raw
    example.remember_history(path, hub_id, genesis, [])
    example.remember_history(path, hub_id, genesis, list(hub[2].key_history))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KnownHubs(path).get(hub_id) == hub[2].chain()
    for replayed in ([], list(hub[1].key_history)):
        with pytest.raises(example.ClientError, match=f"does not continue the 2 remembered in {path}"):
            example.remember_history(path, hub_id, genesis, replayed)
    KnownHubs(path).remember(_histories(0)[0].chain())  # the CLI adds another hub; the example still reads the file
    example.remember_history(path, hub_id, genesis, list(hub[2].key_history))


def test_two_sessions_writing_the_same_file_keep_each_others_hubs(tmp_path):
    """Two `query run`s at once (each its own KnownHubs on one file): neither drops what the
    other remembered, and the longer history wins."""
    one, two = _histories(2), _histories(0)
    path = tmp_path / "k.json"
    first, second = KnownHubs(path), KnownHubs(path)
    first.remember(one[2].chain())
    second.remember(two[0].chain())  # second never saw hub one: it must not write it away
    again = KnownHubs(path)
    assert again.get(one[0].hub_id_text) == one[2].chain() and again.get(two[0].hub_id_text) == two[0].chain()
    with pytest.raises(KnownHubsError, match="fewer than the 2"):
        second.remember(one[1].chain())  # what first learned counts for second too
