# The staticfile buildpack's own helpers (needs common.sh and BUILD_DIR).

# staticfile_option KEY: the value of a top-level `KEY: value` line of the Staticfile, with
# quotes and a trailing comment dropped; empty when absent.
staticfile_option() {
    [ -f "$BUILD_DIR/Staticfile" ] || return 0
    tr -d '\r' <"$BUILD_DIR/Staticfile" | sed -n "s/^$1:[[:space:]]*//p" | head -n 1 |
        sed -e 's/[[:space:]]#.*$//' -e 's/[[:space:]]*$//' -e "s/^[\"']\(.*\)[\"']\$/\1/"
}

# staticfile_keys: the top-level keys the Staticfile sets.
staticfile_keys() {
    [ -f "$BUILD_DIR/Staticfile" ] || return 0
    tr -d '\r' <"$BUILD_DIR/Staticfile" | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\):.*/\1/p'
}

# static_root: the absolute directory to serve: the app, or `root:` of the Staticfile.
static_root() {
    _r=$(staticfile_option root)
    case "$_r" in
        /*) die "Staticfile root: $_r is an absolute path" "give a directory inside the app, relative to it (root: public)" ;;
    esac
    case "/$_r/" in
        */../*) die "Staticfile root: $_r leaves the app" "give a directory inside the app (root: public)" ;;
    esac
    while :; do
        case "$_r" in
            ./*) _r=${_r#./} ;;
            */) _r=${_r%/} ;;
            *) break ;;
        esac
    done
    if [ -z "$_r" ] || [ "$_r" = . ]; then
        printf '%s' "$BUILD_DIR"
        return 0
    fi
    [ -d "$BUILD_DIR/$_r" ] || die "Staticfile root: $_r is not a directory of the app" \
        "create $_r/ with the site in it, or fix root: in the Staticfile"
    check_plain_path "Staticfile root" "$BUILD_DIR/$_r"
    printf '%s' "$BUILD_DIR/$_r"
}

# web_server: the stack's busybox httpd, as the command that runs it: `httpd` when the httpd
# on PATH is busybox's (tiny), else `busybox httpd` (bookworm). Fails when there is neither.
web_server() {
    if _httpd=$(on_path httpd) && "$_httpd" --help 2>&1 | grep -q BusyBox; then
        printf 'httpd'
        return 0
    fi
    if _busybox=$(on_path busybox) && "$_busybox" --list 2>/dev/null | grep -qx httpd; then
        printf 'busybox httpd'
        return 0
    fi
    return 1
}

need_web_server() {
    web_server || die "stack $(stack_name) has no web server for static files: neither busybox httpd on PATH nor busybox with its httpd applet" \
        "stage with --stack tiny or --stack bookworm, or serve the files from your own command in a Procfile"
}

# start_command ROOT SERVER: busybox httpd in the foreground, logging requests to stderr.
start_command() {
    # shellcheck disable=SC2016 # $PORT is for the start command
    printf '%s -f -v -p 0.0.0.0:$PORT -h %s' "$2" "$1"
}
