#!/usr/bin/env bash
# One click: JupyterLab on :8888 (the notebooks) and the app on :8080 (web page at /, API at /v1).
# Sets up .venv (installing requirements.txt only when it changed), starts both, waits until both
# answer, prints their URLs and supervises them: when one dies the other is stopped and this exits
# non-zero; Ctrl-C or SIGTERM stops both. The same script is the Docker image's entry point
# (--container). ./start.sh --help lists the flags.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: ./start.sh [options]

  --model M          auto (default), tiny, a hub id or a folder    GLMFLASH_MODEL
  --precision P      auto, bf16, fp16, fp32, int8, int4            GLMFLASH_PRECISION
  --device D         auto, cpu, cuda, cuda:N                       GLMFLASH_DEVICE
  --host H           address both services listen on               GLMFLASH_HOST
                     (127.0.0.1 by default; 0.0.0.0 in the container)
  --port N           web page + API port (8080)                    GLMFLASH_PORT
  --jupyter-port N   JupyterLab port (8888)                        GLMFLASH_JUPYTER_PORT
  --no-jupyter       start the app only                            GLMFLASH_JUPYTER=0
  --check            report Python, GPU, memory per precision, disk and ports; then exit
  --docker           build the Docker image and run it (--gpus all, ports, model cache volume)
  --container        the container's entry point: no .venv, nothing installed
  -h, --help         this text

JupyterLab gets a new random token on every start unless GLMFLASH_JUPYTER_TOKEN is set.
Every other GLMFLASH_* setting (docs/configuration.md) reaches the app as it is.
EOF
}

say() { echo "start.sh: $*" >&2; }
die() {
  say "$*"
  exit 2
}
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see ./start.sh --help)"; }
check_port() {
  [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge 1 ] && [ "$2" -le 65535 ] || die "$1 must be a port number (1-65535), not '$2'"
}
is_loopback() { case "$1" in 127.* | localhost | ::1) return 0 ;; *) return 1 ;; esac }
url_host() { case "$1" in 0.0.0.0) echo 127.0.0.1 ;; ::) echo "[::1]" ;; *:*) echo "[$1]" ;; *) echo "$1" ;; esac }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mode=run
container=0
jupyter="${GLMFLASH_JUPYTER:-1}"
host="${GLMFLASH_HOST:-}"
port="${GLMFLASH_PORT:-8080}"
jport="${GLMFLASH_JUPYTER_PORT:-8888}"
while [ $# -gt 0 ]; do
  case "$1" in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    --model) need_value "$@"; export GLMFLASH_MODEL="$2"; shift 2 ;;
    --precision) need_value "$@"; export GLMFLASH_PRECISION="$2"; shift 2 ;;
    --device) need_value "$@"; export GLMFLASH_DEVICE="$2"; shift 2 ;;
    --host) need_value "$@"; host="$2"; shift 2 ;;
    --port) need_value "$@"; port="$2"; shift 2 ;;
    --jupyter-port) need_value "$@"; jport="$2"; shift 2 ;;
    --no-jupyter) jupyter=0; shift ;;
    --check) mode=check; shift ;;
    --docker) mode=docker; shift ;;
    --container) container=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (see ./start.sh --help)" ;;
  esac
done
check_port --port "$port"
check_port --jupyter-port "$jport"
[ "$jupyter" = 0 ] || [ "$port" != "$jport" ] || die "--port and --jupyter-port are both $port"
if [ -z "$host" ]; then
  if [ "$container" = 1 ]; then host=0.0.0.0; else host=127.0.0.1; fi
fi
export GLMFLASH_HOST="$host" GLMFLASH_PORT="$port"

# -- --docker: build the image and run it ------------------------------------------------------
if [ "$mode" = docker ]; then
  command -v docker >/dev/null ||
    die "Docker is not installed. Install Docker Engine, or run ./start.sh without --docker."
  docker info >/dev/null 2>&1 ||
    die "Docker is installed but its engine does not answer: start the daemon (systemctl start docker) or add yourself to the docker group."
  gpus=(--gpus all)
  if [ "${GLMFLASH_DEVICE:-auto}" = cpu ]; then
    gpus=()
  elif ! docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia; then
    die "Docker has no NVIDIA runtime, so the container cannot see the GPU: install nvidia-container-toolkit and run 'nvidia-ctk runtime configure --runtime=docker' (or use --device cpu)."
  fi
  image="${GLMFLASH_IMAGE:-glmflash:latest}"
  say "building $image"
  docker build --tag "$image" "$root"
  publish="$host"
  [ "$publish" != 0.0.0.0 ] || publish=""
  run=(run --rm --init --name "glmflash-$port" "${gpus[@]}"
    --publish "${publish:+$publish:}$port:8080"
    --volume "${GLMFLASH_HF_VOLUME:-glmflash-hf-cache}:/home/glmflash/.cache/huggingface")
  [ "$jupyter" = 0 ] || run+=(--publish "${publish:+$publish:}$jport:8888")
  [ -t 0 ] && [ -t 1 ] && run+=(--interactive --tty)
  if [ -n "${GLMFLASH_MODEL:-}" ] && [ -d "$GLMFLASH_MODEL" ]; then # a local folder: mount it
    folder="$(cd "$GLMFLASH_MODEL" && pwd)"
    GLMFLASH_MODEL="/models/$(basename "$folder")"
    run+=(--volume "$folder:$GLMFLASH_MODEL:ro")
  fi
  while IFS='=' read -r name _; do # settings and hub variables pass through; none are baked in
    case "$name" in
      GLMFLASH_HOST | GLMFLASH_PORT | GLMFLASH_JUPYTER_PORT | GLMFLASH_IMAGE | GLMFLASH_HF_VOLUME) ;;
      GLMFLASH_* | HF_TOKEN | HF_HUB_OFFLINE | HF_ENDPOINT) run+=(--env "$name") ;;
    esac
  done < <(env)
  inside=(--port 8080 --jupyter-port 8888)
  [ "$jupyter" = 1 ] || inside+=(--no-jupyter)
  say "running $image: web page and API on port $port$([ "$jupyter" = 0 ] || echo ", JupyterLab on port $jport")"
  exec docker "${run[@]}" "$image" "${inside[@]}"
fi

# -- Python: .venv on a workstation, the image's own in the container -------------------------
if [ "$container" = 1 ]; then
  py="${PYTHON:-python3}"
else
  "$root/scripts/venv.sh" requirements.txt
  py="$root/.venv/bin/python"
fi

if [ "$mode" = check ]; then
  args=(check --host "$host" --port "$port" --jupyter-port "$jport")
  [ "$jupyter" = 1 ] || args+=(--no-jupyter)
  exec "$py" -m glmflash "${args[@]}"
fi

port_free() { "$py" "$root/glmflash/commands/ports.py" "$1" "$2"; }
port_free "$host" "$port" || exit 2
if [ "$jupyter" = 1 ]; then
  port_free "$host" "$jport" || exit 2
  if [ "${GLMFLASH_JUPYTER_TOKEN+set}" = set ]; then
    token="$GLMFLASH_JUPYTER_TOKEN"
  else
    token="$("$py" -c 'import secrets; print(secrets.token_urlsafe(24))')"
  fi
  if [ -z "$token" ]; then
    is_loopback "$host" ||
      die "refusing to start JupyterLab on $host without a token: anyone who reaches the port could run code. Unset GLMFLASH_JUPYTER_TOKEN (a random one is made) or set it."
    say "warning: JupyterLab without a token (GLMFLASH_JUPYTER_TOKEN is empty); only this machine can reach it"
  fi
fi

# -- start, wait until ready, supervise -------------------------------------------------------
set -m # each service in its own process group, so stopping one stops everything it started
pids=()
names=()
stopping=0

stop_all() {
  stopping=1
  trap - INT TERM
  local pid deadline=$((SECONDS + ${GLMFLASH_DRAIN_TIMEOUT:-30} + 5))
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  while [ $SECONDS -lt $deadline ] && any_alive; do sleep 0.2; done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
any_alive() {
  local pid
  for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && return 0; done
  return 1
}
on_signal() {
  say "$1: stopping $(printf '%s ' "${names[@]}")"
  stop_all
  say "stopped"
  exit 0
}
died() { # a service ended by itself: stop the rest and fail
  local i status="$1"
  for i in "${!pids[@]}"; do
    kill -0 "${pids[$i]}" 2>/dev/null || say "${names[$i]} exited (status $status): stopping the rest"
  done
  stop_all
  exit $((status == 0 ? 1 : status))
}
trap 'on_signal interrupted' INT
trap 'on_signal SIGTERM' TERM

app_url="http://$(url_host "$host"):$port"
say "starting the app on $host:$port (model ${GLMFLASH_MODEL:-auto}, precision ${GLMFLASH_PRECISION:-auto})"
"$py" -m glmflash serve --host "$host" --port "$port" </dev/null &
pids+=($!)
names+=(app)
if [ "$jupyter" = 1 ]; then
  jupyter_url="http://$(url_host "$host"):$jport"
  root_flag=()
  [ "$(id -u)" != 0 ] || root_flag=(--allow-root) # Jupyter refuses root unless told
  JUPYTER_TOKEN="$token" "$py" -m jupyter lab --no-browser --ip="$host" --port="$jport" \
    --ServerApp.port_retries=0 --ServerApp.root_dir="$root/notebooks" --ServerApp.log_level=WARN \
    "${root_flag[@]}" </dev/null &
  pids+=($!)
  names+=(jupyterlab)
fi

set +m # the groups are made; no job-control chatter from here on
started=$SECONDS
app_ready=0
jupyter_ready=$((1 - jupyter))
next_note=$((SECONDS + 15))
while [ $app_ready = 0 ] || [ $jupyter_ready = 0 ]; do
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      status=0
      wait "$pid" || status=$?
      died "$status"
    fi
  done
  if [ $app_ready = 0 ] && "$py" "$root/scripts/probe.py" "$app_url/ready" 2; then
    app_ready=1
    say "app ready after $((SECONDS - started)) s"
  fi
  if [ $jupyter_ready = 0 ] && "$py" "$root/scripts/probe.py" "$jupyter_url/api" 2; then
    jupyter_ready=1
    say "JupyterLab ready after $((SECONDS - started)) s"
  fi
  if [ $SECONDS -ge $next_note ]; then
    say "still starting after $((SECONDS - started)) s ($([ $app_ready = 1 ] || echo "the app is loading the model; ")its log is above)"
    next_note=$((SECONDS + 15))
  fi
  sleep 0.5 &
  wait $! || true
done

echo
echo "glmflash is ready ($((SECONDS - started)) s):"
echo "  web page    $app_url/"
echo "  API         $app_url/v1   (OpenAI-compatible; python -m glmflash --help)"
if [ "$jupyter" = 1 ]; then
  echo "  JupyterLab  $jupyter_url/lab${token:+?token=$token}"
fi
[ "$host" != 0.0.0.0 ] || echo "  (listening on all addresses: use this machine's name instead of 127.0.0.1 elsewhere)"
echo "Ctrl-C stops everything."
echo

status=0
wait -n "${pids[@]}" || status=$?
[ $stopping = 1 ] || died "$status"
