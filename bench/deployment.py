"""A real Flower deployment on one machine: a SuperLink and N SuperNodes as processes.

Used by the deployment tests and benchmarks, and runnable as a demo::

    python -m bench.deployment --nodes 3 --tls --run-config 'num-server-rounds=2 data.dataset="digits"'

Every process gets a marker in its environment (``FEDZG_DEPLOYMENT``), which the
SuperExec, ServerApp and ClientApp processes it spawns inherit (a SuperExec starts
its own session, and a ServerApp can outlive its SuperExec, so process groups
and trees miss some); :meth:`Deployment.stop` ends exactly the processes with
this deployment's marker, by PID. Ports are
picked free, the Flower CLI gets a private ``FLWR_HOME`` with one connection
(``fedzg``) in its ``config.toml``, and runtime dependency installation is
disabled (nodes are set up ahead). With ``netns`` the SuperLink and each
SuperNode run inside Linux network namespaces (:mod:`bench.netns`).

Every wait is bounded; a helper that times out raises with the tail of the
process logs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.flwr_cli import free_port, pids_with_env, terminate

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONNECTION = "fedzg"
MAKE_CERTS = ROOT / "scripts" / "make-certs.sh"
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def toml_value(value: Any) -> str:
    """One TOML scalar, as ``--node-config``/``--run-config`` expect."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def config_string(values: dict[str, Any]) -> str:
    """``{"partition-id": 0, "trainer": "fo"}`` -> ``partition-id=0 trainer="fo"``."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in values.items())


def process_table() -> dict[int, int]:
    """Live PIDs and their parent PIDs."""
    table: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(proc.name)] = int(fields[1])
    return table


def descendants(pid: int, table: dict[int, int] | None = None) -> list[int]:
    """``pid`` and every live process below it."""
    table = table if table is not None else process_table()
    children: dict[int, list[int]] = {}
    for child, parent in table.items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        if current in table:
            found.append(current)
        todo.extend(children.get(current, []))
    return found


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the process's own peak resident set."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    try:
        return int((Path(f"/proc/{pid}/statm").read_text().split()[1])) * PAGE_KIB
    except (OSError, IndexError):
        return 0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@dataclass
class Proc:
    """One long-running Flower process we started."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    peak_tree_kib: int = 0  # peak summed RSS of the daemon and the processes it spawned
    peak_self_kib: int = 0  # the daemon's own peak RSS (VmHWM)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def tree(self) -> list[int]:
        return descendants(self.pid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal this process and everything it spawned."""
        for pid in self.tree():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


@dataclass
class Deployment:
    """SuperLink + SuperNodes as local processes; use as a context manager.

    Parameters
    ----------
    workdir : Path
        Logs, certificates, the Flower home and the SuperLink database go here.
    tls : bool
        Serve the SuperLink over TLS with a private CA (``scripts/make-certs.sh``).
    auth : bool
        Require SuperNode authentication (needs ``tls``); keys are registered
        with ``flwr supernode register`` before the node starts.
    superlink_netns : str or None
        Run the SuperLink (and the Flower CLI) inside this network namespace.
    dial_host : str
        The address SuperNodes dial (a SAN of the server certificate).
    database : bool
        Keep the SuperLink's state in ``superlink.db`` (SQLite) instead of memory. Under
        heavy load SQLite answered pushes with "database is locked" (HTTP 500), and the
        SuperNode dropped that reply, so the default is Flower's in-memory state.
    """

    workdir: Path
    tls: bool = False
    auth: bool = False
    superlink_netns: str | None = None
    dial_host: str = "127.0.0.1"
    database: bool = False
    procs: list[Proc] = field(default_factory=list)
    port: int = 0
    _sampler: threading.Thread | None = None
    _stop_sampling: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if self.auth and not self.tls:
            raise ValueError("SuperNode authentication needs TLS (flower-superlink refuses it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(exist_ok=True)
        self.certs = self.workdir / "certs"
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "FEDZG_DEPLOYMENT": str(self.workdir.resolve()),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- processes -----------------------------------------------------------------------

    def _spawn(self, name: str, argv: Sequence[str], netns: str | None = None) -> Proc:
        prefix = ["ip", "netns", "exec", netns] if netns else []
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [*prefix, *argv], cwd=self.workdir, env=self.env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def make_certs(self, node_names: Sequence[str], extra_sans: Sequence[str] = ()) -> None:
        sans = ",".join(["DNS:localhost", "IP:127.0.0.1", f"IP:{self.dial_host}", *extra_sans])
        subprocess.run(
            ["bash", str(MAKE_CERTS), str(self.certs), sans, *node_names],
            check=True, capture_output=True, timeout=120,
        )

    def start_superlink(self, host: str = "127.0.0.1", timeout: float = 60) -> Proc:
        """Start ``flower-superlink`` and write the ``fedzg`` connection for the CLI."""
        self.port = free_port()
        argv = [
            str(BIN / "flower-superlink"), "--host", host, "--port", str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        if self.database:
            argv += ["--database", str(self.workdir / "superlink.db")]
        if self.tls:
            argv += ["--ssl-ca-certfile", str(self.certs / "ca.crt"),
                     "--ssl-certfile", str(self.certs / "server.pem"),
                     "--ssl-keyfile", str(self.certs / "server.key")]
        else:
            argv.append("--insecure")
        if self.auth:
            argv.append("--enable-supernode-auth")
        proc = self._spawn("superlink", argv, self.superlink_netns)
        self._write_connection()
        self._until(lambda: self.flwr("ls", check=False).returncode == 0, timeout,
                    "SuperLink did not answer `flwr ls`", proc)
        self._start_sampler()
        return proc

    def _write_connection(self) -> None:
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f'address = "127.0.0.1:{self.port}"']
        lines.append(f'root-certificates = "{self.certs / "ca.crt"}"' if self.tls
                     else "insecure = true")
        (self.home / "config.toml").write_text("\n".join(lines) + "\n")

    def flwr(self, *args: str, check: bool = True, timeout: float = 120
             ) -> subprocess.CompletedProcess[str]:
        """Run a ``flwr`` CLI command against this deployment's connection."""
        prefix = ["ip", "netns", "exec", self.superlink_netns] if self.superlink_netns else []
        return subprocess.run(
            [*prefix, str(BIN / "flwr"), *args], cwd=ROOT, env=self.env, capture_output=True,
            text=True, timeout=timeout, check=check,
        )

    def register(self, public_key: Path) -> str:
        """``flwr supernode register KEY.pub fedzg``; returns the command's output."""
        out = self.flwr("supernode", "register", str(public_key), CONNECTION)
        return out.stdout + out.stderr

    def add_supernode(
        self,
        name: str,
        node_config: dict[str, Any],
        *,
        netns: str | None = None,
        key: Path | None = None,
        root_certificates: Path | None = None,
        extra: Sequence[str] = (),
    ) -> Proc:
        """Start ``flower-supernode`` with this node-config (and key, under auth)."""
        argv = [
            str(BIN / "flower-supernode"), "--superlink", f"{self.dial_host}:{self.port}",
            "--port", str(free_port()), "--node-config", config_string(node_config), *extra,
        ]
        if self.tls:
            argv += ["--root-certificates", str(root_certificates or self.certs / "ca.crt")]
        elif root_certificates is None:
            argv.append("--insecure")
        if key is not None:
            argv += ["--auth-supernode-private-key", str(key)]
        return self._spawn(name, argv, netns)

    def online_nodes(self) -> int:
        out = self.flwr("supernode", "list", CONNECTION, "--format", "json", check=False)
        try:
            nodes = json.loads(out.stdout).get("nodes", [])
        except json.JSONDecodeError:
            return 0
        return sum(str(n.get("status", "")).lower() == "online" for n in nodes)

    def wait_for_nodes(self, count: int, timeout: float = 90) -> None:
        self._until(lambda: self.online_nodes() >= count, timeout,
                    f"fewer than {count} SuperNodes came online", *self.procs)

    # --- runs --------------------------------------------------------------------------

    def start_run(self, run_config: str, log: Path | None = None) -> subprocess.Popen[str]:
        """``flwr run . fedzg --stream`` in the background."""
        prefix = ["ip", "netns", "exec", self.superlink_netns] if self.superlink_netns else []
        out = (log or self.workdir / "flwr-run.log").open("w")
        return subprocess.Popen(
            [*prefix, str(BIN / "flwr"), "run", ".", CONNECTION, "--run-config", run_config,
             "--stream"],
            cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )

    def run(self, run_config: str, timeout: float = 300) -> tuple[dict[str, Any], str]:
        """Run to the end; returns the run's ``flwr list`` entry and the streamed log."""
        log_path = self.workdir / f"flwr-run-{time.monotonic_ns()}.log"
        popen = self.start_run(run_config, log_path)
        try:
            popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(10)
            raise TimeoutError(f"flwr run exceeded {timeout} s:\n{log_path.read_text()[-4000:]}"
                               f"\n{self.tails()}") from None
        log = log_path.read_text(errors="replace")
        return self.run_entry(self.run_id(log)), log

    @staticmethod
    def run_id(log: str) -> str:
        for line in log.splitlines():
            if "Successfully started run" in line:
                return line.split()[-1]
        raise RuntimeError(f"flwr run did not start:\n{log[-3000:]}")

    def run_entry(self, run_id: str) -> dict[str, Any]:
        listing = self.flwr("list", CONNECTION, "--format", "json")
        runs = json.loads(listing.stdout)["runs"]
        return next(r for r in runs if str(r["run-id"]) == str(run_id))

    def own_pids(self) -> list[int]:
        """Every live process started by this deployment (by its environment marker)."""
        return pids_with_env("FEDZG_DEPLOYMENT", self.env["FEDZG_DEPLOYMENT"])

    def serverapp_pids(self) -> list[int]:
        return [pid for pid in self.own_pids() if "flwr-serverapp" in cmdline(pid)]

    # --- measurement and cleanup -------------------------------------------------------

    def _start_sampler(self, every_s: float = 0.5) -> None:
        def sample() -> None:
            while not self._stop_sampling.wait(every_s):
                table = process_table()
                for proc in list(self.procs):
                    kib = sum(rss_kib(pid) for pid in descendants(proc.pid, table))
                    proc.peak_tree_kib = max(proc.peak_tree_kib, kib)
                    proc.peak_self_kib = max(proc.peak_self_kib, peak_rss_kib(proc.pid))

        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()

    def peak_memory_mib(self) -> dict[str, dict[str, float]]:
        """Peak RSS per daemon: alone (VmHWM) and with what it spawned (sampled, summed)."""
        return {p.name: {"self": round(p.peak_self_kib / 1024, 1),
                         "with-children": round(p.peak_tree_kib / 1024, 1)}
                for p in self.procs}

    def tails(self) -> str:
        return "\n".join(f"--- {p.name} (rc {p.popen.poll()}) ---\n{p.tail(1500)}"
                         for p in self.procs)

    def _until(self, ok: Any, timeout: float, what: str, *watch: Proc) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ok():
                return
            dead = [p for p in watch if not p.alive()]
            if dead and dead[0].name == "superlink":
                break
            time.sleep(0.5)
        raise TimeoutError(f"{what} within {timeout:g} s\n{self.tails()}")

    def stop(self) -> None:
        """End every process of this deployment, by PID: SIGTERM, then SIGKILL."""
        self._stop_sampling.set()
        terminate("FEDZG_DEPLOYMENT", self.env["FEDZG_DEPLOYMENT"], graces=(10.0, 5.0))
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def node_configs(trainers: Sequence[str], data: dict[str, Any] | None = None
                 ) -> list[dict[str, Any]]:
    """Node-configs for ``len(trainers)`` partitions, one trainer each."""
    n = len(trainers)
    return [{"partition-id": i, "num-partitions": n, "trainer": t, **(data or {})}
            for i, t in enumerate(trainers)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--trainers", default="", help="comma-separated, one per node")
    parser.add_argument("--tls", action="store_true", help="TLS with SuperNode authentication")
    parser.add_argument("--run-config", default="", help="extra --run-config for flwr run")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    trainers = args.trainers.split(",") if args.trainers else ["fo"] * args.nodes
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fedzg-deploy-"))
    names = [f"node-{i}" for i in range(len(trainers))]
    with Deployment(workdir, tls=args.tls, auth=args.tls) as dep:
        if args.tls:
            dep.make_certs(names)
        dep.start_superlink()
        for name, cfg in zip(names, node_configs(trainers), strict=True):
            key = None
            if args.tls:
                print(dep.register(dep.certs / f"{name}.pub").strip())
                key = dep.certs / name
            dep.add_supernode(name, cfg, key=key)
        t0 = time.monotonic()
        rc = f'output-dir="{workdir / "results"}" {args.run_config}'.strip()
        entry, log = dep.run(rc, timeout=args.timeout)
        print(log[-2000:])
        print(json.dumps({"status": entry["status"], "wall-s": round(time.monotonic() - t0, 1),
                          "peak-rss-mib": dep.peak_memory_mib(), "workdir": str(workdir)}))
        return 0 if entry["status"] == "finished:completed" else 1


if __name__ == "__main__":
    sys.exit(main())
