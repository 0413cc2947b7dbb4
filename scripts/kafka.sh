#!/usr/bin/env bash
# A local single-node Apache Kafka (KRaft, one combined broker+controller) for development and tests.
#   bash scripts/kafka.sh start|stop|status
# Broker 127.0.0.1:19092, controller 127.0.0.1:19093 (override with QTA_KAFKA_PORT / QTA_KAFKA_CONTROLLER_PORT).
# State (data, config, kafka.log, pid) under ${QTA_STATE:-${QTA_CACHE:-$HOME/.cache/qta-monitor}/state}/kafka.
# QTA_KAFKA_EXTRA_CONFIG=FILE appends broker properties (a later key wins), e.g. TLS / SASL listeners; the
# PLAINTEXT listener on the broker port stays, as the start-up check uses it.
# Jars come from scripts/install.sh (Maven Central, cached). `start` is a fast no-op when already running.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${QTA_CACHE:-$HOME/.cache/qta-monitor}"
STATE="${QTA_STATE:-$CACHE/state}"
PORT="${QTA_KAFKA_PORT:-19092}"
CPORT="${QTA_KAFKA_CONTROLLER_PORT:-19093}"
DIR="$STATE/kafka-$PORT"
PIDFILE="$DIR/kafka.pid"
LOG="$DIR/kafka.log"
PYTHON="${PYTHON:-python}"
VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/scripts/kafka/pom.xml")"
LIBS="$CACHE/kafka-$VERSION/libs"
START_TIMEOUT="${QTA_KAFKA_START_TIMEOUT:-90}"

log() { echo "kafka: $*" >&2; }

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
kafka_pid() { running_pid 'kafka.Kafka'; }

# True once the broker answers a metadata request and the controller has elected itself.
answers() {
    "$PYTHON" - "127.0.0.1:$PORT" "${1:-5}" <<'EOF' 2>/dev/null
import asyncio, sys
from aiokafka.admin import AIOKafkaAdminClient
async def main() -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=sys.argv[1], request_timeout_ms=int(float(sys.argv[2]) * 1000))
    await admin.start()
    try:
        await admin.describe_cluster()
        await admin.list_topics()
    finally:
        await admin.close()
asyncio.run(asyncio.wait_for(main(), float(sys.argv[2]) + 1))
EOF
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_config() {
    mkdir -p "$DIR/data"
    cat >"$DIR/server.properties" <<EOF
# Written by scripts/kafka.sh; edits are overwritten on the next start.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DIR/data
# A small dev box: few partitions, replication 1, no rebalance delay, topics only via \`topics apply\`.
num.partitions=3
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=2
log.retention.hours=24
log.segment.bytes=67108864
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
EOF
    if [ -n "${QTA_KAFKA_EXTRA_CONFIG:-}" ]; then
        { echo "# from $QTA_KAFKA_EXTRA_CONFIG"; cat "$QTA_KAFKA_EXTRA_CONFIG"; } >>"$DIR/server.properties"
    fi
    write_kafka_log4j "$DIR/log4j2.properties" "$LOG"
}

start() {
    mkdir -p "$DIR"
    exec 8>"$DIR/start.lock"
    flock 8
    if pid="$(kafka_pid)"; then
        log "already running (pid $pid) on 127.0.0.1:$PORT"
        return 0
    fi
    if port_open "$PORT"; then
        if answers 5; then
            log "a broker not started from $DIR already answers on 127.0.0.1:$PORT; using it"
            return 0
        fi
        log "port $PORT is taken by something that is not a Kafka broker"; return 1
    fi
    [ -f "$LIBS/.complete" ] || bash "$ROOT/scripts/install.sh"
    write_config
    local cp="$LIBS/*"
    if [ ! -f "$DIR/data/meta.properties" ]; then
        local cluster
        cluster="$(java -cp "$cp" kafka.tools.StorageTool random-uuid)"
        java -Dlog4j2.configurationFile="$DIR/log4j2.properties" -cp "$cp" kafka.tools.StorageTool format \
            --standalone -t "$cluster" -c "$DIR/server.properties" >>"$DIR/format.log" 2>&1 \
            || { log "storage format failed:"; tail -20 "$DIR/format.log" >&2; return 1; }
    fi
    : >>"$LOG"
    local since
    since="$(wc -l <"$LOG")"
    # setsid: the broker outlives the shell (and pytest) that started it; a later `stop` ends it.
    # 8>&-: the broker must not inherit (and so hold forever) the start lock.
    setsid nohup java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$DIR/log4j2.properties" -cp "$cp" \
        kafka.Kafka "$DIR/server.properties" >>"$DIR/stdout.log" 2>&1 </dev/null 8>&- &
    echo $! >"$PIDFILE"
    local deadline=$((SECONDS + START_TIMEOUT))
    while [ $SECONDS -lt $deadline ]; do
        # kill -0, not kafka_pid: until the forked shell has exec'd java its command line is not kafka.Kafka
        if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
            log "the broker exited during start-up; last log lines:"
            tail -n +"$((since + 1))" "$LOG" | tail -30 >&2; tail -10 "$DIR/stdout.log" >&2
            rm -f "$PIDFILE"; return 1
        fi
        if port_open "$PORT" && answers 5; then
            log "Kafka $VERSION up on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), log $LOG)"
            return 0
        fi
        sleep 0.5
    done
    log "not answering after ${START_TIMEOUT}s; last log lines:"
    tail -30 "$LOG" >&2
    stop
    return 1
}

stop() {
    local pid
    if ! pid="$(kafka_pid)"; then
        rm -f "$PIDFILE"; log "not running"; return 0
    fi
    kill -TERM "$pid"
    reap "$pid" 30
}

status() {
    local pid
    if pid="$(kafka_pid)"; then
        echo "kafka: running (pid $pid) on 127.0.0.1:$PORT, Kafka $VERSION, state $DIR"
    else
        echo "kafka: not running"; return 3
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
