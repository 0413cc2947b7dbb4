#!/usr/bin/env bash
# A local 3-node Apache Kafka cluster (KRaft; each node a combined broker+controller, a 3-voter quorum) on
# loopback, for the replication and fail-over tests. Separate ports and state from scripts/kafka.sh.
#   bash scripts/kafka-cluster.sh start|stop|status [NODE]   NODE 1-3: only that node (default: all three)
#   bash scripts/kafka-cluster.sh kill NODE                    SIGKILL one node (a crash, for fault tests)
# Brokers 127.0.0.1:29092-29094, controllers 127.0.0.1:29192-29194 (QTA_KAFKA_CLUSTER_PORT and
# QTA_KAFKA_CLUSTER_CONTROLLER_PORT move the first of each). Topics need replication factor 3 and
# min.insync.replicas 2 here: `qta-monitor topics apply --replication-factor 3` (topics.json sets min ISR).
# State under ${QTA_STATE:-${QTA_CACHE:-$HOME/.cache/qta-monitor}/state}/kafka-cluster-<port>/node-<n>.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${QTA_CACHE:-$HOME/.cache/qta-monitor}"
STATE="${QTA_STATE:-$CACHE/state}"
BASE="${QTA_KAFKA_CLUSTER_PORT:-29092}"
CBASE="${QTA_KAFKA_CLUSTER_CONTROLLER_PORT:-29192}"
TOP="$STATE/kafka-cluster-$BASE"
PYTHON="${PYTHON:-python}"
VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/scripts/kafka/pom.xml")"
LIBS="$CACHE/kafka-$VERSION/libs"
START_TIMEOUT="${QTA_KAFKA_START_TIMEOUT:-120}"
NODES=(1 2 3)

log() { echo "kafka-cluster: $*" >&2; }

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

port() { echo $((BASE + $1 - 1)); }
cport() { echo $((CBASE + $1 - 1)); }
dir() { echo "$TOP/node-$1"; }
node_pid() { PIDFILE="$(dir "$1")/kafka.pid" running_pid 'kafka.Kafka'; }
bootstrap() { local n out=""; for n in "${NODES[@]}"; do out="$out${out:+,}127.0.0.1:$(port "$n")"; done; echo "$out"; }
voters() { local n out=""; for n in "${NODES[@]}"; do out="$out${out:+,}$n@127.0.0.1:$(cport "$n")"; done; echo "$out"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# True once node $1 answers and sees $2 live brokers (all three after a start; it may be fewer while one
# node is stopped on purpose).
answers() {
    "$PYTHON" - "127.0.0.1:$(port "$1")" "$2" <<'EOF' 2>/dev/null
import asyncio, sys
from aiokafka.admin import AIOKafkaAdminClient
async def main() -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=sys.argv[1], request_timeout_ms=5000)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        assert len(cluster["brokers"]) >= int(sys.argv[2]), cluster
        await admin.list_topics()
    finally:
        await admin.close()
asyncio.run(asyncio.wait_for(main(), 6))
EOF
}

write_config() {
    local n="$1" d
    d="$(dir "$n")"
    mkdir -p "$d/data"
    cat >"$d/server.properties" <<EOF
# Written by scripts/kafka-cluster.sh; edits are overwritten on the next start.
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$(voters)
listeners=PLAINTEXT://127.0.0.1:$(port "$n"),CONTROLLER://127.0.0.1:$(cport "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(port "$n")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$d/data
# Replicated like production: internal topics on all three nodes, a write needs two of them.
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
# A dead node is fenced after 6 s (default 9 s), so fail-over tests stay short.
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=6000
num.partitions=3
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
num.replica.fetchers=1
num.recovery.threads.per.data.dir=1
background.threads=2
log.retention.hours=24
log.segment.bytes=67108864
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
EOF
    write_kafka_log4j "$d/log4j2.properties" "$d/kafka.log"
}

launch() {
    local n="$1" d cp="$LIBS/*"
    d="$(dir "$n")"
    if pid="$(node_pid "$n")"; then
        log "node $n already running (pid $pid) on 127.0.0.1:$(port "$n")"
        return 0
    fi
    if port_open "$(port "$n")" || port_open "$(cport "$n")"; then
        log "port $(port "$n") or $(cport "$n") is taken by something that is not node $n"; return 1
    fi
    write_config "$n"
    if [ ! -f "$d/data/meta.properties" ]; then
        java -Dlog4j2.configurationFile="$d/log4j2.properties" -cp "$cp" kafka.tools.StorageTool format \
            -t "$(cat "$TOP/cluster.id")" -c "$d/server.properties" >>"$d/format.log" 2>&1 \
            || { log "storage format of node $n failed:"; tail -20 "$d/format.log" >&2; return 1; }
    fi
    : >>"$d/kafka.log"
    # setsid: the node outlives the shell (and pytest) that started it; 8>&-: it must not hold the lock.
    setsid nohup java -Xms128m -Xmx384m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$d/log4j2.properties" -cp "$cp" \
        kafka.Kafka "$d/server.properties" >>"$d/stdout.log" 2>&1 </dev/null 8>&- &
    echo $! >"$d/kafka.pid"
}

# wait_up NODE... : until each answers; the whole cluster must see all three brokers when all are asked for.
wait_up() {
    local want=$# n deadline=$((SECONDS + START_TIMEOUT))
    [ "$want" -eq 3 ] || want=1
    for n in "$@"; do
        while ! { port_open "$(port "$n")" && answers "$n" "$want"; }; do
            # kill -0, not node_pid: until the forked shell has exec'd java its command line is not kafka.Kafka
            if ! kill -0 "$(cat "$(dir "$n")/kafka.pid" 2>/dev/null)" 2>/dev/null; then
                log "node $n exited during start-up; last log lines:"
                tail -30 "$(dir "$n")/kafka.log" >&2; tail -10 "$(dir "$n")/stdout.log" >&2
                return 1
            fi
            if [ $SECONDS -ge $deadline ]; then
                log "node $n not answering after ${START_TIMEOUT}s; last log lines:"
                tail -30 "$(dir "$n")/kafka.log" >&2
                return 1
            fi
            sleep 0.5
        done
    done
}

start() {
    mkdir -p "$TOP"
    exec 8>"$TOP/start.lock"
    flock 8
    [ -f "$LIBS/.complete" ] || bash "$ROOT/scripts/install.sh"
    [ -f "$TOP/cluster.id" ] || java -cp "$LIBS/*" kafka.tools.StorageTool random-uuid >"$TOP/cluster.id"
    local n
    for n in "$@"; do launch "$n"; done
    # a lone node cannot elect a controller, so the others must be running before any one answers
    wait_up "$@" || { [ $# -eq 3 ] && stop "$@"; return 1; }
    log "Kafka $VERSION nodes $* up; bootstrap $(bootstrap)"
}

stop() {
    local n pid
    # all at once: a node waits for the quorum during its controlled shutdown, so one by one the last hangs
    for n in "$@"; do
        if pid="$(node_pid "$n")"; then kill -TERM "$pid"; fi
    done
    for n in "$@"; do
        if pid="$(node_pid "$n")"; then
            PIDFILE="$(dir "$n")/kafka.pid" reap "$pid" 30
        else
            rm -f "$(dir "$n")/kafka.pid"
        fi
    done
}

crash() {
    local pid
    pid="$(node_pid "$1")" || { log "node $1 not running"; return 1; }
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$(dir "$1")/kafka.pid"
    log "node $1 killed"
}

status() {
    local n pid rc=0
    for n in "$@"; do
        if pid="$(node_pid "$n")"; then
            echo "kafka-cluster: node $n running (pid $pid) on 127.0.0.1:$(port "$n"), state $(dir "$n")"
        else
            echo "kafka-cluster: node $n not running"; rc=3
        fi
    done
    return $rc
}

action="${1:-}"
shift || true
if [ $# -gt 0 ]; then
    case "$1" in 1|2|3) ;; *) echo "NODE must be 1, 2 or 3" >&2; exit 2 ;; esac
    targets=("$1")
else
    targets=("${NODES[@]}")
fi
case "$action" in
    start) start "${targets[@]}" ;;
    stop) stop "${targets[@]}" ;;
    status) status "${targets[@]}" ;;
    kill) [ $# -eq 1 ] || { echo "usage: $0 kill NODE" >&2; exit 2; }; crash "$1" ;;
    bootstrap) bootstrap ;;
    *) echo "usage: $0 start|stop|status [NODE] | kill NODE | bootstrap" >&2; exit 2 ;;
esac
