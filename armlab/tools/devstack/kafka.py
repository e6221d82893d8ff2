"""A single-node KRaft Apache Kafka 4.x broker from the jars on Maven Central."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from kafka.admin import KafkaAdminClient, NewTopic

from armlab.errors import ConfigurationError
from armlab.settings import KafkaSettings, get_settings
from armlab.tools.devstack.common import (
    KAFKA_POM,
    LOOPBACK,
    ServiceStartError,
    _locked,
    _preexec,
    _rotate,
    _ServiceFiles,
    _signal_and_wait,
    _want_die_with_parent,
    free_port,
    pid_alive,
    port_open,
    tail,
)


def kafka_libs_dir() -> Path:
    """Where the broker jars are kept: ``ARMLAB_KAFKA_LIBS``, else ``<ARMLAB_HOME>/kafka-libs``."""
    settings = get_settings()
    return Path(settings.kafka_libs or (settings.home / "kafka-libs")).resolve()


def kafka_jars_present(libs: Path) -> bool:
    return any(libs.glob("kafka_2.13-*.jar")) and any(libs.glob("kafka-clients-*.jar"))


def kafka_version(libs: Path | None = None) -> str:
    libs = libs or kafka_libs_dir()
    jars = sorted(libs.glob("kafka_2.13-*.jar"))
    return jars[-1].name[len("kafka_2.13-"):-len(".jar")] if jars else "unknown"


def ensure_kafka_jars(libs: Path | None = None, progress: Callable[[str], None] | None = None
                      ) -> Path:
    """Fetch the broker jars with Maven once (cached; later starts need no network)."""
    libs = libs or kafka_libs_dir()
    if kafka_jars_present(libs):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ConfigurationError(
            f"Kafka broker jars missing in {libs} and `mvn` is not installed (apt-get install "
            "maven openjdk-17-jre-headless); or point ARMLAB_KAFKA_LIBS at a directory of jars")
    if progress:
        progress(f"fetching Kafka broker jars with Maven into {libs} (first run only)")
    libs.mkdir(parents=True, exist_ok=True)
    with resources.as_file(KAFKA_POM) as pom:
        res = subprocess.run([mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                              f"-DoutputDirectory={libs}"], cwd=libs, capture_output=True,
                             text=True, timeout=900, check=False)
    if res.returncode != 0 or not kafka_jars_present(libs):
        raise ServiceStartError("mvn could not fetch the Kafka jars",
                                (res.stdout + res.stderr)[-4000:])
    (libs / ".complete").touch()
    return libs


def find_java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise ConfigurationError(
            "java not found: Kafka 4.x needs Java 17+ (apt-get install openjdk-17-jre-headless)")
    return java


def _cluster_id() -> str:
    """A Kafka Uuid in its base64url form, as StorageTool random-uuid prints it."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):  # Kafka's Uuid.randomUuid rejects these too
            return cid


SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers={host}:{cport}
listeners={proto}://{host}:{port},CONTROLLER://{host}:{cport}
advertised.listeners={proto}://{host}:{port},CONTROLLER://{host}:{cport}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,{proto}:{proto}
controller.listener.names=CONTROLLER
inter.broker.listener.name={proto}
log.dirs={data}/kraft
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
"""

LOG4J2_PROPERTIES = """\
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""

JVM_OPTS = ["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true"]


@dataclass
class KafkaBroker(_ServiceFiles):
    """A single-node KRaft broker+controller in ``data_dir``: ``server.properties`` and a
    log4j2 config written there, the metadata log formatted once (``--standalone``: the
    dynamic KIP-853 quorum, so the controller endpoint is fixed at format time and the ports
    are kept in ``service.json``), then ``kafka.Kafka`` with the G1 options of
    ``kafka-run-class.sh``."""

    data_dir: Path
    port: int = 0
    controller_port: int = 0
    libs_dir: Path | None = None
    heap: str = "512m"
    die_with_parent: bool = False
    start_timeout: float = 120.0
    # user -> password: listen with SASL_PLAINTEXT (mechanism PLAIN) only, for testing
    # clients against an authenticating cluster; the first user is the broker's own.
    sasl_users: dict[str, str] | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        meta = self._read_meta()
        # The formatted metadata log records the controller endpoint: keep ports once chosen.
        self.port = self.port or int(meta.get("port") or 0) or free_port()
        self.controller_port = (self.controller_port or int(meta.get("controller_port") or 0)
                                or free_port())

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / "kafka.out"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "kafka.pid"

    @property
    def version(self) -> str:
        return kafka_version(self.libs_dir)

    @property
    def pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not pid_alive(pid):
            return None
        try:  # guard against pid reuse
            if b"kafka.Kafka" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return None
        except OSError:
            pass
        return pid

    def _java_base(self, libs: Path) -> list[str]:
        return [find_java(), f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.data_dir / 'logs'}", "-cp", f"{libs}/*"]

    @property
    def kafka_settings(self) -> KafkaSettings:
        """How a client reaches this broker (with the second SASL user when there are any)."""
        if not self.sasl_users:
            return KafkaSettings(bootstrap=self.bootstrap, security_protocol="PLAINTEXT")
        user, password = list(self.sasl_users.items())[-1]
        return KafkaSettings(bootstrap=self.bootstrap, security_protocol="SASL_PLAINTEXT",
                             sasl_mechanism="PLAIN", sasl_username=user,
                             sasl_password=password)

    def _server_properties(self) -> str:
        proto = "SASL_PLAINTEXT" if self.sasl_users else "PLAINTEXT"
        text = SERVER_PROPERTIES.format(host=LOOPBACK, port=self.port,
                                        cport=self.controller_port, data=self.data_dir,
                                        proto=proto)
        if self.sasl_users:
            (admin, admin_pw), users = next(iter(self.sasl_users.items())), self.sasl_users
            jaas = (f'org.apache.kafka.common.security.plain.PlainLoginModule required '
                    f'username="{admin}" password="{admin_pw}" '
                    + " ".join(f'user_{u}="{pw}"' for u, pw in users.items()) + ";")
            text += ("sasl.enabled.mechanisms=PLAIN\n"
                     "sasl.mechanism.inter.broker.protocol=PLAIN\n"
                     f"listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}\n")
        return text

    def _configure(self, libs: Path) -> None:
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.data_dir / "kraft").mkdir(exist_ok=True)
        (self.data_dir / "server.properties").write_text(self._server_properties())
        (self.data_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        self._meta_path().write_text(json.dumps(
            {"port": self.port, "controller_port": self.controller_port}))
        if not (self.data_dir / "kraft" / "meta.properties").exists():
            res = subprocess.run(
                [*self._java_base(libs), "-Xmx256m", "kafka.tools.StorageTool", "format",
                 "--standalone", "-t", _cluster_id(), "-c",
                 str(self.data_dir / "server.properties")],
                capture_output=True, text=True, timeout=120, check=False)
            if res.returncode != 0:
                raise ServiceStartError("Kafka StorageTool format failed",
                                        (res.stdout + res.stderr)[-4000:])

    @_locked
    def start(self, progress: Callable[[str], None] | None = None) -> KafkaBroker:
        """Start (format on first use) and wait until the broker serves metadata."""
        if self.is_running():
            self._wait_ready(check_log=False)
            return self
        libs = ensure_kafka_jars(self.libs_dir, progress)
        self._configure(libs)
        _rotate(self.log_file)
        die = _want_die_with_parent(self.die_with_parent)
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [*self._java_base(libs)[:1], f"-Xms{self.heap}", f"-Xmx{self.heap}", *JVM_OPTS,
                 *self._java_base(libs)[1:], "kafka.Kafka",
                 str(self.data_dir / "server.properties")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.data_dir, preexec_fn=_preexec(None, die), start_new_session=True,
            )
        self.pid_file.write_text(str(self._proc.pid))
        self._wait_ready(check_log=True)
        return self

    def _wait_ready(self, check_log: bool) -> None:
        deadline = time.monotonic() + self.start_timeout
        logged = not check_log
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.is_running():
                raise ServiceStartError(
                    f"Kafka exited during start-up (data dir {self.data_dir})", self.log_tail())
            if not logged:
                logged = "Kafka Server started" in tail(self.log_file, 400)
            if logged and port_open(self.port):
                try:
                    self.list_topics(timeout_ms=5000)
                    return
                except Exception as exc:  # kafka.errors.*: not ready yet
                    last = exc
            time.sleep(0.3)
        raise ServiceStartError(
            f"Kafka did not become ready on {self.bootstrap} within {self.start_timeout:.0f}s "
            f"(log line seen: {logged}; last admin error: {last})", self.log_tail())

    def admin(self, timeout_ms: int = 10000) -> Any:
        """A kafka-python KafkaAdminClient for this broker (caller closes it)."""
        return KafkaAdminClient(**self.kafka_settings.client_config(),
                                request_timeout_ms=timeout_ms, client_id="armlab-devstack")

    def list_topics(self, timeout_ms: int = 10000) -> list[str]:
        admin = self.admin(timeout_ms)
        try:
            return sorted(admin.list_topics())
        finally:
            admin.close()

    def create_topic(self, name: str, partitions: int = 1) -> str:
        admin = self.admin()
        try:
            admin.create_topics([NewTopic(name, partitions, 1)], wait_for_metadata=True)
        finally:
            admin.close()
        return name

    @_locked
    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (controlled shutdown), SIGKILL after ``timeout`` seconds."""
        pid = self.pid
        if pid is not None:
            _signal_and_wait(pid, self._proc, signal.SIGTERM, timeout)
        self._proc = None
        with contextlib.suppress(OSError):
            self.pid_file.unlink()

    @_locked
    def kill(self) -> None:
        """SIGKILL the broker (a crash); the next start() recovers its logs."""
        pid = self.pid
        if pid is not None:
            _signal_and_wait(pid, self._proc, signal.SIGKILL, 10)
        self._proc = None
        with contextlib.suppress(OSError):
            self.pid_file.unlink()

    @_locked
    def restart(self) -> KafkaBroker:
        """Stop and start again on the same data directory and ports."""
        self.stop()
        return self.start()

    def describe(self) -> dict[str, Any]:
        return {"service": "kafka", "running": self.is_running(), "pid": self.pid,
                "port": self.port, "controller_port": self.controller_port,
                "bootstrap": self.bootstrap, "data_dir": str(self.data_dir),
                "version": self.version, "log": str(self.log_file)}
