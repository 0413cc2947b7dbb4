#!/usr/bin/env bash
# The soak under combined faults (bench/soak.py): `--minutes` (default 30) of traffic at about 70 % of the
# measured capacity through 2-4 profile-guard workers on the 3-broker cluster and a Redis Cluster with
# replicas, with a seeded schedule of worker kills, joins and leaves, a broker leader crash and a Redis
# primary fail-over, then the checks (exit 1 when one fails).
#   bash scripts/soak.sh [--minutes M] [--seed S] [other bench/soak.py flags]
#   nohup bash scripts/soak.sh > /tmp/soak.log 2>&1 &      # the 30-minute run in the background
# Starts what it needs: scripts/services.sh (the install check, Redis), scripts/kafka-cluster.sh (left
# running), and a fresh Redis Cluster on 17121-17126 (stopped at the end). Runs niced (QTA_SOAK_NICE, 10)
# so that it shares a busy machine politely. Results: bench/results/soak.json (or --out FILE).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/services.sh up
bash scripts/kafka-cluster.sh start
exec nice -n "${QTA_SOAK_NICE:-10}" "${PYTHON:-python}" bench/soak.py "$@"
