#!/usr/bin/env bash
# Runs Kiln's built-in buildpacks against the sample apps in examples/ on this host, without
# Kiln, the way Kiln runs them (buildpacks/README.md), and checks the contract:
#
#   - every script is #!/bin/sh, executable, and parses with `sh -n` and `busybox sh -n`;
#     the copies of lib/common.sh are identical;
#   - for each example, on its stack: only the right buildpack's bin/detect accepts (name on
#     the first line of stdout, exit 0; the others exit 1 with a reason on stderr);
#   - bin/supply into DEPS/0 writes nothing in app/, deps/ (outside deps/0) or profile.d;
#   - bin/finalize, bin/release (YAML with default_process_types);
#   - the app starts as the launcher would start it (profile.d scripts sourced, then
#     `sh -c <command>`, the Procfile's web: command winning over release's), with PORT set to a
#     free loopback port, and answers 200 with "Hello from <name>"; it is then killed by pid;
#   - the python example stages twice (cache miss, then a cache hit under 5 s);
#   - failures are clear: python/nodejs on tiny, no network, incomplete vendor/, bad #! line;
#   - the buildpacks are not written to.
#
# Stacks are emulated: `tiny` = PATH holding only busybox applets, scripts run with busybox
# sh; `bookworm` = this Debian bookworm host's PATH, scripts run with /bin/sh (dash) and again
# with busybox sh. When run as root, staging and apps run as uid 2000 (vcap) with the
# buildpacks read-only. Package indexes for the network cases are local servers on
# 127.0.0.1; nothing leaves the machine.
#
# Usage: buildpacks/test-contract.sh [-v]   (-v prints every script's output)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
EXAMPLES=$ROOT/examples
ORDER=(staticfile binary python nodejs procfile)
VERBOSE=0
[ "${1:-}" = -v ] && VERBOSE=1

BUSYBOX=${BUSYBOX:-/bin/busybox}
BOOKWORM_PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
for tool in "$BUSYBOX" python3 node npm curl setsid; do
    command -v "$tool" >/dev/null || { echo "test-contract: $tool is missing" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/kiln-contract.XXXXXX)
chmod 755 "$WORK"
SERVER_PIDS=()
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    local pid
    for pid in "${SERVER_PIDS[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

PASS=0
FAILED=()
ok() { PASS=$((PASS + 1)); printf '  ok    %s\n' "$*"; }
bad() { FAILED+=("$CASE: $*"); printf '  FAIL  %s\n' "$*"; }
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}
check_step() { # check_step STEP: C/STEP exited 0, else its output is shown
    if [ "$(cat "$C/$1.rc")" = 0 ]; then
        ok "$1 exits 0"
    else
        bad "$1 exits $(cat "$C/$1.rc")"
        show "$C/$1.out"
        show "$C/$1.err"
    fi
}
show() { # show FILE: the file, indented (always with -v, else only when asked)
    sed 's/^/          | /' "$1"
}

# --- Who runs the scripts --------------------------------------------------------------------
AS_VCAP=()
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
    AS_VCAP=(setpriv --reuid 2000 --regid 2000 --clear-groups)
fi
own() { if [ ${#AS_VCAP[@]} -gt 0 ]; then chown -R 2000:2000 "$@"; fi; }

# --- Read-only copy of the buildpacks ----------------------------------------------------------
BPS=$WORK/buildpacks
mkdir -p "$BPS"
for bp in "${ORDER[@]}"; do cp -a "$HERE/$bp" "$BPS/"; done
chmod -R a-w "$BPS"
bp_listing() { (cd "$BPS" && find . -printf '%p %y %s %m %T@\n' | sort); }
BP_BEFORE=$(bp_listing)

# --- Stacks ----------------------------------------------------------------------------------
TINY_BIN=$WORK/stacks/tiny/bin
mkdir -p "$TINY_BIN"
for applet in $("$BUSYBOX" --list); do ln -s "$BUSYBOX" "$TINY_BIN/$applet"; done
ln -sf "$BUSYBOX" "$TINY_BIN/busybox"
stack_path() { case $1 in tiny) echo "$TINY_BIN" ;; bookworm) echo "$BOOKWORM_PATH" ;; esac; }
# The shell that runs the buildpack scripts, and /bin/sh of the stack (for the launcher).
stack_shell() { case $1 in tiny) echo "$TINY_BIN/sh" ;; bookworm) echo /bin/sh ;; esac; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- Static checks ---------------------------------------------------------------------------
CASE=static
echo "== static checks"
for bp in "${ORDER[@]}"; do
    for script in detect supply finalize release compile; do
        f=$HERE/$bp/bin/$script
        if [ ! -x "$f" ]; then bad "$bp/bin/$script is missing or not executable"; continue; fi
        [ "$(head -n 1 "$f")" = '#!/bin/sh' ] || bad "$bp/bin/$script does not start with #!/bin/sh"
    done
    for f in "$HERE/$bp"/bin/* "$HERE/$bp"/lib/*.sh; do
        sh -n "$f" || bad "sh -n ${f#"$HERE"/}"
        "$BUSYBOX" sh -n "$f" || bad "busybox sh -n ${f#"$HERE"/}"
        if command -v shellcheck >/dev/null; then
            shellcheck -s sh -x "$f" || bad "shellcheck ${f#"$HERE"/}"
        fi
    done
    cmp -s "$HERE/staticfile/lib/common.sh" "$HERE/$bp/lib/common.sh" ||
        bad "$bp/lib/common.sh differs from staticfile/lib/common.sh"
done
[ ${#FAILED[@]} -eq 0 ] && ok "all scripts are executable #!/bin/sh, pass sh -n and busybox sh -n; lib/common.sh copies identical"

# --- One staging -----------------------------------------------------------------------------
# new_case NAME EXAMPLE_DIR [SLOT]: a fresh droplet-like tree with the app copied in; sets C
# (its directory). Cases with the same SLOT stage at the same paths, one after the other, as
# Kiln stages every app at /home/vcap/{app,deps,profile.d}.
new_case() {
    CASE=$1
    C=$WORK/cases/${3:-$1}
    rm -rf "$C"
    mkdir -p "$C"/{app,deps/0,profile.d,tmp,home}
    cp -a "$2/." "$C/app/"
    own "$C"
    echo
    echo "== $CASE"
}

# run_script STACK SHELL OUT SCRIPT ARG...: runs one buildpack script as Kiln would: as vcap,
# cwd = app, env -i with CF_STACK, HOME, PATH and EXTRA_ENV. OUT.out / OUT.err / OUT.rc.
EXTRA_ENV=()
run_script() {
    local stack=$1 shell=$2 out=$3
    shift 3
    set +e
    # shellcheck disable=SC2086 # $shell may be "busybox sh"
    (cd "$C/app" && "${AS_VCAP[@]}" env -i CF_STACK="$stack" HOME="$C/home" PATH="$(stack_path "$stack")" \
        "${EXTRA_ENV[@]}" $shell "$@") >"$out.out" 2>"$out.err"
    echo $? >"$out.rc"
    set -e
    if [ "$VERBOSE" = 1 ]; then cat "$out.out" "$out.err" | sed 's/^/          | /'; fi
}

# detect_all STACK SHELL EXPECTED: every buildpack's detect, in order; only EXPECTED (or none,
# if EXPECTED is "-") may accept.
detect_all() {
    local stack=$1 shell=$2 expected=$3 bp rc accepted=()
    for bp in "${ORDER[@]}"; do
        run_script "$stack" "$shell" "$C/detect-$bp" "$BPS/$bp/bin/detect" "$C/app"
        rc=$(cat "$C/detect-$bp.rc")
        if [ "$rc" = 0 ]; then
            accepted+=("$bp")
            [ "$(head -n 1 "$C/detect-$bp.out")" = "$bp" ] || bad "$bp detect accepted but printed '$(head -n 1 "$C/detect-$bp.out")', not '$bp'"
            printf '        %-10s accepts: %s\n' "$bp" "$(tr '\n' ' ' <"$C/detect-$bp.err")"
        else
            [ "$rc" = 1 ] || bad "$bp detect exited $rc (want 0 or 1)"
            [ -s "$C/detect-$bp.err" ] || bad "$bp detect rejected without a reason on stderr"
            printf '        %-10s rejects: %s\n' "$bp" "$(tr '\n' ' ' <"$C/detect-$bp.err")"
        fi
    done
    if [ "$expected" = - ]; then
        check "no buildpack accepts on $stack" [ ${#accepted[@]} -eq 0 ]
    else
        local label=$shell
        [ "$shell" != "$TINY_BIN/sh" ] || label="busybox sh"
        check "only $expected accepts on $stack (detect run with $label)" [ "${accepted[*]:-}" = "$expected" ]
    fi
}

# What Kiln checks after a supply: nothing changed outside deps/<idx>.
tree_listing() {
    (cd "$C" && find app deps profile.d -path deps/0 -prune -o -printf '%p %y %s %m %T@ %l\n' | sort)
}

# stage STACK SHELL BP CACHE: supply (checked to write only into deps/0), finalize, release.
# Sets STAGE_SECONDS and WEB (the start command: the Procfile's web, else release's).
stage() {
    local stack=$1 shell=$2 bp=$3 cache=$4 before after t0 t1
    mkdir -p "$cache"
    own "$cache"
    t0=$(date +%s.%N)
    detect_all "$stack" "$shell" "$bp"
    before=$(tree_listing)
    run_script "$stack" "$shell" "$C/supply" "$BPS/$bp/bin/supply" "$C/app" "$cache" "$C/deps" 0
    check_step supply
    after=$(tree_listing)
    if [ "$before" = "$after" ]; then
        ok "supply wrote only into deps/0 (app/, deps/, profile.d unchanged otherwise)"
    else
        bad "supply wrote outside deps/0:"
        diff <(echo "$before") <(echo "$after") | sed 's/^/          /' || true
    fi
    run_script "$stack" "$shell" "$C/finalize" "$BPS/$bp/bin/finalize" "$C/app" "$cache" "$C/deps" 0 "$C/profile.d"
    check_step finalize
    run_script "$stack" "$shell" "$C/release" "$BPS/$bp/bin/release" "$C/app"
    check_step release
    t1=$(date +%s.%N)
    STAGE_SECONDS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    check_release "$C/release.out"
    WEB=$(release_web "$C/release.out")
    local procfile_web
    procfile_web=$(sed -n 's/^web:[[:space:]]*//p' "$C/app/Procfile" 2>/dev/null | head -n 1 || true)
    [ -z "$procfile_web" ] || WEB=$procfile_web
    sed 's/^/        /' "$C/supply.out" "$C/finalize.out"
    echo "        release: $(tr '\n' ' ' <"$C/release.out")"
    echo "        staged in ${STAGE_SECONDS}s; start command: ${WEB:-(none)}"
}

# Release output must be YAML with a default_process_types mapping.
check_release() {
    if python3 -c 'import yaml' 2>/dev/null; then
        check "release prints YAML with default_process_types" python3 -c '
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
assert isinstance(doc, dict) and isinstance(doc.get("default_process_types"), dict), doc
assert all(isinstance(v, str) for v in doc["default_process_types"].values()), doc' "$1"
    else
        check "release prints ---/default_process_types" grep -q '^default_process_types:' "$1"
    fi
}

release_web() {
    if python3 -c 'import yaml' 2>/dev/null; then
        python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["default_process_types"].get("web", ""))' "$1"
    else
        sed -n "s/^  web: //p" "$1" | sed -e "s/^'\(.*\)'\$/\1/" -e "s/''/'/g"
    fi
}

# The launcher (droplet/src/lib.rs LAUNCHER) with this case's paths: $1 app, $2 profile.d,
# $3 the stack's sh, $4 the start command.
# shellcheck disable=SC2016 # expanded by the launcher
LAUNCHER='cd "$1" || exit 1
for f in "$2"/*.sh "$1"/.profile.d/*.sh; do
  if [ -f "$f" ]; then . "$f"; fi
done
if [ -f "$1/.profile" ]; then . "$1/.profile"; fi
cd "$1" || exit 1
exec "$3" -c "$4"'

# launch STACK NAME [PROFILE_DIR]: starts WEB as the launcher would, checks that it answers
# 200 with "Hello from NAME", kills it by pid.
launch() {
    local stack=$1 name=$2 profile=${3:-$C/profile.d} port pid code body
    if [ -z "$WEB" ]; then bad "no start command"; return; fi
    port=$(free_port)
    "${AS_VCAP[@]}" env -i PORT="$port" HOME="$C/app" DEPS_DIR="$C/deps" TMPDIR="$C/tmp" \
        PATH="$(stack_path "$stack")" CF_INSTANCE_INDEX=0 CF_INSTANCE_PORT="$port" \
        setsid "$(stack_shell "$stack")" -c "$LAUNCHER" launcher "$C/app" "$profile" "$(stack_shell "$stack")" "$WEB" \
        >"$C/app.log" 2>&1 &
    pid=$!
    SERVER_PIDS+=("$pid")
    code=000
    for _ in $(seq 1 60); do
        code=$(curl -s -o "$C/body" -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/" || true)
        [ "$code" = 000 ] || break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    body=$(cat "$C/body" 2>/dev/null || true)
    if [ "$code" = 200 ] && grep -q "Hello from $name" <<<"$body"; then
        ok "app answers 200 on 127.0.0.1:$port with 'Hello from $name'"
        grep -v '^<' <<<"$body" | grep -v '^[[:space:]]*$' | head -n 3 | sed 's/^/          > /' || true
    else
        bad "app on port $port answered $code: $(head -c 200 <<<"$body")"
        show "$C/app.log"
    fi
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    check "app stopped (pid $pid)" bash -c "! kill -0 $pid 2>/dev/null"
    local p keep=()
    for p in "${SERVER_PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    SERVER_PIDS=("${keep[@]}")
}

# expect_failure STEP PATTERN: STEP (supply/finalize) failed, saying PATTERN on stderr.
expect_failure() {
    if [ "$(cat "$C/$1.rc")" != 0 ] && grep -q -- "$2" "$C/$1.err"; then
        ok "$1 fails clearly: $(grep -- '-----> ERROR' "$C/$1.err" | head -n 1 | sed 's/^-----> ERROR: //')"
        sed -n '1,/^-----> ERROR/d; s/^/          /p' "$C/$1.err" | head -n 2
    else
        bad "$1 should fail with '$2' (exit $(cat "$C/$1.rc"))"
        show "$C/$1.out"
        show "$C/$1.err"
    fi
}

CACHES=$WORK/caches
mkdir -p "$CACHES"
own "$CACHES"

# --- The examples ----------------------------------------------------------------------------
new_case staticfile-tiny "$EXAMPLES/staticfile"
stage tiny "$(stack_shell tiny)" staticfile "$CACHES/staticfile-tiny"
launch tiny staticfile

new_case staticfile-bookworm "$EXAMPLES/staticfile"
stage bookworm /bin/sh staticfile "$CACHES/staticfile-bookworm"
check "bookworm serves with 'busybox httpd' (no httpd on PATH)" grep -q '^busybox httpd ' <<<"$WEB"
launch bookworm staticfile

new_case staticfile-root-tiny "$EXAMPLES/staticfile"
mkdir -p "$C/app/public" && mv "$C/app/index.html" "$C/app/public/" && printf 'root: public\n' >"$C/app/Staticfile"
echo 'not for the web' >"$C/app/secret.txt"
own "$C"
stage tiny "$(stack_shell tiny)" staticfile "$CACHES/staticfile-tiny"
check "Staticfile root: public is what is served" grep -q -- "-h $C/app/public\$" <<<"$WEB"
launch tiny staticfile

new_case binary-tiny "$EXAMPLES/binary"
chmod -x "$C/app/server"
stage tiny "$(stack_shell tiny)" binary "$CACHES/binary-tiny"
check "finalize made ./server executable" [ -x "$C/app/server" ]
launch tiny binary

new_case binary-bookworm "$EXAMPLES/binary"
stage bookworm "$BUSYBOX sh" binary "$CACHES/binary-bookworm"
launch bookworm binary

new_case binary-bash-on-tiny "$EXAMPLES/binary"
sed -i '1s|.*|#!/usr/bin/env bash|' "$C/app/server"
detect_all tiny "$(stack_shell tiny)" binary
run_script tiny "$(stack_shell tiny)" "$C/supply" "$BPS/binary/bin/supply" "$C/app" "$CACHES/binary-tiny" "$C/deps" 0
expect_failure supply "bash is not on stack tiny"

new_case procfile-tiny "$EXAMPLES/procfile"
stage tiny "$(stack_shell tiny)" procfile "$CACHES/procfile-tiny"
launch tiny procfile

new_case procfile-bookworm "$EXAMPLES/procfile"
detect_all bookworm /bin/sh -
check "procfile says httpd is missing on bookworm" grep -q "'httpd' is not on stack bookworm" "$C/detect-procfile.err"

new_case python-bookworm-1 "$EXAMPLES/python" python-bookworm
stage bookworm /bin/sh python "$CACHES/python-bookworm"
check "first staging: cache miss, pip from vendor/" grep -q 'cache miss' "$C/supply.out"
check "pip ran offline from vendor/" grep -q 'no-index --find-links vendor' "$C/supply.out"
launch bookworm python

new_case python-bookworm-2 "$EXAMPLES/python" python-bookworm
stage bookworm "$BUSYBOX sh" python "$CACHES/python-bookworm"
check "second staging (busybox sh): cache hit" grep -q 'cache hit' "$C/supply.out"
check "warm staging (detect x5, supply, finalize, release) under 5 s: ${STAGE_SECONDS}s" \
    awk -v s="$STAGE_SECONDS" 'BEGIN { exit !(s < 5) }'
launch bookworm python

new_case python-finalize-only "$EXAMPLES/python" python-bookworm
detect_all bookworm /bin/sh python
run_script bookworm /bin/sh "$C/finalize" "$BPS/python/bin/finalize" "$C/app" "$CACHES/python-bookworm" "$C/deps" 0 "$C/profile.d"
check "finalize without a supply before it runs the supply itself" grep -q 'cache hit' "$C/finalize.out"
run_script bookworm /bin/sh "$C/release" "$BPS/python/bin/release" "$C/app"
WEB=$(release_web "$C/release.out")
launch bookworm python

new_case python-compile "$EXAMPLES/python"
run_script bookworm /bin/sh "$C/compile" "$BPS/python/bin/compile" "$C/app" "$CACHES/python-compile" "$C/env"
check_step compile
check "compile (Heroku) put the packages in app/.deps/0 and the profile in app/.profile.d" \
    test -d "$C/app/.deps/0/site-packages/six-1.16.0.dist-info" -a -f "$C/app/.profile.d/python.sh"
run_script bookworm /bin/sh "$C/release" "$BPS/python/bin/release" "$C/app"
WEB=$(release_web "$C/release.out")
launch bookworm python "$C/none"

# Multi-buildpack, as `-b python -b procfile` runs: python's supply into deps/0, procfile's
# finalize with DEPS_IDX 1; Kiln copies every deps/<idx>/profile.d/*.sh into profile.d.
new_case multi-python-procfile "$EXAMPLES/python"
printf 'web: python3 app.py\n' >"$C/app/Procfile"
mkdir -p "$C/deps/1"
own "$C"
before=$(tree_listing)
run_script bookworm /bin/sh "$C/supply" "$BPS/python/bin/supply" "$C/app" "$CACHES/multi" "$C/deps" 0
check_step supply
check "python supply wrote only into deps/0" [ "$before" = "$(tree_listing)" ]
cp "$C"/deps/0/profile.d/*.sh "$C/profile.d/"
run_script bookworm /bin/sh "$C/finalize" "$BPS/procfile/bin/finalize" "$C/app" "$CACHES/multi" "$C/deps" 1 "$C/profile.d"
check_step finalize
sed 's/^/        /' "$C/supply.out" "$C/finalize.out"
WEB=$(sed -n 's/^web:[[:space:]]*//p' "$C/app/Procfile")
launch bookworm python

new_case python-tiny "$EXAMPLES/python"
detect_all tiny "$(stack_shell tiny)" python
run_script tiny "$(stack_shell tiny)" "$C/supply" "$BPS/python/bin/supply" "$C/app" "$CACHES/python-tiny" "$C/deps" 0
expect_failure supply "python3 is not on stack tiny: stage with --stack bookworm"

# A PEP 503 "simple" index on loopback: http.server's directory listings are enough for pip.
mkdir -p "$WORK/pypi/simple/six" "$WORK/pypi/simple/idna"
cp "$EXAMPLES"/python/vendor/six-*.whl "$WORK/pypi/simple/six/"
cp "$EXAMPLES"/python/vendor/idna-*.whl "$WORK/pypi/simple/idna/"
PYPI_PORT=$(free_port)
setsid python3 -m http.server --bind 127.0.0.1 --directory "$WORK/pypi" "$PYPI_PORT" >"$WORK/pypi.log" 2>&1 &
SERVER_PIDS+=("$!")
CLOSED_PORT=$(free_port)
for _ in $(seq 1 40); do curl -s -o /dev/null "http://127.0.0.1:$PYPI_PORT/simple/" && break; sleep 0.1; done

new_case python-index "$EXAMPLES/python"
rm -rf "$C/app/vendor"
EXTRA_ENV=(PIP_INDEX_URL="http://127.0.0.1:$PYPI_PORT/simple")
stage bookworm /bin/sh python "$CACHES/python-index"
EXTRA_ENV=()
check "without vendor/, pip installs from the index" grep -q 'pip install from the package index' "$C/supply.out"
launch bookworm python

new_case python-no-network "$EXAMPLES/python"
rm -rf "$C/app/vendor"
EXTRA_ENV=(PIP_INDEX_URL="http://127.0.0.1:$CLOSED_PORT/simple")
detect_all bookworm /bin/sh python
run_script bookworm /bin/sh "$C/supply" "$BPS/python/bin/supply" "$C/app" "$CACHES/python-no-network" "$C/deps" 0
EXTRA_ENV=()
expect_failure supply "staging has no network"

new_case python-vendor-incomplete "$EXAMPLES/python"
rm -f "$C/app"/vendor/idna-*.whl
EXTRA_ENV=(PIP_INDEX_URL="http://127.0.0.1:$CLOSED_PORT/simple")
run_script bookworm /bin/sh "$C/supply" "$BPS/python/bin/supply" "$C/app" "$CACHES/python-vendor-incomplete" "$C/deps" 0
EXTRA_ENV=()
expect_failure supply "requirements.txt needs packages that are not in vendor/ and staging has no network"

new_case nodejs-bookworm-1 "$EXAMPLES/nodejs" nodejs-bookworm
stage bookworm /bin/sh nodejs "$CACHES/nodejs-bookworm"
check "vendored node_modules used as is" grep -q "vendored node_modules" "$C/supply.out"
launch bookworm nodejs

new_case nodejs-bookworm-2 "$EXAMPLES/nodejs" nodejs-bookworm
stage bookworm "$BUSYBOX sh" nodejs "$CACHES/nodejs-bookworm"
launch bookworm nodejs

new_case nodejs-tiny "$EXAMPLES/nodejs"
detect_all tiny "$(stack_shell tiny)" nodejs
run_script tiny "$(stack_shell tiny)" "$C/supply" "$BPS/nodejs/bin/supply" "$C/app" "$CACHES/nodejs-tiny" "$C/deps" 0
expect_failure supply "node is not on stack tiny: stage with --stack bookworm"

# A one-package npm registry on loopback, serving is-number packed from the vendored copy (so
# without the lockfile, whose integrity is the public tarball's).
mkdir -p "$WORK/npm-registry/pack"
cp -a "$EXAMPLES/nodejs/node_modules/is-number" "$WORK/npm-registry/src"
(cd "$WORK/npm-registry/src" && npm pack --json --pack-destination "$WORK/npm-registry/pack" >"$WORK/npm-registry/pack.json" 2>/dev/null)
NPM_PORT=$(free_port)
cat >"$WORK/npm-registry/serve.py" <<'PY'
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
port, root = int(sys.argv[1]), sys.argv[2]
info = json.load(open(os.path.join(root, "pack.json")))[0]
tgz = os.path.join(root, "pack", info["filename"])
base = f"http://127.0.0.1:{port}"
packument = {
    "name": info["name"], "dist-tags": {"latest": info["version"]},
    "versions": {info["version"]: {"name": info["name"], "version": info["version"],
        "dist": {"tarball": f"{base}/{info['name']}/-/{info['filename']}",
                 "integrity": info["integrity"], "shasum": info["shasum"]}}},
}
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.rstrip("/") == "/" + info["name"]:
            body, kind = json.dumps(packument).encode(), "application/json"
        elif self.path.endswith("/" + info["filename"]):
            body, kind = open(tgz, "rb").read(), "application/octet-stream"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
HTTPServer(("127.0.0.1", port), H).serve_forever()
PY
setsid python3 "$WORK/npm-registry/serve.py" "$NPM_PORT" "$WORK/npm-registry" >"$WORK/npm-registry.log" 2>&1 &
NPM_PID=$!
SERVER_PIDS+=("$NPM_PID")
for _ in $(seq 1 40); do curl -s -o /dev/null "http://127.0.0.1:$NPM_PORT/is-number" && break; sleep 0.1; done

new_case nodejs-registry-1 "$EXAMPLES/nodejs" nodejs-registry
rm -rf "$C/app/node_modules" "$C/app/package-lock.json"
EXTRA_ENV=(npm_config_registry="http://127.0.0.1:$NPM_PORT/")
stage bookworm /bin/sh nodejs "$CACHES/nodejs-registry"
check "without node_modules, npm installs from the registry" grep -q 'npm install from the registry' "$C/supply.out"
check "finalize linked app/node_modules into deps/0" [ -L "$C/app/node_modules" ]
launch bookworm nodejs

new_case nodejs-registry-2 "$EXAMPLES/nodejs" nodejs-registry
rm -rf "$C/app/node_modules" "$C/app/package-lock.json"
stage bookworm "$BUSYBOX sh" nodejs "$CACHES/nodejs-registry"
EXTRA_ENV=()
check "second staging: cache hit" grep -q 'cache hit' "$C/supply.out"
launch bookworm nodejs

# The npm cache the registry stagings filled, pushed as the app's npm-cache/; the registry is
# stopped first, so only the offline path can work. (npm's cache is keyed by URL: the registry
# setting stays the one the cache was filled from.)
kill -TERM -- "-$NPM_PID" 2>/dev/null || true
wait "$NPM_PID" 2>/dev/null || true
new_case nodejs-npm-cache "$EXAMPLES/nodejs"
rm -rf "$C/app/node_modules" "$C/app/package-lock.json"
cp -a "$CACHES/nodejs-registry/nodejs/npm-cache" "$C/app/npm-cache"
rm -rf "$C/app/npm-cache/_logs"
own "$C"
check "the local npm registry is stopped" bash -c "! curl -s -o /dev/null http://127.0.0.1:$NPM_PORT/is-number"
EXTRA_ENV=(npm_config_registry="http://127.0.0.1:$NPM_PORT/")
stage bookworm /bin/sh nodejs "$CACHES/nodejs-npm-cache"
EXTRA_ENV=()
check "with npm-cache/, npm installs offline" grep -q 'offline from the app' "$C/supply.out"
launch bookworm nodejs

new_case nodejs-no-network "$EXAMPLES/nodejs"
rm -rf "$C/app/node_modules"
EXTRA_ENV=(npm_config_registry="http://127.0.0.1:$CLOSED_PORT/")
run_script bookworm /bin/sh "$C/supply" "$BPS/nodejs/bin/supply" "$C/app" "$CACHES/nodejs-no-network" "$C/deps" 0
EXTRA_ENV=()
expect_failure supply "staging has no network"

# --- Epilogue --------------------------------------------------------------------------------
CASE=buildpacks
echo
echo "== buildpacks"
check "nothing was written into the buildpack directories" [ "$BP_BEFORE" = "$(bp_listing)" ]

echo
if [ ${#FAILED[@]} -eq 0 ]; then
    echo "test-contract: all $PASS checks passed"
    exit 0
fi
echo "test-contract: ${#FAILED[@]} failed, $PASS passed:"
printf '  %s\n' "${FAILED[@]}"
exit 1
