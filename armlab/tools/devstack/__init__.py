"""A real local stack for development and tests: PostgreSQL 15 and a KRaft Apache Kafka 4.x broker.

Both run on 127.0.0.1 on free ports with their own data directories, are started as plain
child processes (no Docker), and expose ``start()``, ``stop()``, ``restart()`` (same data dir,
same port) and ``kill()`` (SIGKILL, for crash tests). ``armlab dev up`` and the pytest
fixtures in ``tests/conftest.py`` both use this package, so what the tests exercise is what a
developer runs. One module per service (:mod:`.postgres`, :mod:`.kafka`), what they share
(:mod:`.common`) and the stack of both (:mod:`.stack`).

PostgreSQL refuses to run as root, so when the effective uid is 0 the server and ``initdb``
run as the ``postgres`` system user (setuid/setgid in the child, the same as
``runuser -u postgres --``) and the data directory is owned by that user.

Kafka runs from the broker jars on Maven Central: the pom that lists them ships inside this
package (``armlab/tools/kafka/pom.xml``); ``mvn dependency:copy-dependencies`` fetches them
once into the jars directory (``ARMLAB_KAFKA_LIBS``, default ``<ARMLAB_HOME>/kafka-libs``), and
later starts need no network. The pom adds what the published POMs leave out: the log4j2
binding (without it the broker logs nothing) and log4j-api/core, which kafka_2.13 declares
compile-only. ``StorageTool format --standalone`` runs once per data dir, then
``java -cp libs/* kafka.Kafka``. Readiness is the log line "Kafka Server started" AND a
successful metadata call from kafka-python, because a bare TCP connect succeeds before the
broker is unfenced.

Nothing here depends on where armlab is installed: file locations come from settings or from
the package's own data, so an installed (non-editable) armlab runs the same stack.
"""

from armlab.tools.devstack.common import (
    LOOPBACK,
    ServiceStartError,
    free_port,
    pid_alive,
    port_open,
    tail,
)
from armlab.tools.devstack.kafka import (
    KafkaBroker,
    _cluster_id,
    ensure_kafka_jars,
    find_java,
    kafka_jars_present,
    kafka_libs_dir,
    kafka_version,
)
from armlab.tools.devstack.postgres import PostgresServer, find_pg_bin
from armlab.tools.devstack.stack import DevStack

__all__ = [
    "LOOPBACK", "DevStack", "KafkaBroker", "PostgresServer", "ServiceStartError", "_cluster_id",
    "ensure_kafka_jars", "find_java", "find_pg_bin", "free_port", "kafka_jars_present",
    "kafka_libs_dir", "kafka_version", "pid_alive", "port_open", "tail",
]
