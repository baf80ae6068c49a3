# The nodejs buildpack's own helpers (needs common.sh and BUILD_DIR).

# package_info: runs lib/package-info.js on the app (node must be on PATH); sets PKG_INFO.
package_info() {
    PKG_INFO=$(node "$BP_DIR/lib/package-info.js" "$BUILD_DIR" 2>&1) ||
        die "$(printf '%s' "$PKG_INFO" | tail -n 1)" "fix package.json (it must be a JSON object) and push again"
}

# pkg KEY: a value from PKG_INFO.
pkg() {
    printf '%s\n' "$PKG_INFO" | sed -n "s/^$1=//p"
}

# default_web: the default start command, printed (empty if none): `npm start` when
# package.json has scripts.start, else `node server.js` (what npm start itself would run),
# else `node <main>` when the main file exists. Works without node (for bin/release).
default_web() {
    if on_path node >/dev/null; then
        package_info
        _start=$(pkg start)
        _main=$(pkg main)
    else
        _start=0
        tr -d '\n\r' <"$BUILD_DIR/package.json" | grep -q '"scripts"[[:space:]]*:[[:space:]]*{[^}]*"start"[[:space:]]*:' && _start=1
        _main=$(tr -d '\n\r' <"$BUILD_DIR/package.json" | sed -n 's/.*"main"[[:space:]]*:[[:space:]]*"\([A-Za-z0-9_.\/@+-]*\)".*/\1/p')
    fi
    _main=${_main#./}
    if [ "$_start" = 1 ]; then
        printf 'npm start'
    elif [ -f "$BUILD_DIR/server.js" ]; then
        printf 'node server.js'
    elif [ -n "$_main" ] && { [ -f "$BUILD_DIR/$_main" ] || [ -f "$BUILD_DIR/$_main.js" ]; }; then
        printf 'node %s' "$_main"
    fi
}
