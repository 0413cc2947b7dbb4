#!/usr/bin/env bash
# THE test command (README and .ci/run call exactly this):
#   bash scripts/test.sh [pytest args...]
# Installs what is missing, then runs pytest from the repository root. The integration fixtures start Kafka
# and Redis with scripts/services.sh. pytest's "no tests collected" (exit 5) counts as a failure.
# Two steps: everything but the slow fault tests, then the tests marked `cluster` (worker crashes, broker
# restarts, a 3-broker cluster) under a time bound. Either failing fails the run.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/install.sh || exit 1
"${PYTHON:-python}" -m pytest -q -m "not cluster" "$@"
rc=$?
CLUSTER_TIMEOUT="${QTA_CLUSTER_TEST_TIMEOUT:-1200}"
timeout -k 30 "$CLUSTER_TIMEOUT" "${PYTHON:-python}" -m pytest -q -m cluster "$@"
crc=$?
if [ $crc -eq 124 ] || [ $crc -eq 137 ]; then
    echo "test.sh: the cluster tests ran past ${CLUSTER_TIMEOUT}s; that is a failure" >&2
    crc=1
fi
# No tests collected (exit 5) is a failure of the full run. With arguments, one step may select nothing
# (a path of only cluster tests, or of none), but not both.
if [ $rc -eq 5 ] && { [ $# -eq 0 ] || [ $crc -eq 5 ]; }; then
    echo "test.sh: pytest collected no tests; that is a failure" >&2
    rc=1
elif [ $rc -eq 5 ]; then
    rc=0
fi
if [ $crc -eq 5 ] && [ $# -eq 0 ]; then
    echo "test.sh: pytest collected no cluster tests; that is a failure" >&2
    crc=1
elif [ $crc -eq 5 ]; then
    crc=0
fi
[ $rc -ne 0 ] && exit $rc
exit $crc
