#!/usr/bin/env bash
# A local Redis Cluster of three primaries (Debian's redis-server) for the store's cluster tests.
#   bash scripts/redis-cluster.sh start | stop | status
# Nodes on 127.0.0.1:${QTA_REDIS_CLUSTER_PORT:-17001} and the next ports; QTA_REDIS_CLUSTER_REPLICAS=N
# (default 0) gives each primary N replicas (3 * (1 + N) nodes) for the fail-over test. State under
# ${QTA_STATE:-${QTA_CACHE:-$HOME/.cache/qta-monitor}/state}/redis-cluster-<first port>.
set -euo pipefail

CACHE="${QTA_CACHE:-$HOME/.cache/qta-monitor}"
STATE="${QTA_STATE:-$CACHE/state}"
FIRST="${QTA_REDIS_CLUSTER_PORT:-17001}"
REPLICAS="${QTA_REDIS_CLUSTER_REPLICAS:-0}"
mapfile -t PORTS < <(seq "$FIRST" "$((FIRST + 3 * (1 + REPLICAS) - 1))")
DIR="$STATE/redis-cluster-$FIRST"

log() { echo "redis-cluster: $*" >&2; }
ok() {  # every node must agree, not only the first: clients talk to all of them
    local port
    for port in "${PORTS[@]}"; do
        redis-cli -h 127.0.0.1 -p "$port" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || return 1
    done
    # with replicas: each primary has its replicas, in sync (a fail-over needs one to promote)
    [ "$REPLICAS" -eq 0 ] && return 0
    local linked=0
    for port in "${PORTS[@]}"; do
        if redis-cli -h 127.0.0.1 -p "$port" info replication 2>/dev/null | grep -q 'master_link_status:up'; then
            linked=$((linked + 1))
        fi
    done
    [ "$linked" -eq $((3 * REPLICAS)) ]
}

start() {
    mkdir -p "$DIR"
    exec 8>"$DIR/start.lock"
    flock 8
    if ok; then log "already running on 127.0.0.1:${PORTS[*]}"; return 0; fi
    for port in "${PORTS[@]}"; do
        mkdir -p "$DIR/$port"
        if ! redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
            rm -f "$DIR/$port/nodes.conf"  # a node that is not running forgets its old cluster
            redis-server --bind 127.0.0.1 --port "$port" --dir "$DIR/$port" --daemonize yes \
                --pidfile "$DIR/$port/redis.pid" --logfile "$DIR/$port/redis.log" --save '' \
                --appendonly no --cluster-enabled yes --cluster-config-file nodes.conf \
                --cluster-node-timeout 5000 --protected-mode yes 8>&-
        fi
    done
    for port in "${PORTS[@]}"; do
        for _ in $(seq 1 100); do
            redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG && break
            sleep 0.1
        done
    done
    if ! redis-cli -h 127.0.0.1 -p "$FIRST" cluster info | grep -q "cluster_known_nodes:${#PORTS[@]}"; then
        redis-cli --cluster create "${PORTS[@]/#/127.0.0.1:}" --cluster-replicas "$REPLICAS" --cluster-yes \
            >/dev/null
    fi
    for _ in $(seq 1 100); do
        if ok; then log "up on 127.0.0.1:${PORTS[*]}"; return 0; fi
        sleep 0.1
    done
    log "cluster not ok after 10s"; redis-cli -h 127.0.0.1 -p "$FIRST" cluster info >&2 || true
    return 1
}

stop() {
    for port in "${PORTS[@]}"; do
        redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
    done
    log "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) if ok; then log "ok on 127.0.0.1:${PORTS[*]}"; else log "not running"; exit 1; fi ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
