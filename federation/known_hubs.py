"""What a partner remembers between sessions: per hub id, the longest key history it has
verified (docs/querying.md, "Partners remember hub key histories").

Without it every session would start from nothing, and a stolen copy of a hub's data
directory made before a rotation could answer as the hub: its shorter history is valid from
the genesis key. With it, a session passes the remembered history as `known` to
peers.fetch_descriptor, so a shorter or forked history is refused as peers refuse it.

The file (`<partner key file>.known-hubs.json`, 0600, replaced atomically) holds, per hub id,
its genesis key and its rotation statements, hex-encoded; every entry is verified again when
read (node/keychain.py), so a damaged or edited file is refused, naming it, rather than
trusted. A history is stored only when it continues the one stored (never shortened)."""

from __future__ import annotations

import json
from pathlib import Path

from node.fileio import write_private_file
from node.keychain import MAX_ROTATIONS, ChainError, KeyChain

FORMAT = "smartregion-known-hubs"
MAX_HUBS = 10_000  # a bound on what is parsed: far more hubs than a region has
MAX_FILE_BYTES = 64 * 1024 * 1024  # 10 000 hubs would need ~MAX_ROTATIONS rotations each to fill it


class KnownHubsError(ValueError):
    """The known-hubs file cannot be used, or a hub's history does not continue the one in it."""


def path_beside(partner_key_file: Path) -> Path:
    return Path(partner_key_file).with_name(Path(partner_key_file).name + ".known-hubs.json")


class KnownHubs:
    """Remembered key histories; `path` None keeps them in memory only (for this process)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._chains: dict[str, KeyChain] = self._read() if self.path is not None else {}

    @property
    def where(self) -> str:
        return str(self.path) if self.path is not None else "this process's memory (no known-hubs file)"

    def get(self, hub_id: str) -> KeyChain | None:
        return self._chains.get(hub_id)

    def remember(self, chain: KeyChain) -> None:
        """Store `chain` if it continues the stored one and is longer; raise KnownHubsError for a
        shorter (replayed) or forked history, naming the file."""
        hub_id = chain.hub_id_text
        if self.path is not None:  # another session (another `query run`) may have learned more meanwhile
            self._merge(self._read())
        stored = self._chains.get(hub_id)
        if stored is not None:
            try:
                stored.check_successor(chain)
            except ChainError as exc:
                raise KnownHubsError(f"hub {hub_id}: {exc}; the longer history this partner verified before is in "
                                     f"{self.where}") from None
            if len(chain.statements) == len(stored.statements):
                return
        self._chains[hub_id] = chain
        self._write()

    def _merge(self, found: dict[str, KeyChain]) -> None:
        """Take each history of `found` that continues the one held and is longer."""
        for hub_id, chain in found.items():
            held = self._chains.get(hub_id)
            if held is None:
                self._chains[hub_id] = chain
                continue
            try:
                held.check_successor(chain)
            except ChainError:
                continue  # shorter or forked: what is held stays (remember() refuses against it)
            self._chains[hub_id] = chain

    def _read(self) -> dict[str, KeyChain]:
        assert self.path is not None
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise KnownHubsError(f"cannot read the known-hubs file {self.path}: {exc}") from None
        if len(data) > MAX_FILE_BYTES:
            raise KnownHubsError(f"the known-hubs file {self.path} is {len(data)} bytes, more than {MAX_FILE_BYTES}")
        try:
            document = json.loads(data)
            if document.get("format") != FORMAT or document.get("version") != 1:
                raise ValueError(f"it is not a {FORMAT} file of version 1")
            hubs = document["hubs"]
            if not isinstance(hubs, dict) or len(hubs) > MAX_HUBS:
                raise ValueError(f"`hubs` must be an object of at most {MAX_HUBS} hubs")
            chains = {}
            for hub_id, entry in hubs.items():
                history = entry["history"]
                if not isinstance(history, list) or len(history) > MAX_ROTATIONS:
                    raise ValueError(f"hub {hub_id}: `history` must be a list of at most {MAX_ROTATIONS} statements")
                genesis = bytes.fromhex(entry["genesis"])
                chain = KeyChain.verify(hub_id, [bytes.fromhex(s) for s in history],
                                        current_key=None if history else genesis)
                if chain.genesis != genesis:
                    raise ValueError(f"hub {hub_id}: the history does not start at the genesis key stored")
                chains[hub_id] = chain
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # ChainError and JSONDecodeError are ValueErrors
            raise KnownHubsError(f"the known-hubs file {self.path} is damaged ({exc}): move it away only if you know "
                                 "why; it is what stops a hub's replayed older key history") from None
        return chains

    def _write(self) -> None:
        if self.path is None:
            return
        document = {"format": FORMAT, "version": 1, "hubs": {
            hub_id: {"genesis": chain.genesis.hex(), "history": [s.hex() for s in chain.encoded()]}
            for hub_id, chain in sorted(self._chains.items())}}
        write_private_file(self.path, json.dumps(document, indent=1).encode())
