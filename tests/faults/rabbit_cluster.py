"""A RabbitMQ cluster of the test's own: three nodes on loopback, never the machine's.

Each node has its own name (``nt-rmq<N>-<run>@localhost``), AMQP and distribution
ports, Mnesia and log directories under the test's temporary directory, no plugins
(no management listener), and the cluster's own Erlang cookie (given to the server
and to every CLI call; ``HOME`` points at the cluster's directory). The machine's
``/etc/rabbitmq/rabbitmq-env.conf`` is replaced by an empty file, so nothing of the
machine's node (``rabbit@localhost``, port 5672) is read or touched. :meth:`close`
kills every process the cluster started and removes its directory, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SBIN = Path("/usr/lib/rabbitmq/bin")


def rabbitmq_missing() -> str | None:
    """Why a cluster cannot be started here, or None."""
    for tool in ("rabbitmq-server", "rabbitmqctl"):
        if not (SBIN / tool).exists() and shutil.which(tool) is None:
            return f"{tool} is not installed: the RabbitMQ cluster fault test needs it"
    return None


def _tool(name: str) -> str:
    return str(SBIN / name) if (SBIN / name).exists() else name


def _free_ports(count: int, low: int = 21000, high: int = 29000) -> list[int]:
    """Free loopback ports; the distribution port + 10000 (the CLI's) must stay valid."""
    found: list[int] = []
    port = low + secrets.randbelow(high - low - 200)
    while len(found) < count:
        port += 1
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
    return found


class RabbitNode:
    def __init__(self, cluster: RabbitCluster, index: int, amqp_port: int, dist_port: int):
        self.cluster = cluster
        self.name = f"nt-rmq{index}-{cluster.run}@localhost"
        self.amqp_port = amqp_port
        self.dist_port = dist_port
        self.base = cluster.base / f"node{index}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            **self.cluster.env,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "pid"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
        }

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            # A small machine: keep RabbitMQ from pausing publishers for memory or disk.
            "vm_memory_high_watermark.relative = 0.8\n"
            "disk_free_limit.absolute = 10MB\n"
        )
        with (self.base / "server.log").open("ab") as out:
            self.process = subprocess.Popen(
                [_tool("rabbitmq-server")],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: kill9 takes every process of it
            )

    def ctl(self, *args: str, timeout: float = 60, tool: str = "rabbitmqctl") -> str:
        done = subprocess.run(
            [
                _tool(tool),
                "-q",
                "-n",
                self.name,
                "--erlang-cookie",
                self.cluster.cookie,
                *args,
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} on {self.name}: {done.stderr.strip()}"
            )
        return done.stdout

    def quorum_critical(self) -> bool:
        """Whether some quorum queue would lose its majority without this node (so a
        second node must not go down yet)."""
        try:
            self.ctl("check_if_node_is_quorum_critical", tool="rabbitmq-queues")
        except RuntimeError:
            return True
        return False

    def wait_started(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.base / 'server.log'}")
            try:
                self.ctl("await_startup", "--timeout", "30", timeout=40)
                return
            except (RuntimeError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def kill9(self) -> None:
        """SIGKILL to the node's Erlang VM and everything it started."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.amqp_port}"


class RabbitCluster:
    def __init__(self, base: Path, size: int = 3) -> None:
        self.run = secrets.token_hex(3)
        self.base = base / f"rabbit-cluster-{self.run}"
        self.base.mkdir(parents=True)
        self.cookie = secrets.token_hex(16).upper()
        (self.base / ".erlang.cookie").write_text(self.cookie)
        (self.base / ".erlang.cookie").chmod(0o400)
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "enabled_plugins").write_text("[].\n")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(self.base),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"-setcookie {self.cookie}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        ports = _free_ports(size * 2)
        self.nodes = [RabbitNode(self, i + 1, ports[2 * i], ports[2 * i + 1]) for i in range(size)]

    def start(self) -> RabbitCluster:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_started()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.name)
            node.ctl("start_app")
        return self

    def broker_url(self, vhost: str = "") -> str:
        return "amqp://guest:guest@" + ",".join(n.url for n in self.nodes) + "/" + vhost

    def alive(self) -> list[RabbitNode]:
        return [n for n in self.nodes if n.process is not None]

    def node_named(self, name: str) -> RabbitNode:
        return next(n for n in self.nodes if n.name == name)

    def leader(self, queue: str) -> RabbitNode:
        """The node leading a quorum queue, as a live node sees it."""
        out = self.alive()[0].ctl("list_queues", "name", "leader", "--no-table-headers")
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[0] == queue:
                return self.node_named(parts[1].strip())
        raise LookupError(f"no leader listed for {queue}: {out!r}")

    def describe_queues(self) -> str:
        """Each queue's messages, consumers, leader and online members (diagnostics)."""
        return self.alive()[0].ctl(
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
            "leader",
            "online",
        )

    def close(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill9()
        shutil.rmtree(self.base, ignore_errors=True)
