"""Drive the real ``flwr`` CLI against a private local SuperLink (benchmarks and e2e tests).

``flwr run`` on the ``:local:`` connection starts a detached SuperLink that
outlives the command and keeps the environment of the call that started it
(PLATFORM.md §3). :class:`FlwrCli` gives it its own Flower home, ports and Ray
temp dir, disables runtime dependency installation, reads the run's status from
``flwr list`` (``--stream`` exits 0 even when a run fails), and kills every
process it started by PID in :meth:`stop`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FLWR = str(Path(sys.executable).parent / "flwr")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pids_with_env(key: str, value: str) -> list[int]:
    """PIDs of processes whose environment holds ``key=value``."""
    needle, pids = f"{key}={value}".encode(), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def terminate(key: str, value: str, graces: tuple[float, float] = (15.0, 5.0)) -> None:
    """SIGTERM, then SIGKILL, every process whose environment holds ``key=value``.

    Waits up to ``graces[i]`` seconds after each signal for them to be gone; processes
    started meanwhile under the same marker are caught by the second round.
    """
    for sig, grace in zip((signal.SIGTERM, signal.SIGKILL), graces, strict=True):
        for pid in pids_with_env(key, value):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and pids_with_env(key, value):
            time.sleep(0.2)


class FlwrCli:
    """Runs ``flwr`` commands against one private local SuperLink; use as a context manager."""

    def __init__(
        self,
        home: Path | None = None,
        netns: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        """``netns``: run every ``flwr`` command (and so the SuperLink) in that network
        namespace; ``extra_env`` (e.g. ``RAY_ADDRESS``) reaches the SuperLink and
        the simulation it starts."""
        self._own_home = home is None
        self._prefix = ["ip", "netns", "exec", netns] if netns else []
        self.home = Path(home or tempfile.mkdtemp(prefix="flwr-home-"))
        self.ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths stay short
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
            "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "RAY_TMPDIR": self.ray_tmp,
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **(extra_env or {}),
        }

    def __enter__(self) -> FlwrCli:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(
        self, run_config: str, federation: str, timeout: float = 600, app: Path = ROOT
    ) -> tuple[dict[str, Any], str]:
        """``flwr run <app> --stream`` (default: fedzg); returns the run's ``flwr list``
        entry and its log."""
        proc = subprocess.run(
            [*self._prefix, FLWR, "run", str(app), "--run-config", run_config,
             "--federation-config", federation, "--stream"],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout,
        )
        log = proc.stdout + proc.stderr
        run_id = next(
            (ln.split()[-1] for ln in log.splitlines() if "Successfully started run" in ln), None
        )
        if run_id is None:
            raise RuntimeError(f"flwr run did not start:\n{log[-3000:]}")
        listing = subprocess.run(
            [*self._prefix, FLWR, "list", "--format", "json"], cwd=ROOT, env=self.env,
            capture_output=True, text=True, timeout=60,
        )
        runs = json.loads(listing.stdout)["runs"]
        return next(r for r in runs if r["run-id"] == run_id), log

    def stop(self) -> None:
        """Terminate every process started with this Flower home, then clean up."""
        terminate("FLWR_HOME", str(self.home))
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
        if self._own_home:
            shutil.rmtree(self.home, ignore_errors=True)
