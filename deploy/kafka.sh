#!/usr/bin/env bash
# deploy/kafka.sh: a real single-node Apache Kafka broker (KRaft combined
# mode, broker + controller in one JVM) for development, tests, the demo and
# CI, without Docker.
#
#   deploy/kafka.sh start       start (or reuse) the broker; prints the bootstrap address
#   deploy/kafka.sh stop        stop the broker this script started
#   deploy/kafka.sh status      exit 0 and print the bootstrap address if it is running
#   deploy/kafka.sh bootstrap   print the bootstrap address `start` would use
#   deploy/kafka.sh sasl-bootstrap  print the SASL/PLAIN listener's address
#   deploy/kafka.sh topics ...  kafka-topics (TopicCommand) against the bootstrap address
#   deploy/kafka.sh logfile     print the path of the broker's log
#
# `start`, `status` and `bootstrap` print the bootstrap address as the only line
# on stdout; every progress or error message goes to stderr.
#
# The Kafka jars come from Maven Central through `mvn` into
# ${RAPPORT_CACHE:-$HOME/.cache/rapport}/kafka/<version>/libs, outside the
# repository; the broker's data, pid file and logs live beside them.
#
# Environment:
#   RAPPORT_KAFKA_BOOTSTRAP          use this external Kafka; start/stop nothing
#   RAPPORT_KAFKA_PORT               broker port (default 19092)
#   RAPPORT_KAFKA_CONTROLLER_PORT    KRaft controller port (default 19093)
#   RAPPORT_KAFKA_SASL_PORT          SASL/PLAIN listener port (default broker port + 2;
#                                    user "rapport", password "rapport-secret")
#   RAPPORT_CACHE                    cache root (default $HOME/.cache/rapport)
#   RAPPORT_KAFKA_VERSION            Kafka version from Maven Central (default 4.4.0)
#   RAPPORT_KAFKA_HEAP               broker heap, -Xms and -Xmx (default 512m)
#   RAPPORT_KAFKA_GC_OPTS            the broker JVM's collector options, instead of
#                                    G1 with a 20 ms pause goal (e.g. "-XX:+UseZGC";
#                                    its pauses are in $INSTANCE/gc.log either way)
#   RAPPORT_KAFKA_START_TIMEOUT      seconds to wait for the broker (default 90)
set -euo pipefail

KAFKA_VERSION="${RAPPORT_KAFKA_VERSION:-4.4.0}"
SCALA_VERSION="2.13"
# Kafka's broker logs through slf4j 1.7 and already depends on log4j-core 2.25;
# the slf4j binding and log4j are pinned here to one matching version.
LOG4J_VERSION="2.25.5"
DEPENDENCY_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

PORT="${RAPPORT_KAFKA_PORT:-19092}"
CONTROLLER_PORT="${RAPPORT_KAFKA_CONTROLLER_PORT:-19093}"
# The SASL/PLAIN listener: port, and the one user it knows.
SASL_PORT="${RAPPORT_KAFKA_SASL_PORT:-$((PORT + 2))}"
SASL_USER="rapport"
SASL_PASSWORD="rapport-secret"
HOST="127.0.0.1"
HEAP="${RAPPORT_KAFKA_HEAP:-512m}"
START_TIMEOUT="${RAPPORT_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT=30
LOCK_TIMEOUT=600

CACHE="${RAPPORT_CACHE:-${HOME:?HOME is not set; set RAPPORT_CACHE}/.cache/rapport}"
KAFKA_ROOT="$CACHE/kafka"
KAFKA_HOME="$KAFKA_ROOT/$KAFKA_VERSION"
LIBS="$KAFKA_HOME/libs"
CONFIG_DIR="$KAFKA_HOME/config"
# One broker instance per (broker port, controller port): the KRaft voter set
# written at format time records the controller endpoint.
INSTANCE="$KAFKA_HOME/broker-$PORT-$CONTROLLER_PORT"
DATA_DIR="$INSTANCE/data"
PID_FILE="$INSTANCE/kafka.pid"
LOG_FILE="$INSTANCE/kafka.log"          # log4j2 output of the broker
STDOUT_FILE="$INSTANCE/kafka.stdout.log" # JVM stdout/stderr (crashes, GC errors)
GC_LOG="$INSTANCE/gc.log"                # the JVM's GC pauses, epoch-ms stamped (benches read it)
SERVER_PROPERTIES="$INSTANCE/server.properties"
LOCK_FILE="$KAFKA_ROOT/kafka.lock"

LOCAL_BOOTSTRAP="$HOST:$PORT"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    cat >&2 <<'EOF'
usage: deploy/kafka.sh start|stop|status|bootstrap|logfile|topics [ARGS...]

  start       start (or reuse) a local single-node Kafka; print its bootstrap address
  stop        stop the broker started by this script
  reset       stop it and delete its topics and state (its next start formats
              empty storage)
  status      exit 0 and print the bootstrap address if the broker is running
  bootstrap   print the bootstrap address `start` would use, without starting
  logfile     print the path of the broker's log
  topics ...  run kafka-topics (TopicCommand) with --bootstrap-server set

environment: RAPPORT_KAFKA_BOOTSTRAP, RAPPORT_KAFKA_PORT, RAPPORT_KAFKA_CONTROLLER_PORT,
             RAPPORT_CACHE, RAPPORT_KAFKA_VERSION, RAPPORT_KAFKA_HEAP,
             RAPPORT_KAFKA_GC_OPTS, RAPPORT_KAFKA_START_TIMEOUT
EOF
}

external_bootstrap() { [[ -n "${RAPPORT_KAFKA_BOOTSTRAP:-}" ]]; }

bootstrap_address() {
    if external_bootstrap; then
        printf '%s\n' "$RAPPORT_KAFKA_BOOTSTRAP"
    else
        printf '%s\n' "$LOCAL_BOOTSTRAP"
    fi
}

now() { date +%s; }

# ---------------------------------------------------------------- tools ----

JAVA=""
find_java() {
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        JAVA="$JAVA_HOME/bin/java"
    elif command -v java >/dev/null 2>&1; then
        JAVA="$(command -v java)"
    else
        die "java not found. Kafka $KAFKA_VERSION needs Java 17 or newer: apt-get install openjdk-17-jre-headless maven"
    fi
}

check_java_version() {
    local line major
    line="$("$JAVA" -version 2>&1 | head -n 1)" || true
    major="$(sed -nE 's/.*version "([0-9]+)(\.[0-9]+)*.*".*/\1/p' <<<"$line")"
    if [[ "$major" == "1" ]]; then
        major=8
    fi
    if [[ -z "$major" ]]; then
        log "warning: could not read the Java version from: $line"
    elif ((major < 17)); then
        die "Java $major found at $JAVA, Kafka $KAFKA_VERSION needs Java 17 or newer: apt-get install openjdk-17-jre-headless maven"
    fi
}

require_tools() {
    command -v flock >/dev/null 2>&1 || die "flock not found (util-linux): apt-get install util-linux"
    command -v setsid >/dev/null 2>&1 || die "setsid not found (util-linux): apt-get install util-linux"
    command -v timeout >/dev/null 2>&1 || die "timeout not found (coreutils): apt-get install coreutils"
}

# ---------------------------------------------------------------- locking --

# Serialise start/stop across processes (several test binaries may call
# `start` at once). fd 9 must not leak into the broker, see launch_broker.
take_lock() {
    mkdir -p "$KAFKA_ROOT"
    exec 9>>"$LOCK_FILE"
    if ! flock -n 9; then
        log "waiting for another kafka.sh holding $LOCK_FILE"
        flock -w "$LOCK_TIMEOUT" 9 || die "timed out after ${LOCK_TIMEOUT}s waiting for $LOCK_FILE"
    fi
}

# ------------------------------------------------------------------ jars ---

libs_ready() { [[ -f "$LIBS/.complete" ]]; }

fetch_jars() {
    libs_ready && return 0
    command -v mvn >/dev/null 2>&1 ||
        die "mvn not found; it fetches the Kafka jars from Maven Central: apt-get install openjdk-17-jre-headless maven"
    log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
    local work="$KAFKA_HOME/fetch"
    rm -rf "$work" "$LIBS.tmp"
    mkdir -p "$work"
    cat >"$work/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by deploy/kafka.sh: the runtime classpath of a Kafka broker. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>rapport.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$SCALA_VERSION</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-api</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
    # mvn's output goes to a file and is shown only on failure (Maven 3.8
    # prints stray ANSI resets even with -q).
    if ! mvn -B -q --no-transfer-progress -Dstyle.color=never -f "$work/pom.xml" \
        "$DEPENDENCY_PLUGIN:copy-dependencies" \
        -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp" >"$work/mvn.log" 2>&1; then
        sed 's/\x1b\[[0-9;]*m//g' "$work/mvn.log" >&2
        rm -rf "$LIBS.tmp"
        die "mvn could not fetch org.apache.kafka:kafka_$SCALA_VERSION:$KAFKA_VERSION (is Maven Central reachable? is the version right? set RAPPORT_KAFKA_VERSION)"
    fi
    [[ -f "$LIBS.tmp/kafka_$SCALA_VERSION-$KAFKA_VERSION.jar" ]] ||
        die "mvn finished but kafka_$SCALA_VERSION-$KAFKA_VERSION.jar is missing from $LIBS.tmp"
    touch "$LIBS.tmp/.complete"
    rm -rf "$LIBS"
    mv "$LIBS.tmp" "$LIBS"
    rm -rf "$work"
    log "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars"
}

# ---------------------------------------------------------------- config ---

write_log4j_configs() {
    mkdir -p "$CONFIG_DIR"
    # Broker: a size-capped rolling file; Kafka's per-partition and config
    # chatter is kept at WARN.
    cat >"$CONFIG_DIR/log4j2-broker.xml.tmp.$$" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by deploy/kafka.sh -->
<Configuration status="warn">
  <Appenders>
    <RollingFile name="file" fileName="${sys:rapport.kafka.log}" filePattern="${sys:rapport.kafka.log}.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies>
        <SizeBasedTriggeringPolicy size="20 MB"/>
      </Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO">
      <AppenderRef ref="file"/>
    </Root>
    <Logger name="org.apache.kafka.common.config" level="WARN"/>
    <Logger name="org.apache.kafka.common.utils.AppInfoParser" level="WARN"/>
    <Logger name="org.apache.kafka.common.metrics" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Logger name="org.apache.kafka.storage" level="WARN"/>
    <!-- Coordinators at INFO: which group and transaction partitions load,
         and when, after a restart. -->
    <Logger name="org.apache.kafka.coordinator" level="INFO"/>
    <Logger name="org.apache.kafka.image" level="WARN"/>
    <Logger name="org.apache.kafka.metadata" level="WARN"/>
    <Logger name="org.apache.kafka.raft" level="WARN"/>
    <Logger name="org.apache.kafka.snapshot" level="WARN"/>
    <Logger name="org.apache.kafka.server.log" level="WARN"/>
    <Logger name="kafka.log" level="WARN"/>
    <Logger name="kafka.cluster" level="WARN"/>
    <Logger name="kafka.coordinator" level="INFO"/>
    <Logger name="kafka.network" level="WARN"/>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="kafka.authorizer.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.server.ReplicaFetcherManager" level="WARN"/>
    <Logger name="kafka.server.ReplicaAlterLogDirsManager" level="WARN"/>
    <Logger name="kafka.server.metadata" level="WARN"/>
    <Logger name="org.apache.kafka.controller" level="WARN"/>
    <Logger name="org.apache.kafka.queue" level="WARN"/>
    <Logger name="org.apache.kafka.server.quota" level="WARN"/>
    <Logger name="org.apache.kafka.server.purgatory" level="WARN"/>
    <Logger name="org.apache.kafka.server.util" level="WARN"/>
    <Logger name="org.apache.kafka.server.share" level="WARN"/>
    <Logger name="org.apache.kafka.server.transaction" level="WARN"/>
    <Logger name="org.apache.kafka.server.NodeToControllerRequestThread" level="WARN"/>
    <Logger name="org.apache.kafka.server.NodeToControllerChannelManagerImpl" level="WARN"/>
    <Logger name="kafka.server.KafkaRequestHandlerPool" level="WARN"/>
    <Logger name="kafka.server.ClientQuotaManager" level="WARN"/>
  </Loggers>
</Configuration>
EOF
    mv "$CONFIG_DIR/log4j2-broker.xml.tmp.$$" "$CONFIG_DIR/log4j2-broker.xml"
    # Command-line tools (storage format, kafka-topics): warnings to stderr.
    cat >"$CONFIG_DIR/log4j2-tools.xml.tmp.$$" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by deploy/kafka.sh -->
<Configuration status="warn">
  <Appenders>
    <Console name="stderr" target="SYSTEM_ERR">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="WARN">
      <AppenderRef ref="stderr"/>
    </Root>
  </Loggers>
</Configuration>
EOF
    mv "$CONFIG_DIR/log4j2-tools.xml.tmp.$$" "$CONFIG_DIR/log4j2-tools.xml"
}

write_server_properties() {
    mkdir -p "$INSTANCE" "$DATA_DIR"
    cat >"$SERVER_PROPERTIES.tmp" <<EOF
# Generated by deploy/kafka.sh on every start; edits are overwritten.
# Single-node KRaft: broker and controller in one process.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT,SASL_PLAINTEXT://$HOST:$SASL_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT,SASL_PLAINTEXT://$HOST:$SASL_PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT

# A SASL/PLAIN listener as well, so that clients configured for a secured
# cluster are tested against one. Local development credentials only.
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SASL_USER="$SASL_PASSWORD";

log.dirs=$DATA_DIR
metadata.log.dir=$DATA_DIR

# Topics
auto.create.topics.enable=true
num.partitions=4
default.replication.factor=1
min.insync.replicas=1
delete.topic.enable=true

# Internal topics: one node, so replication factor 1 everywhere.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=4
group.initial.rebalance.delay.ms=0

# Small machine: few threads, small segments and buffers, short retention.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
log.segment.bytes=67108864
# Every test and benchmark run makes topics of its own: a day of them is plenty
# for a development broker (three days of benchmark runs once filled 43 GB).
log.retention.hours=24
log.retention.check.interval.ms=300000
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
socket.request.max.bytes=104857600
EOF
    mv "$SERVER_PROPERTIES.tmp" "$SERVER_PROPERTIES"
}

# ---------------------------------------------------------------- java -----

# Short-lived JVMs (storage format, kafka-topics): start fast, small heap.
run_tool() {
    local main="$1"
    shift
    "$JAVA" -Xms64m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
        -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$CONFIG_DIR/log4j2-tools.xml" \
        -cp "$LIBS/*" "$main" "$@"
}

format_storage() {
    if [[ -f "$DATA_DIR/meta.properties" ]]; then
        return 0
    fi
    local cluster_id
    cluster_id="$(run_tool kafka.tools.StorageTool random-uuid)" ||
        die "kafka.tools.StorageTool random-uuid failed"
    log "formatting KRaft storage in $DATA_DIR (cluster id $cluster_id)"
    local output
    if ! output="$(run_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$SERVER_PROPERTIES" --standalone 2>&1)"; then
        printf '%s\n' "$output" >&2
        die "kafka.tools.StorageTool format failed for $SERVER_PROPERTIES"
    fi
}

# ------------------------------------------------------------ the broker ---

# The pid in the pid file, if that process is alive and is this script's
# broker for this instance (guards against a recycled pid).
broker_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid cmdline
    pid="$(<"$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r "/proc/$pid/cmdline" ]]; then
        cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
    else
        cmdline="$(ps -o args= -p "$pid" 2>/dev/null)" || return 1
    fi
    [[ "$cmdline" == *kafka.Kafka* && "$cmdline" == *"$SERVER_PROPERTIES"* ]] || return 1
    printf '%s\n' "$pid"
}

# Sends a Kafka ApiVersions v0 request over bash's /dev/tcp and checks that a
# response with our correlation id comes back. The broker only processes
# requests once it has started and been unfenced, so an answer means it
# really serves requests. Costs milliseconds instead of a JVM start.
#   request: size=23 | api_key=18 | api_version=0 | correlation_id=42 | client_id="rapport-probe"
probe() {
    local host="$1" port="$2" reply
    # shellcheck disable=SC2016 # $1/$2 expand in the inner bash
    reply="$(timeout 5 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "\x00\x00\x00\x17\x00\x12\x00\x00\x00\x00\x00\x2a\x00\x0drapport-probe" >&3
        head -c 8 <&3 | od -An -tx1 | tr -d " \n"
    ' probe "$host" "$port" 2>/dev/null)" || return 1
    [[ "${reply:8:8}" == "0000002a" ]]
}

port_in_use() {
    # shellcheck disable=SC2016 # $1/$2 expand in the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' port "$1" "$2" 2>/dev/null
}

healthy() { broker_pid >/dev/null && probe "$HOST" "$PORT"; }

# Size of the broker log when this start launched the broker, so that a
# failure shows this run's lines, not the previous run's.
LOG_START_OFFSET=0

show_log_tail() {
    log "last 40 lines of $LOG_FILE (this start):"
    if [[ -f "$LOG_FILE" ]]; then
        tail -c "+$((LOG_START_OFFSET + 1))" "$LOG_FILE" | tail -n 40 >&2
    fi
    if [[ -s "$STDOUT_FILE" ]]; then
        log "last 40 lines of $STDOUT_FILE:"
        tail -n 40 "$STDOUT_FILE" >&2
    fi
}

launch_broker() {
    rm -f "$PID_FILE"
    : >"$STDOUT_FILE"
    LOG_START_OFFSET=0
    if [[ -f "$LOG_FILE" ]]; then
        LOG_START_OFFSET="$(wc -c <"$LOG_FILE")"
    fi
    # setsid: own session, so the broker outlives the test or shell that
    # started it and no terminal signal reaches it. The inner shell writes
    # its own pid and execs java, so the pid file names the JVM. fd 9 (the
    # start lock) is closed so the broker does not hold the lock.
    local -a GC_OPTS=(-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35)
    if [[ -n "${RAPPORT_KAFKA_GC_OPTS:-}" ]]; then
        read -r -a GC_OPTS <<<"$RAPPORT_KAFKA_GC_OPTS"
    fi
    # shellcheck disable=SC2016 # $0/$@ expand in the inner bash
    nohup setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
        "$JAVA" "-Xms$HEAP" "-Xmx$HEAP" \
        "${GC_OPTS[@]}" \
        -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
        "-Xlog:gc:file=$GC_LOG:timemillis:filecount=2,filesize=20m" \
        -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$CONFIG_DIR/log4j2-broker.xml" \
        -Drapport.kafka.log="$LOG_FILE" \
        -Dkafka.logs.dir="$INSTANCE" \
        -cp "$LIBS/*" kafka.Kafka "$SERVER_PROPERTIES" \
        </dev/null >>"$STDOUT_FILE" 2>&1 9>&- &
    local waited=0
    while [[ ! -s "$PID_FILE" ]] && ((waited < 50)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    [[ -s "$PID_FILE" ]] || die "the broker did not write $PID_FILE"
}

wait_until_ready() {
    local deadline=$(($(now) + START_TIMEOUT))
    while (($(now) < deadline)); do
        if ! broker_pid >/dev/null; then
            log "error: the broker exited during startup"
            show_log_tail
            return 1
        fi
        if probe "$HOST" "$PORT"; then
            # One real admin round-trip through the Java client, as a consumer
            # of this broker would do it.
            if run_tool org.apache.kafka.tools.TopicCommand \
                --bootstrap-server "$LOCAL_BOOTSTRAP" --list >/dev/null 2>&1; then
                return 0
            fi
        fi
        sleep 0.5
    done
    log "error: the broker did not answer on $LOCAL_BOOTSTRAP within ${START_TIMEOUT}s"
    show_log_tail
    return 1
}

kill_broker() {
    local pid
    pid="$(broker_pid)" || {
        rm -f "$PID_FILE"
        return 0
    }
    log "stopping the broker (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true # in case it was stopped (SIGSTOP, ^Z)
    local deadline=$(($(now) + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && (($(now) < deadline)); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "the broker did not stop within ${STOP_TIMEOUT}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do
            sleep 0.1
        done
    fi
    rm -f "$PID_FILE"
    log "stopped"
}

# -------------------------------------------------------------- commands ---

cmd_start() {
    if external_bootstrap; then
        bootstrap_address
        return 0
    fi
    [[ "$PORT" != "$CONTROLLER_PORT" ]] ||
        die "RAPPORT_KAFKA_PORT and RAPPORT_KAFKA_CONTROLLER_PORT are both $PORT; they must differ"
    require_tools
    # Fast path without the lock: our broker is up and answering.
    if healthy; then
        bootstrap_address
        return 0
    fi
    take_lock
    if healthy; then
        bootstrap_address
        return 0
    fi
    # Our broker is alive but not answering: maybe a start that was
    # interrupted; give it the start timeout, then replace it.
    if broker_pid >/dev/null; then
        log "a broker started by this script is running but not answering yet; waiting"
        local deadline=$(($(now) + START_TIMEOUT))
        while broker_pid >/dev/null && (($(now) < deadline)); do
            if probe "$HOST" "$PORT"; then
                bootstrap_address
                return 0
            fi
            sleep 0.5
        done
        log "it did not become ready; restarting it"
        kill_broker
    fi
    rm -f "$PID_FILE"
    if port_in_use "$HOST" "$PORT"; then
        die "port $PORT on $HOST is in use by a process this script did not start; stop it, or set RAPPORT_KAFKA_PORT (and RAPPORT_KAFKA_CONTROLLER_PORT), or point RAPPORT_KAFKA_BOOTSTRAP at a running Kafka"
    fi
    if port_in_use "$HOST" "$SASL_PORT"; then
        die "SASL port $SASL_PORT on $HOST is in use by a process this script did not start; set RAPPORT_KAFKA_SASL_PORT"
    fi
    if port_in_use "$HOST" "$CONTROLLER_PORT"; then
        die "controller port $CONTROLLER_PORT on $HOST is in use by a process this script did not start; set RAPPORT_KAFKA_CONTROLLER_PORT"
    fi

    find_java
    check_java_version
    fetch_jars
    write_log4j_configs
    write_server_properties
    format_storage

    log "starting Kafka $KAFKA_VERSION on $LOCAL_BOOTSTRAP (controller $HOST:$CONTROLLER_PORT, log $LOG_FILE)"
    local started
    started="$(now)"
    launch_broker
    if ! wait_until_ready; then
        kill_broker
        exit 1
    fi
    log "Kafka is ready on $LOCAL_BOOTSTRAP after $(($(now) - started))s (pid $(<"$PID_FILE"))"
    bootstrap_address
}

cmd_stop() {
    if external_bootstrap; then
        log "RAPPORT_KAFKA_BOOTSTRAP is set; nothing to stop"
        return 0
    fi
    if ! broker_pid >/dev/null; then
        rm -f "$PID_FILE"
        log "no broker started by this script is running"
        return 0
    fi
    require_tools
    take_lock
    kill_broker
}

cmd_reset() {
    if external_bootstrap; then
        die "RAPPORT_KAFKA_BOOTSTRAP is set: reset only empties a broker this script runs"
    fi
    require_tools
    take_lock
    if broker_pid >/dev/null; then
        kill_broker
    fi
    rm -f "$PID_FILE"
    rm -rf "$DATA_DIR"
    log "emptied $DATA_DIR"
}

cmd_status() {
    if external_bootstrap; then
        # Probe the first host:port of the external list.
        local first="${RAPPORT_KAFKA_BOOTSTRAP%%,*}"
        first="${first#*://}"
        if probe "${first%:*}" "${first##*:}"; then
            bootstrap_address
            return 0
        fi
        log "no Kafka answers at $RAPPORT_KAFKA_BOOTSTRAP"
        return 1
    fi
    if healthy; then
        bootstrap_address
        return 0
    fi
    if broker_pid >/dev/null; then
        log "the broker (pid $(<"$PID_FILE")) is running but not answering on $LOCAL_BOOTSTRAP"
    else
        log "not running"
    fi
    return 1
}

cmd_topics() {
    find_java
    if ! libs_ready; then
        take_lock
        fetch_jars
        exec 9>&-
    fi
    write_log4j_configs
    run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$(bootstrap_address)" "$@"
}

main() {
    local cmd="${1:-}"
    if (($# > 0)); then
        shift
    fi
    case "$cmd" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    reset) cmd_reset ;;
    status) cmd_status ;;
    bootstrap) bootstrap_address ;;
    logfile) printf '%s\n' "$LOG_FILE" ;;
    sasl-bootstrap) printf '%s\n' "$HOST:$SASL_PORT" ;;
    topics) cmd_topics "$@" ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage
        exit 2
        ;;
    esac
}

main "$@"
