# Shared by the service scripts (sourced, not run): pidfile handling and a clean stop with a deadline.
# The sourcing script sets PIDFILE and defines log().

# running_pid [CMDLINE_PATTERN]: the pid in $PIDFILE while that process lives (and its command line matches,
# so a pid recycled by another program is not taken for ours).
running_pid() {
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null)" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    if [ -n "${1:-}" ]; then
        grep -q "$1" "/proc/$pid/cmdline" 2>/dev/null || return 1
    fi
    echo "$pid"
}

# reap PID SECONDS: wait for PID, already asked to stop, to exit; SIGKILL it after SECONDS; forget $PIDFILE.
reap() {
    local pid="$1" deadline=$((SECONDS + $2))
    while [ "$SECONDS" -lt "$deadline" ]; do
        kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; log "stopped"; return 0; }
        sleep 0.2
    done
    log "no clean shutdown after $2s; killing pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

# write_kafka_log4j FILE LOG: the broker's log4j2 config (one rolling LOG file, client and state-change chatter
# at WARN), shared by the single node (kafka.sh) and the cluster (kafka-cluster.sh).
write_kafka_log4j() {
    sed "s:@LOG@:$2:" >"$1" <<'EOF'
status = warn
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = @LOG@
appender.file.filePattern = @LOG@.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 10MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.config.name = org.apache.kafka.common.config
logger.config.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
EOF
}
