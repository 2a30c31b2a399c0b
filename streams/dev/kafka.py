"""A real Apache Kafka cluster (KRaft mode) on loopback, without Docker.

This module holds:

* ``ensure_jars()`` - resolves the broker's class path from the official jars
  on Maven Central, as listed in ``streams/dev/kafka-pom.xml``, with
  ``mvn dependency:copy-dependencies`` into a cache directory outside the
  repository (``~/.cache/greenchannel/kafka-<version>/libs``, or
  ``$GC_KAFKA_HOME/libs``). A marker file records a complete copy, so later
  calls skip Maven entirely; ``~/.m2`` caches the downloads themselves.
* ``KafkaCluster`` - N combined broker+controller nodes (``kafka.Kafka``), one
  JVM each, with a static controller quorum (``controller.quorum.voters``),
  storage formatted by ``kafka.tools.StorageTool`` with one shared cluster id.
  ``start()`` returns once every node's metadata lists every broker; single
  nodes can be stopped, killed and restarted with their data kept.
* ``KafkaCluster(..., secure=SecureDir, acls=[...])`` - the same nodes with one
  SASL_SSL listener for clients and brokers (SCRAM-SHA-512; the admin, a super
  user, between brokers), a SASL_SSL controller listener (PLAIN: KRaft
  controllers cannot use SCRAM), the StandardAuthorizer denying what no ACL
  allows, the principals' SCRAM credentials added at format time and the ACLs
  created by the admin once the nodes are up (``streams/dev/SecureSetup.java``:
  aiokafka has no CreateAcls). No plain-text listener. ``connection`` is the
  admin's, ``connection_as(principal)`` another's (``streams/dev/secure.py``).
* ``main(argv)`` - ``python -m streams.dev.kafka --nodes 3 [--port N]``: starts a
  cluster, prints its bootstrap servers on one line of stdout, and stops it
  cleanly on SIGTERM/SIGINT (``greenchannel broker --kind kafka`` calls it).

Readiness is checked with raw Kafka protocol requests (ApiVersions, Metadata)
over a blocking socket, so ``start()`` works with or without a running asyncio
loop in the caller; async code can use ``await cluster.astart()``.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..connection import Connection

if TYPE_CHECKING:
    from .secure import SecureDir

__all__ = ["KAFKA_VERSION", "KafkaCluster", "KafkaError", "ensure_jars", "kafka_home", "main"]

POM = Path(__file__).with_name("kafka-pom.xml")
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
_MARKER = ".complete"

SERVER_MAIN = "kafka.Kafka"
STORAGE_TOOL_MAIN = "kafka.tools.StorageTool"

# Heap and GC of each node: small so that 3 nodes fit beside the tests on a
# 2-core machine. GC_KAFKA_HEAP_OPTS / GC_KAFKA_JVM_OPTS override them.
DEFAULT_HEAP_OPTS = "-Xmx512m -Xms256m"
DEFAULT_JVM_OPTS = (
    "-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:CICompilerCount=1 "
    "-XX:MaxDirectMemorySize=256m -Djava.awt.headless=true"
)


class KafkaError(RuntimeError):
    """Resolving, formatting, starting or stopping Kafka failed."""


def _pom_version() -> str:
    root = ET.parse(POM).getroot()
    node = root.find("m:properties/m:kafka.version", _POM_NS)
    if node is None or not (node.text or "").strip():
        raise KafkaError(f"{POM}: no <kafka.version> property")
    return node.text.strip()


KAFKA_VERSION = _pom_version()


def kafka_home() -> Path:
    """The cache directory of the Kafka runtime (its jars are in ``libs/``)."""
    env = os.environ.get("GC_KAFKA_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "greenchannel" / f"kafka-{KAFKA_VERSION}"


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def ensure_jars(home: Path | None = None, *, mvn: str | None = None) -> Path:
    """Make sure the broker's jars are in ``<home>/libs``; return that dir.

    Runs ``mvn dependency:copy-dependencies`` on ``streams/dev/kafka-pom.xml`` only
    when the cache lacks a marker matching the current pom. Safe to call from
    several processes at once (a file lock serialises the resolution).
    """
    home = Path(home) if home is not None else kafka_home()
    libs = home / "libs"
    marker = home / _MARKER
    digest = _pom_digest()

    def complete() -> bool:
        if not any(libs.glob("kafka_2.13-*.jar")):
            return False
        try:
            return marker.read_text().strip() == digest
        except FileNotFoundError:
            # No marker but the jars are there: a libs/ not made by us (say
            # GC_KAFKA_HOME at an unpacked Kafka distribution): use it as is.
            return True
        except OSError:
            return False

    if complete():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if complete():
            return libs
        mvn = mvn or shutil.which("mvn")
        if not mvn:
            raise KafkaError("mvn is not on PATH: cannot resolve the Kafka jars")
        staging = home / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
        )
        if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            tail = "\n".join(proc.stdout.splitlines()[-30:])
            raise KafkaError(f"resolving Kafka jars failed ({' '.join(cmd)}):\n{tail}")
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        marker.write_text(digest + "\n")
    return libs


def _meta_cluster_id(meta: Path) -> str | None:
    """cluster.id of a formatted log dir's meta.properties, if any."""
    try:
        for line in meta.read_text().splitlines():
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return None


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        raise KafkaError("java is not on PATH (Kafka 4.x needs Java 17 or newer)")
    return java


# --------------------------------------------------------------------------
# Kafka ids and ports


def new_uuid() -> str:
    """A random Kafka Uuid in its base64 text form (cluster or directory id)."""
    while True:
        raw = os.urandom(16)
        text = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        # Kafka reserves the all-zero and 0..01 ids and avoids a leading '-'
        # (it would read as a command-line option).
        if not text.startswith("-") and int.from_bytes(raw, "big") > 100:
            return text


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int, avoid: Iterable[int] = ()) -> list[int]:
    """``count`` distinct free loopback ports (held open until all are picked)."""
    avoid = set(avoid)
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in avoid and port not in ports:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


# --------------------------------------------------------------------------
# A minimal Kafka protocol client: ApiVersions and Metadata (brokers only)

_API_METADATA = 3
_API_VERSIONS = 18


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


def _request(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> bytes:
    client_id = b"greenchannel-kafka-probe"
    header = struct.pack(">hhih", api_key, version, corr, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    data = _recv_exact(sock, size)
    (got,) = struct.unpack_from(">i", data, 0)
    if got != corr:
        raise ConnectionError(f"correlation id {got} != {corr}")
    return data[4:]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        vals = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return vals[0] if len(vals) == 1 else vals

    def string(self) -> str | None:
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return s


def broker_ids(host: str, port: int, timeout: float = 2.0, login: ScramLogin | None = None) -> set[int]:
    """Node ids of the live brokers in ``host:port``'s cluster metadata (over TLS with a SCRAM
    login on a secure cluster).

    Raises ``OSError``/``ConnectionError`` when the broker is not reachable.
    """
    with socket.create_connection((host, port), timeout=timeout) as raw:
        raw.settimeout(timeout)
        sock = login.wrap(raw, host) if login else raw
        r = _Reader(_request(sock, _API_VERSIONS, 0, 1, b""))
        err = r.take(">h")
        if err:
            raise ConnectionError(f"ApiVersions error {err}")
        meta_range = None
        for _ in range(r.take(">i")):
            key, lo, hi = r.take(">hhh")
            if key == _API_METADATA:
                meta_range = (lo, hi)
        if meta_range is None:
            raise ConnectionError("broker does not offer Metadata")
        if login:
            login.authenticate(sock)
        version = min(8, meta_range[1])
        if version < max(1, meta_range[0]):
            raise ConnectionError(f"no usable Metadata version in {meta_range}")
        body = struct.pack(">i", 0)  # no topics (v1+: empty array, not null)
        if version >= 4:
            body += b"\x00"  # allow_auto_topic_creation
        if version >= 8:
            body += b"\x00\x00"  # include cluster/topic authorized operations
        r = _Reader(_request(sock, _API_METADATA, version, 2, body))
        if version >= 3:
            r.take(">i")  # throttle_time_ms
        ids = set()
        for _ in range(r.take(">i")):
            node_id = r.take(">i")
            r.string()
            r.take(">i")
            r.string()  # rack
            ids.add(node_id)
        return ids


_API_SASL_HANDSHAKE = 17
_API_SASL_AUTHENTICATE = 36


def _bytes_field(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


@dataclass(frozen=True)
class ScramLogin:
    """A SCRAM-SHA-512 login over TLS for the readiness probe (RFC 5802, as Kafka speaks it)."""

    username: str
    password: str
    ca_file: Path

    def wrap(self, sock: socket.socket, host: str):
        import ssl

        return ssl.create_default_context(cafile=str(self.ca_file)).wrap_socket(sock, server_hostname=host)

    def _exchange(self, sock, corr: int, payload: bytes) -> bytes:
        r = _Reader(_request(sock, _API_SASL_AUTHENTICATE, 1, corr, _bytes_field(payload)))
        err, message = r.take(">h"), r.string()
        if err:
            raise ConnectionError(f"SASL authentication failed ({err}): {message}")
        n = r.take(">i")
        return r.data[r.pos : r.pos + n]

    def authenticate(self, sock) -> None:
        import hmac

        mech = b"SCRAM-SHA-512"
        r = _Reader(_request(sock, _API_SASL_HANDSHAKE, 1, 10, struct.pack(">h", len(mech)) + mech))
        if r.take(">h"):
            raise ConnectionError("the broker does not offer SCRAM-SHA-512")
        user = self.username.replace("=", "=3D").replace(",", "=2C")
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n={user},r={nonce}"
        server_first = self._exchange(sock, 11, f"n,,{first_bare}".encode()).decode()
        fields = dict(part.split("=", 1) for part in server_first.split(","))
        if not fields["r"].startswith(nonce):
            raise ConnectionError("SCRAM: the server's nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac("sha512", self.password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.new(salted, b"Client Key", "sha512").digest()
        without_proof = f"c=biws,r={fields['r']}"
        auth = f"{first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(hashlib.sha512(client_key).digest(), auth, "sha512").digest()
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
        self._exchange(sock, 12, f"{without_proof},p={proof}".encode())


# --------------------------------------------------------------------------
# The cluster

_LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <RollingFile name="server" fileName="${sys:kafka.logs.dir}/${sys:kafka.log.file:-server.log}"
                 filePattern="${sys:kafka.logs.dir}/${sys:kafka.log.file:-server.log}.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="20 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.log.LogCleaner" level="WARN"/>
    <Logger name="org.apache.kafka.storage.internals.log.LogCleaner" level="WARN"/>
  </Loggers>
</Configuration>
"""


def secure_listeners(secure: SecureDir, port: int, controller_port: int) -> dict[str, object]:
    """SASL_SSL everywhere: clients and brokers with SCRAM-SHA-512 (the admin, a super user, between
    brokers), the controllers with PLAIN (KRaft controllers cannot use SCRAM), the
    StandardAuthorizer denying whatever no ACL allows. There is no plain-text listener."""
    from .secure import CONTROLLER_USER, SUPER_USER

    creds = secure.credentials()
    admin, controller = creds["users"][SUPER_USER], creds["controller"]
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
    return {
        "listeners": f"SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "SASL_SSL",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SASL_SSL",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.sasl_ssl.sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
            f'{scram} required username="{SUPER_USER}" password="{admin}";'
        ),
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": (
            f'{plain} required username="{CONTROLLER_USER}" password="{controller}" '
            f'user_{CONTROLLER_USER}="{controller}";'
        ),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(secure.keystore.resolve()),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(secure.ca.resolve()),
        "ssl.endpoint.identification.algorithm": "https",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        "super.users": f"User:{SUPER_USER};User:{CONTROLLER_USER}",
    }


@dataclass
class _Node:
    index: int
    port: int
    controller_port: int
    dir: Path
    log_dir: Path
    proc: subprocess.Popen | None = None
    out: object = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def config(self) -> Path:
        return self.dir / "server.properties"

    @property
    def server_log(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def stdout_log(self) -> Path:
        return self.log_dir / "stdout.log"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


_LIVE: weakref.WeakSet[KafkaCluster] = weakref.WeakSet()


@atexit.register
def _stop_live_clusters() -> None:
    """Do not leave JVMs behind when the interpreter exits without stop()."""
    for cluster in list(_LIVE):
        with contextlib.suppress(Exception):
            cluster.stop(timeout=10)


class KafkaCluster:
    """``nodes`` combined broker+controller Kafka nodes on 127.0.0.1.

    ``port`` fixes node 0's broker port (the others and all controller ports
    are free ports picked at start). ``workdir`` holds each node's config and
    data (a temporary directory, removed by ``stop()``, when not given; a
    given one is kept and reused: same cluster id, same ports when free).
    ``log_dir`` receives the node logs (``<log_dir>/node-<i>/server.log``;
    default: inside the workdir).

    Every node is a voter of a static controller quorum, so a 3-node cluster
    keeps working with one node down (a 2-node one does not).
    """

    def __init__(
        self,
        nodes: int = 1,
        port: int | None = None,
        workdir: Path | None = None,
        log_dir: Path | None = None,
        secure: SecureDir | None = None,
        acls: list | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("nodes must be >= 1")
        self.nodes = nodes
        # secure: SASL_SSL with SCRAM, the StandardAuthorizer, and `acls` (streams.dev.secure.Acl)
        # created as the admin once the nodes are up.
        self.secure = secure
        self.acls = list(acls or [])
        self.port = port
        self._given_workdir = Path(workdir) if workdir is not None else None
        self._given_log_dir = Path(log_dir) if log_dir is not None else None
        self.workdir: Path | None = None
        self.cluster_id: str | None = None
        self._nodes: list[_Node] = []
        self._own_workdir = False
        self._libs: Path | None = None
        self._lock = threading.RLock()

    # -- properties ---------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        if not self._nodes:
            raise KafkaError("cluster not started")
        return ",".join(f"127.0.0.1:{n.port}" for n in self._nodes)

    @property
    def url(self) -> str:
        return "kafka://" + self.bootstrap

    @property
    def connection(self) -> Connection:
        """How a client reaches the cluster: plain text, or on a secure cluster as the admin."""
        from .secure import SUPER_USER

        return self.connection_as(SUPER_USER) if self.secure else Connection(self.bootstrap)

    def connection_as(self, principal: str, password: str | None = None) -> Connection:
        """The secure cluster as `principal` (its own password unless another is given)."""
        if self.secure is None:
            raise KafkaError("not a secure cluster: there are no principals")
        return self.secure.connection(self.bootstrap, principal, password)

    def _login(self) -> ScramLogin | None:
        from .secure import SUPER_USER

        if self.secure is None:
            return None
        return ScramLogin(SUPER_USER, self.secure.password(SUPER_USER), self.secure.ca)

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self._nodes]

    def node_log(self, i: int) -> Path:
        return self._nodes[i].server_log

    def is_running(self, i: int) -> bool:
        return self._nodes[i].running()

    # -- configuration ------------------------------------------------------

    def _listeners(self, node: _Node) -> dict[str, object]:
        if self.secure is None:
            return {
                "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
                "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
                "controller.listener.names": "CONTROLLER",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            }
        return secure_listeners(self.secure, node.port, node.controller_port)

    def _properties(self, node: _Node) -> dict[str, object]:
        n = self.nodes
        voters = ",".join(f"{x.index}@127.0.0.1:{x.controller_port}" for x in self._nodes)
        min_isr = 2 if n >= 3 else 1
        rf = min(3, n)
        return {
            "process.roles": "broker,controller",
            "node.id": node.index,
            "controller.quorum.voters": voters,
            **self._listeners(node),
            "log.dirs": str(node.data_dir),
            "num.partitions": 4,
            "default.replication.factor": rf,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": 10,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": 10,
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "true",
            "delete.topic.enable": "true",
            # Small and light: a dev/test cluster on a 2-core machine.
            "num.network.threads": 2,
            "num.io.threads": 2,
            "background.threads": 2,
            "num.recovery.threads.per.data.dir": 1,
            "num.replica.fetchers": 1,
            "log.cleaner.threads": 1,
            "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
            "log.segment.bytes": 16 * 1024 * 1024,
            "log.retention.hours": 24,
            # A restarted node can register again only once its old session
            # expired; a killed one is fenced after it. Default: 9 s / 2 s.
            "broker.session.timeout.ms": 6000,
            "broker.heartbeat.interval.ms": 1000,
            "log.retention.check.interval.ms": 60_000,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": min_isr,
        }

    def _write_config(self, node: _Node) -> None:
        lines = [f"# written by streams/dev/kafka.py for node {node.index}"]
        lines += [f"{k}={v}" for k, v in self._properties(node).items()]
        node.config.write_text("\n".join(lines) + "\n")

    def _java_cmd(self, node: _Node, main: str, *args: str, heap: str | None = None) -> list[str]:
        heap = heap if heap is not None else os.environ.get("GC_KAFKA_HEAP_OPTS", DEFAULT_HEAP_OPTS)
        jvm = os.environ.get("GC_KAFKA_JVM_OPTS", DEFAULT_JVM_OPTS)
        return [
            _java(),
            *heap.split(),
            *jvm.split(),
            f"-Dkafka.logs.dir={node.log_dir}",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.xml'}",
            "-cp",
            f"{self._libs}/*",
            main,
            *args,
        ]

    def _format(self, node: _Node) -> None:
        """Format one node's log dir (skipped when already formatted).

        A static quorum (controller.quorum.voters) is formatted the same way
        for 1 and N nodes: no --standalone / --initial-controllers flags, the
        same cluster id everywhere.
        """
        if (node.data_dir / "meta.properties").exists():
            return
        scram = (
            []
            if self.secure is None
            else [
                arg
                for user, password in sorted(self.secure.credentials()["users"].items())
                for arg in ("--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]")
            ]
        )
        cmd = self._java_cmd(
            node,
            STORAGE_TOOL_MAIN,
            "format",
            "--ignore-formatted",
            "--cluster-id",
            self.cluster_id,
            "--config",
            str(node.config),
            *scram,
            heap="-Xmx128m",
        )
        cmd.insert(1, "-Dkafka.log.file=format.log")
        node.log_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, cwd=node.dir
        )
        if proc.returncode != 0:
            raise KafkaError(f"formatting node {node.index} failed:\n{proc.stdout[-4000:]}")

    def _format_all(self) -> None:
        """Format the nodes in parallel (one short JVM each)."""
        errors: list[BaseException] = []

        def run(node: _Node) -> None:
            try:
                self._format(node)
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in self._nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    # -- lifecycle ----------------------------------------------------------

    def _layout(self) -> None:
        if self._given_workdir is not None:
            self.workdir = self._given_workdir.resolve()
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="gc-kafka-"))
            self._own_workdir = True
        state_file = self.workdir / "cluster.json"
        state: dict = {}
        if state_file.exists():
            with contextlib.suppress(ValueError, OSError):
                state = json.loads(state_file.read_text())
        formatted = self.workdir / "node-0" / "data" / "meta.properties"
        if state and state.get("nodes") != self.nodes:
            raise KafkaError(
                f"{self.workdir} holds a {state.get('nodes')}-node cluster, "
                f"not a {self.nodes}-node one: use another workdir"
            )
        self.cluster_id = state.get("cluster_id") or _meta_cluster_id(formatted) or new_uuid()

        # Ports: node 0's broker port if given; earlier ports when free; else new.
        old_ports = state.get("ports") or []
        old_ctrl = state.get("controller_ports") or []
        if self.port is not None and not _port_free(self.port):
            raise KafkaError(f"port {self.port} on 127.0.0.1 is already in use")
        wanted: list[int | None] = [None] * (2 * self.nodes)
        if self.port is not None:
            wanted[0] = self.port
        for i, p in enumerate(list(old_ports) + list(old_ctrl)):
            if i < len(wanted) and wanted[i] is None and p not in wanted and _port_free(p):
                wanted[i] = p
        fresh = iter(_free_ports(wanted.count(None), avoid=[p for p in wanted if p]))
        ports = [p if p is not None else next(fresh) for p in wanted]

        log_root = self._given_log_dir.resolve() if self._given_log_dir else None
        self._nodes = []
        for i in range(self.nodes):
            ndir = self.workdir / f"node-{i}"
            ndir.mkdir(parents=True, exist_ok=True)
            ldir = (log_root / f"node-{i}") if log_root else ndir / "logs"
            ldir.mkdir(parents=True, exist_ok=True)
            self._nodes.append(_Node(i, ports[i], ports[self.nodes + i], ndir, ldir))
        state_file.write_text(
            json.dumps(
                {
                    "kafka_version": KAFKA_VERSION,
                    "cluster_id": self.cluster_id,
                    "nodes": self.nodes,
                    "ports": ports[: self.nodes],
                    "controller_ports": ports[self.nodes :],
                },
                indent=2,
            )
            + "\n"
        )
        (self.workdir / "log4j2.xml").write_text(_LOG4J2_XML)

    def start(self, timeout: float = 120) -> KafkaCluster:
        """Resolve jars, format, start every node; return when all are live."""
        with self._lock:
            if any(n.running() for n in self._nodes):
                raise KafkaError("cluster already started")
            deadline = time.monotonic() + timeout
            self._libs = ensure_jars()
            _LIVE.add(self)
            try:
                self._layout()
                for node in self._nodes:
                    self._write_config(node)
                self._format_all()
                for node in self._nodes:
                    self._spawn(node)
                self.wait_for_brokers(range(self.nodes), timeout=deadline - time.monotonic())
                if self.secure is not None:
                    self.secure.write_client_files(self.bootstrap)
                    self.create_acls(self.acls, timeout=deadline - time.monotonic())
            except BaseException:
                self.stop()
                raise
        return self

    def create_acls(self, acls: list, timeout: float = 120) -> None:
        """streams/dev/SecureSetup.java as the admin: creates `acls` (streams.dev.secure.Acl; those already
        there stay as they are), returns once the brokers apply them."""
        from .secure import SUPER_USER

        node = self._nodes[0]
        cmd = self._java_cmd(
            node,
            str(Path(__file__).with_name("SecureSetup.java")),
            str(self.secure.client_properties(SUPER_USER).absolute()),  # it runs in self.workdir
            str(self.nodes),
            heap="-Xmx256m",
        )
        cmd.insert(1, "-Dkafka.log.file=acls.log")
        lines = "".join(acl.line() + "\n" for acl in acls)
        try:
            proc = subprocess.run(
                cmd,
                input=lines,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=max(timeout, 30),
                cwd=self.workdir,
            )
        except subprocess.TimeoutExpired:
            raise KafkaError(f"creating the ACLs took over {max(timeout, 30):.0f} s") from None
        if proc.returncode != 0:
            raise KafkaError(f"creating the ACLs failed:\n{proc.stdout[-4000:]}")

    def _spawn(self, node: _Node) -> None:
        node.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(node.stdout_log, "ab")
        cmd = self._java_cmd(node, SERVER_MAIN, str(node.config))
        # Same process group as the caller on purpose: whatever ends the
        # caller's group (Ctrl-C, a CI runner's cleanup) ends the JVMs too.
        node.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=node.dir)
        node.out = out

    def _died(self, node: _Node) -> KafkaError:
        code = node.proc.returncode if node.proc else None
        log = _tail(node.server_log, 400).splitlines()
        errors = [line for line in log if " ERROR " in line or " FATAL " in line][-5:]
        return KafkaError(
            f"kafka node {node.index} exited with code {code}\n"
            f"--- {node.stdout_log} ---\n{_tail(node.stdout_log, 20)}\n"
            f"--- errors in {node.server_log} ---\n" + "\n".join(errors) + "\n"
            f"--- last lines of {node.server_log} ---\n" + "\n".join(log[-30:])
        )

    def wait_for_brokers(self, ids: Iterable[int], timeout: float = 60) -> None:
        """Wait until every running node's metadata lists exactly ``ids``.

        Fails fast (with the node's log tail) when a node process exits.
        """
        want = set(ids)
        deadline = time.monotonic() + max(timeout, 0)
        last: object = None
        while True:
            seen_all = True
            for node in self._nodes:
                if node.proc is None:
                    continue
                if node.proc.poll() is not None:
                    if node.index in want:
                        raise self._died(node)
                    continue
                try:
                    got = broker_ids("127.0.0.1", node.port, timeout=2.0, login=self._login())
                except (OSError, ConnectionError, struct.error, KeyError, ValueError) as exc:
                    last = f"node {node.index}: {exc!r}"
                    seen_all = False
                    break
                if got != want:
                    last = f"node {node.index} sees brokers {sorted(got)}"
                    seen_all = False
                    break
            if seen_all:
                return
            if time.monotonic() >= deadline:
                raise KafkaError(f"timed out waiting for brokers {sorted(want)} ({last}); logs under {self.workdir}")
            time.sleep(0.2)

    def _running_ids(self) -> set[int]:
        return {n.index for n in self._nodes if n.running()}

    def _terminate(self, node: _Node, timeout: float) -> None:
        proc = node.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        if node.out is not None:
            node.out.close()
            node.out = None

    def stop_node(self, i: int, timeout: float = 30) -> None:
        """Stop node ``i`` (SIGTERM: controlled shutdown; SIGKILL after timeout)
        and wait until the other nodes no longer list it as a live broker."""
        with self._lock:
            node = self._nodes[i]
            self._terminate(node, timeout)
            rest = self._running_ids()
            if rest:
                self.wait_for_brokers(rest, timeout=timeout)

    def kill_node(self, i: int) -> None:
        """SIGKILL node ``i`` (no controlled shutdown; the controller fences it
        after broker.session.timeout.ms)."""
        with self._lock:
            node = self._nodes[i]
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()
            self._terminate(node, 0)

    def start_node(self, i: int, timeout: float = 60) -> None:
        """Start node ``i`` again (same config, data kept); wait until every
        running node sees it rejoin."""
        with self._lock:
            node = self._nodes[i]
            if node.running():
                raise KafkaError(f"node {i} is running")
            self._terminate(node, 0)
            self._spawn(node)
            self.wait_for_brokers(self._running_ids() | {i}, timeout=timeout)

    def stop(self, timeout: float = 30) -> None:
        """Stop every node (SIGTERM together, SIGKILL after ``timeout``); remove
        the workdir if this cluster created it."""
        with self._lock:
            live = [n for n in self._nodes if n.running()]
            for node in live:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for node in live:
                try:
                    node.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            for node in self._nodes:
                self._terminate(node, 0)
            if self._own_workdir and self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self._own_workdir = False
            _LIVE.discard(self)

    # -- conveniences -------------------------------------------------------

    async def astart(self, timeout: float = 120) -> KafkaCluster:
        import asyncio

        return await asyncio.to_thread(self.start, timeout)

    async def astop(self, timeout: float = 30) -> None:
        import asyncio

        await asyncio.to_thread(self.stop, timeout)

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def __aenter__(self) -> KafkaCluster:
        return await self.astart()

    async def __aexit__(self, *exc) -> None:
        await self.astop()

    def __repr__(self) -> str:
        ports = ",".join(map(str, self.ports)) or "-"
        return f"<KafkaCluster nodes={self.nodes} ports={ports} workdir={self.workdir}>"


# --------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """Start a cluster, print its bootstrap servers, run until SIGTERM/SIGINT."""
    ap = argparse.ArgumentParser(
        prog="python -m streams.dev.kafka", description="Run Apache Kafka (KRaft) on 127.0.0.1."
    )
    ap.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    ap.add_argument("--port", type=int, default=None, help="broker port of node 0")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="config+data dir, kept (default: a temporary dir, removed)"
    )
    ap.add_argument("--log-dir", type=Path, default=None, help="where node logs go")
    ap.add_argument("--timeout", type=float, default=120, help="start timeout, seconds")
    ap.add_argument(
        "--resolve-only", action="store_true", help="only resolve the jars into the cache and print its libs dir"
    )
    args = ap.parse_args(argv)

    if args.resolve_only:
        print(ensure_jars(), flush=True)
        return 0

    stop = threading.Event()
    starting = [True]

    def on_signal(signum, _frame):
        stop.set()
        if starting[0]:
            # Interrupt start(): it stops whatever it had started, then re-raises.
            raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    cluster = KafkaCluster(args.nodes, args.port, args.workdir, args.log_dir)
    try:
        t0 = time.monotonic()
        try:
            cluster.start(timeout=args.timeout)
        except KafkaError as exc:
            print(f"kafka: {exc}", file=sys.stderr, flush=True)
            return 1
        except KeyboardInterrupt:
            return 0 if stop.is_set() else 130
        finally:
            starting[0] = False
        print(cluster.bootstrap, flush=True)
        print(
            f"kafka {KAFKA_VERSION}: {args.nodes} node(s) up in {time.monotonic() - t0:.1f}s, "
            f"{cluster.url}, workdir {cluster.workdir}",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(1.0):
            dead = [i for i in range(args.nodes) if not cluster.is_running(i)]
            if dead:
                print(f"kafka: node(s) {dead} exited; see {cluster.node_log(dead[0])}", file=sys.stderr, flush=True)
                return 1
        return 0
    finally:
        cluster.stop()
        for s, h in old.items():
            signal.signal(s, h)


if __name__ == "__main__":
    sys.exit(main())
