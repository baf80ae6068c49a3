# Helpers shared by Kiln's built-in buildpacks. Sourced by the bin/ scripts.
#
# Every built-in buildpack carries an identical copy of this file, so that each buildpack
# directory stands alone (it is copied into the staging container by itself);
# buildpacks/test-contract.sh checks that the copies have not drifted apart.
#
# POSIX sh only: this runs under busybox ash on the `tiny` stack. Only busybox tools.

# Progress: a topic line, then sub-lines indented by 7 spaces (Heroku's style).
topic() { printf -- '-----> %s\n' "$*"; }
info() { printf '       %s\n' "$*"; }
indent() { sed -e '/^[[:space:]]*$/d' -e 's/^/       /'; }
warn() { printf '       WARNING: %s\n' "$*" >&2; }

# die HEADLINE [DETAIL...]: says what is wrong and what to do, on stderr, and fails.
die() {
    printf -- '-----> ERROR: %s\n' "$1" >&2
    shift
    for line in "$@"; do
        printf '       %s\n' "$line" >&2
    done
    exit 1
}

stack_name() { printf '%s' "${CF_STACK:-unknown}"; }

# on_path NAME: the executable file NAME on PATH, printed. Unlike `command -v`, it ignores
# shell builtins and busybox applets that the shell running this script may provide without a
# file on PATH, so the answer is the same under every shell.
on_path() {
    case "$1" in
        */*)
            [ -f "$1" ] && [ -x "$1" ] || return 1
            printf '%s' "$1"
            return 0
            ;;
    esac
    _ifs=$IFS
    IFS=:
    for _d in $PATH; do
        [ -n "$_d" ] || _d=.
        if [ -f "$_d/$1" ] && [ -x "$_d/$1" ]; then
            IFS=$_ifs
            printf '%s' "$_d/$1"
            return 0
        fi
    done
    IFS=$_ifs
    return 1
}

sha256_of() { sha256sum | cut -d' ' -f1; }

# A path that is baked into start commands and profile scripts must be plain.
check_plain_path() {
    case "$2" in
        /*) ;;
        *) die "$1 must be an absolute path, got '$2'" ;;
    esac
    case "$2" in
        *[!A-Za-z0-9_./@+:-]*) die "$1 '$2' has characters that are unsafe in a start command" \
            "use a path made of letters, digits and _ . / @ + : -" ;;
    esac
}

# need_dir LABEL PATH: PATH must be an existing directory.
need_dir() {
    [ -n "$2" ] || die "$1 is empty" "usage: see buildpacks/README.md"
    [ -d "$2" ] || die "$1 $2 is not a directory"
}

# Argument parsing for each contract. Sets BUILD_DIR CACHE_DIR DEPS_DIR DEPS_IDX DEP_DIR
# (= DEPS_DIR/DEPS_IDX, created) and PROFILE_DIR (finalize).
parse_supply_args() {
    [ $# -eq 4 ] || die "bin/supply takes BUILD_DIR CACHE_DIR DEPS_DIR DEPS_IDX, got $# arguments"
    BUILD_DIR=$1 CACHE_DIR=$2 DEPS_DIR=$3 DEPS_IDX=$4
    _parse_common
}

parse_finalize_args() {
    [ $# -eq 5 ] || die "bin/finalize takes BUILD_DIR CACHE_DIR DEPS_DIR DEPS_IDX PROFILE_DIR, got $# arguments"
    BUILD_DIR=$1 CACHE_DIR=$2 DEPS_DIR=$3 DEPS_IDX=$4 PROFILE_DIR=$5
    _parse_common
    check_plain_path PROFILE_DIR "$PROFILE_DIR"
    mkdir -p "$PROFILE_DIR" || die "cannot create PROFILE_DIR $PROFILE_DIR"
}

_parse_common() {
    need_dir BUILD_DIR "$BUILD_DIR"
    check_plain_path BUILD_DIR "$BUILD_DIR"
    check_plain_path DEPS_DIR "$DEPS_DIR"
    case "$DEPS_IDX" in
        '' | *[!0-9]*) die "DEPS_IDX must be a number (0, 1, 2...), got '$DEPS_IDX'" ;;
    esac
    [ -n "$CACHE_DIR" ] || die "CACHE_DIR is empty"
    DEP_DIR=$DEPS_DIR/$DEPS_IDX
    mkdir -p "$DEP_DIR" || die "cannot create $DEP_DIR"
    # The cache is an optimisation: a buildpack that cannot write it still stages.
    mkdir -p "$CACHE_DIR" 2>/dev/null || warn "cannot create CACHE_DIR $CACHE_DIR: staging without a cache"
}

# Cloud Foundry's marker of a supplied dependency directory; finalize uses it to know whether
# this buildpack's supply already ran for DEPS_IDX (Kiln may or may not run supply before
# finalize for the last buildpack).
write_config_yml() {
    printf 'name: %s\nconfig: {}\n' "$BP_NAME" >"$DEP_DIR/config.yml"
}

supplied() {
    [ -f "$DEP_DIR/config.yml" ] && grep -qx "name: $BP_NAME" "$DEP_DIR/config.yml"
}

# Runs this buildpack's own bin/supply for the same DEPS_IDX if it has not run yet.
ensure_supplied() {
    supplied && return 0
    "$BP_DIR/bin/supply" "$BUILD_DIR" "$CACHE_DIR" "$DEPS_DIR" "$DEPS_IDX" || exit 1
}

# write_profile NAME < script: the profile.d script of this dependency directory; Kiln copies
# DEP_DIR/profile.d/*.sh into the droplet's profile.d.
write_profile() {
    mkdir -p "$DEP_DIR/profile.d"
    {
        printf '# Written by the Kiln %s buildpack at staging. POSIX sh; safe to source twice.\n' "$BP_NAME"
        cat
    } >"$DEP_DIR/profile.d/$1.sh"
}

# profile_prepend VAR DIR: a profile line that puts DIR in front of the colon list VAR, once.
profile_prepend() {
    # shellcheck disable=SC2016 # the ${...} are for the profile script, not for us
    printf 'case ":${%s-}:" in *":%s:"*) ;; *) %s="%s${%s:+:$%s}"; export %s ;; esac\n' \
        "$1" "$2" "$1" "$2" "$1" "$1" "$1"
}

# Finalize copies the dependency's profile scripts into PROFILE_DIR too, so the droplet has
# them whatever Kiln does with DEP_DIR/profile.d for the last buildpack. They are idempotent,
# so a second copy under another name does no harm.
install_profile() {
    [ -d "$DEP_DIR/profile.d" ] || return 0
    for f in "$DEP_DIR"/profile.d/*.sh; do
        [ -f "$f" ] && cp "$f" "$PROFILE_DIR/"
    done
    return 0
}

# Sources the profile scripts of the other dependency directories (earlier supplies), so a
# finalize sees the tools they provide (e.g. a console script installed by the python supply).
# Other buildpacks' scripts need not be `set -eu` clean.
load_deps_env() {
    for f in "$DEPS_DIR"/*/profile.d/*.sh; do
        [ -f "$f" ] || continue
        case "$f" in "$DEP_DIR"/*) continue ;; esac
        set +eu
        # shellcheck disable=SC1090
        . "$f"
        set -eu
    done
}

# Procfile parsing. Lines are `type: command`; blank lines and comments are ignored.
# procfile_command FILE TYPE prints TYPE's command (empty if none).
procfile_command() {
    [ -f "$1" ] || return 0
    tr -d '\r' <"$1" | sed -n "s/^[[:space:]]*$2[[:space:]]*:[[:space:]]*//p" | head -n 1 | sed 's/[[:space:]]*$//'
}

# procfile_entries FILE prints `type<TAB>command` per process type.
procfile_entries() {
    [ -f "$1" ] || return 0
    tr -d '\r' <"$1" | sed -n 's/^[[:space:]]*\([A-Za-z0-9_-][A-Za-z0-9_-]*\)[[:space:]]*:[[:space:]]*\(..*\)$/\1	\2/p' |
        sed 's/[[:space:]]*$//'
}

# first_word COMMAND: the program a shell command runs, skipping `VAR=value` assignments and
# `exec`/`env`/`nohup` prefixes. Quotes are stripped from it.
first_word() {
    (
        set -f
        # shellcheck disable=SC2086
        set -- $1
        while [ $# -gt 0 ]; do
            case "$1" in
                [A-Za-z_]*=\"*\" | [A-Za-z_]*=\'*\') shift ;;
                [A-Za-z_]*=\"*) # a quoted value with blanks: skip to its closing quote
                    shift
                    while [ $# -gt 0 ]; do
                        case "$1" in *\") shift && break ;; esac
                        shift
                    done
                    ;;
                [A-Za-z_]*=\'*)
                    shift
                    while [ $# -gt 0 ]; do
                        case "$1" in *\') shift && break ;; esac
                        shift
                    done
                    ;;
                [A-Za-z_]*=*) shift ;;
                exec | env | nohup | command) shift ;;
                *) break ;;
            esac
        done
        printf '%s' "${1:-}" | tr -d "\"'"
    )
}

# app_file WORD: if WORD names a file inside the app (./x, dir/x, $HOME/x, BUILD_DIR/x, where
# BUILD_DIR is also the run-time app path), prints its path under BUILD_DIR; else fails.
app_file() {
    _w=$1
    # shellcheck disable=SC2016 # a literal $HOME in the command
    case "$_w" in
        '$HOME/'* | '${HOME}/'*) _w=${_w#*/} ;;
        "$BUILD_DIR"/*) _w=${_w#"$BUILD_DIR"/} ;;
        /* | '~'*) return 1 ;;
        */*) ;;
        *) return 1 ;; # a bare name is looked up on PATH, not in the app
    esac
    while :; do
        case "$_w" in
            ./*) _w=${_w#./} ;;
            *) break ;;
        esac
    done
    case "/$_w/" in */../* | *'$'*) return 1 ;; esac
    [ -f "$BUILD_DIR/$_w" ] || return 1
    printf '%s' "$BUILD_DIR/$_w"
}

# yaml_scalar S: S as a YAML plain scalar when that is unambiguous, else single-quoted.
yaml_scalar() {
    _quote=0
    case "$1" in
        '' | *': '* | *' #'* | *"'"* | *'"'* | *'	'* | *' ' | *: | ' '*) _quote=1 ;;
        true | false | yes | no | on | off | null | '~' | [0-9]* | [+.]*) _quote=1 ;;
    esac
    case "${1%"${1#?}"}" in
        - | '?' | : | , | '[' | ']' | '{' | '}' | '#' | '&' | '*' | '!' | '|' | '>' | '%' | '@' | '`') _quote=1 ;;
    esac
    if [ "$_quote" = 1 ]; then
        printf "'%s'" "$(printf '%s' "$1" | sed "s/'/''/g")"
    else
        printf '%s' "$1"
    fi
}

# release_yaml [WEB_COMMAND]: bin/release's output.
release_yaml() {
    if [ -n "${1:-}" ]; then
        printf -- '---\ndefault_process_types:\n  web: %s\n' "$(yaml_scalar "$1")"
    else
        printf -- '---\ndefault_process_types: {}\n'
    fi
}

# Heroku's bin/compile: ENV_DIR holds one file per config var.
export_env_dir() {
    [ -d "$1" ] || return 0
    for f in "$1"/*; do
        [ -f "$f" ] || continue
        n=${f##*/}
        case "$n" in
            '' | [0-9]* | *[!A-Za-z0-9_]*) continue ;;
            PATH | GIT_DIR | CPATH | CPPATH | LD_PRELOAD | LIBRARY_PATH | LD_LIBRARY_PATH) continue ;;
        esac
        v=$(cat "$f")
        export "$n=$v"
    done
}

# bin/compile BUILD_DIR CACHE_DIR ENV_DIR (Heroku): runs this buildpack's supply and finalize
# with everything inside the app, as Heroku expects: DEPS_DIR = BUILD_DIR/.deps, DEPS_IDX = 0,
# PROFILE_DIR = BUILD_DIR/.profile.d (which the launcher sources). Since staging paths are the
# run-time paths, what supply bakes into BUILD_DIR/.deps stays valid.
run_compile() {
    if [ $# -lt 2 ] || [ $# -gt 3 ]; then
        die "bin/compile takes BUILD_DIR CACHE_DIR [ENV_DIR], got $# arguments"
    fi
    need_dir BUILD_DIR "$1"
    export_env_dir "${3:-}"
    "$BP_DIR/bin/supply" "$1" "$2" "$1/.deps" 0 || exit 1
    "$BP_DIR/bin/finalize" "$1" "$2" "$1/.deps" 0 "$1/.profile.d" || exit 1
}
