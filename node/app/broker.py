"""A Mosquitto broker (Debian's package) run by smartregion itself: for the demo's LoRaWAN
station and the tests. Loopback only, anonymous, persistence on (a restart keeps the queued
QoS 1 messages of persistent sessions). Production brokers are the network's, not this."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in MOSQUITTO_PATHS if Path(p).exists()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Mosquitto:
    def __init__(self, directory: Path, port: int | None = None, listener_options: str = "", anonymous: bool = True) -> None:
        """`listener_options`: more lines for the listener (TLS: cafile, certfile, keyfile,
        require_certificate ...)."""
        binary = mosquitto_binary()
        if binary is None:
            raise FileNotFoundError("Debian's mosquitto is not installed (`make mosquitto` installs it)")
        self.binary = binary
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config = self.directory / "mosquitto.conf"
        # `user root`: as root, mosquitto would switch to its own user, which cannot write here.
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n{listener_options}\nallow_anonymous {'true' if anonymous else 'false'}\npersistence true\n"
            f"persistence_location {self.directory}/\nautosave_interval 1\nlog_dest file {self.directory}/mosquitto.log\n"
            "max_queued_messages 100000\nuser root\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> Mosquitto:
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.process.poll() is not None:
                    log_file = self.directory / "mosquitto.log"
                    log = log_file.read_text(errors="replace") if log_file.exists() else ""
                    raise RuntimeError(f"mosquitto exited: {log}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: mosquitto saves its persistence file, then exits
            self.process.wait(timeout=20)
        self.process = None
