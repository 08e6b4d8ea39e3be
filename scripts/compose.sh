#!/usr/bin/env bash
# Run the compose stack (compose.yaml: the service, Prometheus, Grafana) with the container engine this machine has.
#
#   scripts/compose.sh up --build -d        scripts/compose.sh ps        scripts/compose.sh down -v
#
# Arguments are compose's own. With Docker (a `docker compose` plugin and a running daemon) this is exactly
# `docker compose -f compose.yaml "$@"`. Otherwise it runs podman-compose on the same file, after preparing what an
# engine without an image registry needs (docs/deploy.md, "Podman"):
#   - the base image: python:3.11-slim-bookworm when it can be pulled, else localhost/onestep-base:bookworm, built
#     once from Debian packages (debootstrap, the host's Debian mirror) and passed as the PYTHON_IMAGE build argument;
#   - Prometheus: prom/prometheus when it can be pulled, else localhost/onestep-prometheus:debian, built once from
#     Debian's prometheus package (deploy/prometheus/Containerfile), as PROMETHEUS_IMAGE;
#   - Grafana: grafana/grafana when it can be pulled; else it is left out of `up`, with the reason logged (no Debian
#     package exists to build it from);
#   - pip inside the build uses this host's pip configuration (index, find-links, constraints, CA bundle, read with
#     `pip config list` at run time): the merged file goes in as the build secret `pipconf`, the local paths it names
#     as read-only build volumes. When that configuration resolves torch to a CPU wheel, TORCH_INDEX_URL is set
#     empty so the build takes the same wheel; otherwise the build uses PyTorch's CPU index as on Docker.
#   - images are built in the Docker format (`--format docker`): the OCI format has no HEALTHCHECK.
# Environment: ONESTEP_ENGINE=docker|podman forces an engine; ONESTEP_PULL=never skips pull attempts;
# PYTHON_IMAGE, PROMETHEUS_IMAGE, GRAFANA_IMAGE, TORCH_INDEX_URL override the choices above.
# GRAFANA_ADMIN_PASSWORD: unset, one is generated once and kept (mode 600) in
# ${XDG_STATE_HOME:-~/.local/state}/onestep/grafana-admin-password; compose.yaml has no default password.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'compose.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

BASE_LOCAL=localhost/onestep-base:bookworm
PROMETHEUS_LOCAL=localhost/onestep-prometheus:debian
PYTHON_DEFAULT=docker.io/library/python:3.11-slim-bookworm
PROMETHEUS_DEFAULT=docker.io/prom/prometheus:v2.55.1
GRAFANA_DEFAULT=docker.io/grafana/grafana:11.3.0

# ---- the Grafana admin password: from the environment, or generated once outside the repository ----------------
if [ -z "${GRAFANA_ADMIN_PASSWORD:-}" ]; then
  state="${XDG_STATE_HOME:-$HOME/.local/state}/onestep"
  pwfile="$state/grafana-admin-password"
  if [ ! -s "$pwfile" ]; then
    mkdir -p "$state"
    (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '\n/+=' > "$pwfile")
    say "generated a Grafana admin password: $pwfile"
  fi
  GRAFANA_ADMIN_PASSWORD="$(cat "$pwfile")"
  export GRAFANA_ADMIN_PASSWORD
fi

# ---- Docker ------------------------------------------------------------------------------------------------------
docker_usable() {
  command -v docker >/dev/null && docker compose version >/dev/null 2>&1 && docker info >/dev/null 2>&1
}
engine="${ONESTEP_ENGINE:-}"
if [ -z "$engine" ]; then
  if docker_usable; then engine=docker; else engine=podman; fi
fi
if [ "$engine" = docker ]; then
  exec docker compose -f compose.yaml "$@"
fi

# ---- podman ------------------------------------------------------------------------------------------------------
command -v podman >/dev/null || die "no container engine: neither \`docker compose\` with a running daemon nor podman \
(on Debian, \`scripts/install.sh dev\` installs podman and podman-compose)"
if command -v podman-compose >/dev/null; then
  podman_compose=(podman-compose)
elif [ -x .venv/bin/podman-compose ]; then
  podman_compose=(.venv/bin/podman-compose)
else
  die "podman-compose not found (pip install podman-compose, or scripts/install.sh dev)"
fi
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi

# The compose command (first argument that is not a global option) and, for `up`, whether services were named.
command_name="" services_named=0 i=0 args=("$@")
while [ $i -lt ${#args[@]} ]; do
  a="${args[$i]}"
  if [ -z "$command_name" ]; then
    case "$a" in
      -f|--file|-p|--project-name|--env-file|--profile|--podman-*) i=$((i + 1)) ;;
      -*) ;;
      *) command_name="$a" ;;
    esac
  else
    case "$a" in
      --scale|-t|--timeout|--exit-code-from|--pull) i=$((i + 1)) ;;
      -*) ;;
      *) services_named=1 ;;
    esac
  fi
  i=$((i + 1))
done

# An image is usable when it is here already or can be pulled (fails at once where no registry is reachable).
usable() {
  podman image exists "$1" && return 0
  [ "${ONESTEP_PULL:-}" = never ] && return 1
  timeout 600 podman pull -q "$1" >/dev/null 2>&1
}

debian_mirror() {
  local uri
  uri="$(apt-get indextargets --format '$(REPO_URI) $(CODENAME)' 2>/dev/null | awk '$2 == "bookworm" {print $1; exit}')"
  echo "${uri:-http://deb.debian.org/debian/}"
}

build_base() {
  command -v debootstrap >/dev/null || die "cannot pull $PYTHON_DEFAULT and debootstrap is missing to build \
$BASE_LOCAL (apt-get install debootstrap, or set PYTHON_IMAGE to a Debian bookworm image with python3.11)"
  local dir mirror
  dir="$(mktemp -d "${TMPDIR:-/tmp}/onestep-base.XXXXXX")"
  mirror="$(debian_mirror)"
  say "building $BASE_LOCAL from Debian packages (debootstrap bookworm, about a minute)"
  if ! nice -n 10 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,python-is-python3 \
      bookworm "$dir/rootfs" "$mirror" >"$dir/debootstrap.log" 2>&1; then
    tail -20 "$dir/debootstrap.log" >&2
    rm -rf "$dir"
    die "debootstrap failed"
  fi
  # The mirror this host uses is not baked into the image: builds that need apt mount their own sources.
  rm -f "$dir/rootfs/etc/apt/sources.list"
  rm -rf "$dir"/rootfs/var/cache/apt/archives/*.deb "$dir"/rootfs/var/lib/apt/lists/*
  tar -C "$dir/rootfs" -c . | podman import --change 'CMD ["python3"]' - "$BASE_LOCAL" >/dev/null
  rm -rf "$dir"
}

build_prometheus() {
  local dir
  dir="$(mktemp -d "${TMPDIR:-/tmp}/onestep-apt.XXXXXX")"
  echo "deb $(debian_mirror) bookworm main" > "$dir/sources.list"
  # The host's apt network settings (proxies, snapshot date checks), nothing else of its configuration.
  apt-config dump 2>/dev/null | grep -E '^Acquire::([a-z]+::)?(Proxy|Check-Valid-Until|Check-Date)' > "$dir/host.conf" || true
  say "building $PROMETHEUS_LOCAL from Debian's prometheus package"
  nice -n 10 podman build --format docker -q -t "$PROMETHEUS_LOCAL" --build-arg "BASE_IMAGE=$PYTHON_IMAGE" \
    -v "$dir/sources.list:/etc/apt/sources.list:ro" -v "$dir/host.conf:/etc/apt/apt.conf.d/99host:ro" \
    -f deploy/prometheus/Containerfile deploy/prometheus >/dev/null
  rm -rf "$dir"
}

# pip's merged configuration as one file ($1), then the local paths it names, one a line, on stdout.
pip_build_config() {
  "$PY" - "$1" <<'PYEOF'
import ast, configparser, os, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
conf = configparser.ConfigParser(interpolation=None)
conf["global"] = {}
for line in out.splitlines():
    key, _, value = line.partition("=")
    section, _, option = key.rpartition(".")
    section = "global" if section in (":env:", "") else section
    if not conf.has_section(section):
        conf.add_section(section)
    conf[section][option] = ast.literal_eval(value)
if not any(conf.has_option(s, "cert") for s in conf.sections()):
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(var):
            conf["global"]["cert"] = os.environ[var]
            break
with open(sys.argv[1], "w") as f:
    conf.write(f)
paths = set()
for section in conf.sections():
    for option in ("cert", "client-cert", "constraint", "requirement", "find-links", "index-url", "extra-index-url"):
        for token in conf[section].get(option, "").split():
            path = token.removeprefix("file://")
            if path.startswith("/") and os.path.exists(path):
                path = os.path.realpath(path) if os.path.isfile(path) else path.rstrip("/")
                if option.endswith("index-url") and os.path.basename(path) == "simple":
                    path = os.path.dirname(path)  # a local simple index links to files beside it
                paths.add(path)
print("\n".join(sorted(paths)))
PYEOF
}

# Does this host's pip resolve the pinned torch to a CPU build (a local wheel, a mirror of the CPU index)?
host_pip_has_cpu_torch() {
  local version report
  version="$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile | head -1)"
  report="$("$PY" -m pip install --dry-run --quiet --no-deps --ignore-installed --report - "torch==$version" 2>/dev/null)" \
    || return 1
  printf '%s' "$report" | "$PY" -c 'import json, sys; r = json.load(sys.stdin)
from urllib.parse import unquote
sys.exit(0 if any("+cpu" in unquote(i["download_info"]["url"]) for i in r["install"]) else 1)'
}

global=()
tmp=""
cleanup() { [ -n "$tmp" ] && rm -rf "$tmp"; return 0; }
trap cleanup EXIT

# Images: decided for every command (compose interpolates the whole file), built only for the ones that start things.
builds=0
case "$command_name" in up|build|run|create|start|restart) builds=1 ;; esac
# pick_image VAR LOCAL DEFAULT BUILD: unless VAR is set, the locally built image where it exists or where the
# default cannot be pulled (then BUILD makes it, for commands that start things), else the default.
pick_image() {
  local var=$1 local_name=$2 default=$3 build=$4
  if [ -z "${!var:-}" ]; then
    if podman image exists "$local_name" || { [ $builds = 1 ] && ! usable "$default"; }; then
      printf -v "$var" '%s' "$local_name"
      if [ $builds = 1 ] && ! podman image exists "$local_name"; then "$build"; fi
    else
      printf -v "$var" '%s' "$default"
    fi
  fi
  export "$var"
}
pick_image PYTHON_IMAGE "$BASE_LOCAL" "$PYTHON_DEFAULT" build_base
pick_image PROMETHEUS_IMAGE "$PROMETHEUS_LOCAL" "$PROMETHEUS_DEFAULT" build_prometheus
skip_grafana=0
if [ -z "${GRAFANA_IMAGE:-}" ]; then
  GRAFANA_IMAGE="$GRAFANA_DEFAULT"
  if [ "$command_name" = up ] && ! usable "$GRAFANA_DEFAULT"; then skip_grafana=1; fi
fi
export GRAFANA_IMAGE

if [ $builds = 1 ]; then
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/onestep-compose.XXXXXX")"
  build_args=(--format docker --secret "id=pipconf,src=$tmp/pip.conf")
  while IFS= read -r path; do
    [ -n "$path" ] && build_args+=(-v "$path:$path:ro")
  done < <(pip_build_config "$tmp/pip.conf")
  if [ -z "${TORCH_INDEX_URL+set}" ] && host_pip_has_cpu_torch; then
    say "this host's pip resolves torch to a CPU wheel: the build uses pip's configuration (TORCH_INDEX_URL empty)"
    export TORCH_INDEX_URL=""
  fi
  global+=(--podman-build-args "$(printf '%q ' "${build_args[@]}")")
fi
export BUILDAH_FORMAT=docker

args=("$@")
if [ $skip_grafana = 1 ] && [ $services_named = 0 ]; then
  say "Grafana skipped: $GRAFANA_DEFAULT cannot be pulled here (no image registry reachable) and Grafana has no \
Debian package to build an image from; starting onestep and prometheus only"
  args+=(onestep prometheus)
fi
set +e
"${podman_compose[@]}" "${global[@]}" -f compose.yaml "${args[@]}"
rc=$?
set -e
exit $rc
