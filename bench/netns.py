"""Hosts on one machine: Linux network namespaces joined by veth pairs to a bridge.

Recipe from PLATFORM.md §6 (needs root and ``ip``): a bridge lives in its own
namespace; host ``i`` gets namespace ``<tag>-h<i>`` with address
``198.18.1.<i+1>/24`` (198.18.0.0/15 is reserved for benchmarking and stays off
the host's own subnet). Both ends of every connection must run inside
namespaces. ``tc ... tbf`` limits a host's egress (``netem`` is not available
here). Names carry the creating process's PID, and :meth:`Lab.down` deletes
every namespace it made, which also removes their veth pairs. :class:`RayCluster`
runs a Ray head and workers on such hosts (docs/scale.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

from bench.flwr_cli import terminate


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def namespaces_available() -> str | None:
    """``None`` if namespaces can be made here, else the reason they cannot."""
    probe = f"fzprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return f"cannot create network namespaces ({detail.strip()}); needs root and iproute2"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


@dataclass
class Lab:
    """``hosts`` namespaces on one bridge; use as a context manager."""

    hosts: int
    tag: str = field(default_factory=lambda: f"fz{os.getpid()}")
    made: list[str] = field(default_factory=list)

    def ns(self, i: int) -> str:
        return f"{self.tag}-h{i}"

    def addr(self, i: int) -> str:
        return f"198.18.1.{i + 1}"

    def inode(self, i: int) -> int:
        """Inode of host ``i``'s network namespace (what ``/proc/self/ns/net`` shows inside)."""
        return os.stat(f"/run/netns/{self.ns(i)}").st_ino

    def dev(self, i: int) -> str:
        return f"v{self.tag[2:]}h{i}"[:15]  # interface names are at most 15 bytes

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        bridge = f"{self.tag}-br"
        _ip("netns", "add", bridge)
        self.made.append(bridge)
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        for i in range(self.hosts):
            ns, dev, peer = self.ns(i), self.dev(i), f"{self.dev(i)}b"[:15]
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("link", "add", dev, "type", "veth", "peer", "name", peer)
            _ip("link", "set", dev, "netns", ns)
            _ip("link", "set", peer, "netns", bridge)
            _ip("-n", bridge, "link", "set", peer, "master", "br0")
            _ip("-n", bridge, "link", "set", peer, "up")
            _ip("-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def limit(self, i: int, rate: str = "8mbit") -> None:
        """Token-bucket limit on host ``i``'s egress (``tc qdisc ... tbf``)."""
        subprocess.run(
            ["ip", "netns", "exec", self.ns(i), "tc", "qdisc", "add", "dev", self.dev(i),
             "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms"],
            check=True, capture_output=True, timeout=30,
        )

    def qdisc(self, i: int) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(i), "tc", "qdisc", "show", "dev", self.dev(i)],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout

    def counters(self, i: int) -> tuple[int, int]:
        """(rx, tx) bytes of host ``i``'s veth."""
        stats = f"/sys/class/net/{self.dev(i)}/statistics"
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns(i), "cat", f"{stats}/rx_bytes", f"{stats}/tx_bytes"],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout.split()
        return int(out[0]), int(out[1])

    def down(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.made.clear()


class RayCluster:
    """A Ray cluster over a :class:`Lab`: the head on host 0, a worker on each host after it.

    Every node is ``ray start --block`` inside its namespace with
    ``--node-ip-address`` set to the host's address (Ray's own detection needs a
    route to 8.8.8.8), ``cpus`` CPUs and a small object store. The processes carry
    a marker in their environment, inherited by the raylets and every worker and
    actor they spawn, and :meth:`stop` ends exactly those (never ``ray stop``,
    which would end every Ray on the machine). ``node_env[i]`` adds variables to
    node ``i`` (e.g. its own ``XDG_CACHE_HOME``).
    """

    def __init__(
        self,
        lab: Lab,
        nodes: int,
        workdir: str,
        cpus: int = 1,
        port: int = 6379,
        node_env: dict[int, dict[str, str]] | None = None,
    ) -> None:
        self.lab, self.nodes, self.workdir, self.cpus, self.port = lab, nodes, workdir, cpus, port
        self.node_env = node_env or {}
        self.marker = uuid.uuid4().hex
        self.ray = os.path.join(os.path.dirname(sys.executable), "ray")
        self.env = {**os.environ, "FZ_RAY_CLUSTER": self.marker, "RAY_TMPDIR": workdir,
                    "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}

    @property
    def address(self) -> str:
        """What ``RAY_ADDRESS`` (and ``ray start --address``) takes: the head's GCS."""
        return f"{self.lab.addr(0)}:{self.port}"

    def __enter__(self) -> RayCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        for i in range(self.nodes):
            role = (["--head", "--port", str(self.port), "--include-dashboard", "false"]
                    if i == 0 else ["--address", self.address])
            with open(os.path.join(self.workdir, f"node{i}.log"), "w") as log:
                subprocess.Popen(
                    ["ip", "netns", "exec", self.lab.ns(i), self.ray, "start", *role,
                     "--node-ip-address", self.lab.addr(i), "--num-cpus", str(self.cpus),
                     "--object-store-memory", str(100 * 2**20), "--disable-usage-stats", "--block"],
                    env={**self.env, **self.node_env.get(i, {})}, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
            if i == 0:
                time.sleep(3)  # the workers dial the head's GCS
        self.wait_for_nodes(timeout)

    def wait_for_nodes(self, timeout: float) -> None:
        """Block until all nodes are alive, seen from a driver in the head's namespace."""
        probe = (
            "import sys, time, ray\n"
            f"ray.init(address={self.address!r}, logging_level='ERROR')\n"
            f"end = time.time() + {timeout}\n"
            f"while len([n for n in ray.nodes() if n['Alive']]) < {self.nodes}:\n"
            "    if time.time() > end: sys.exit(1)\n"
            "    time.sleep(0.5)\n"
        )
        proc = subprocess.run(
            ["ip", "netns", "exec", self.lab.ns(0), sys.executable, "-c", probe],
            env=self.env, capture_output=True, text=True, timeout=timeout + 60,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"the Ray cluster did not come up:\n{proc.stderr[-2000:]}{self.tails()}")

    def tails(self) -> str:
        out = []
        for i in range(self.nodes):
            path = os.path.join(self.workdir, f"node{i}.log")
            if os.path.exists(path):
                with open(path) as f:
                    out.append(f"--- node {i}\n{f.read()[-1500:]}")
        return "\n".join(out)

    def stop(self) -> None:
        terminate("FZ_RAY_CLUSTER", self.marker)
