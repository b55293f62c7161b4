"""`python -m bench.hubprofile OUT_DIR serve ...`: run the hub CLI under cProfile.

Profiles the event-loop (main) thread for the whole run, and the store-writer thread inside
SqliteStore.commit_frames; writes OUT_DIR/main.prof and OUT_DIR/writer.prof when the hub
exits (SIGTERM makes `serve` shut down cleanly). Used by `python -m bench.ingest --profile`.
"""

from __future__ import annotations

import cProfile
import sys
from pathlib import Path


def main() -> None:
    out = Path(sys.argv[1])
    args = sys.argv[2:]
    from node.storage import sqlite

    writer = cProfile.Profile()
    original = sqlite.SqliteStore.commit_frames

    def commit_frames(self, frames):
        writer.enable()
        try:
            return original(self, frames)
        finally:
            writer.disable()

    sqlite.SqliteStore.commit_frames = commit_frames
    from node.app.cli.main import app

    profile = cProfile.Profile()
    profile.enable()
    try:
        app(args, prog_name="smartregion")
    finally:
        profile.disable()
        profile.dump_stats(str(out / "main.prof"))
        writer.dump_stats(str(out / "writer.prof"))


if __name__ == "__main__":
    main()
