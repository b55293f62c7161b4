"""Start and stop hub processes (`smartregion serve`) — used by the demo and by tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from node.hubdir import ENDPOINT_FILE, HubDir


class LaunchError(RuntimeError):
    pass


@dataclass
class HubProcess:
    data_dir: Path
    passphrase: str
    grpc_port: int = 0
    http_port: int = 0
    insecure: bool = False
    log_path: Path | None = None
    process: subprocess.Popen | None = None
    endpoint: dict = field(default_factory=dict)

    def start(self, timeout: float = 30.0) -> HubProcess:
        hub_dir = HubDir(self.data_dir)
        hub_dir.clear_endpoint()
        env = dict(os.environ, SMARTREGION_PASSPHRASE=self.passphrase)
        args = [sys.executable, "-m", "node.app.cli.main", "serve", "--data-dir", str(self.data_dir),
                "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port)]
        if self.insecure:
            args.append("--insecure")
        self.log_path = self.log_path or self.data_dir / "run" / "hub.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        endpoint_file = hub_dir.file(ENDPOINT_FILE)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LaunchError(f"the hub in {self.data_dir} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                info = json.loads(endpoint_file.read_text())
                if info.get("pid") == self.process.pid:
                    self.endpoint = info
                    return self
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.05)
        self.stop()
        raise LaunchError(f"the hub in {self.data_dir} did not start within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AttributeError):
            return ""

    @staticmethod
    def stop_all(processes: list[HubProcess], timeout: float = 15.0) -> None:
        """SIGTERM every hub first, then wait for each: shutting down a region takes as long as
        its slowest hub, not the sum of all."""
        for process in processes:
            if process.process is not None and process.process.poll() is None:
                process.process.send_signal(signal.SIGTERM)
        for process in processes:
            process.stop(timeout, signalled=True)

    def stop(self, timeout: float = 15.0, *, signalled: bool = False) -> int | None:
        """SIGTERM (unless already sent: a second one would cut the clean shutdown short), wait
        for a clean exit; SIGKILL if it does not come."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        if not signalled:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
