# The binary buildpack's own helpers (needs common.sh and BUILD_DIR).

# language_marker: the first file that makes the app another built-in buildpack's.
language_marker() {
    for _m in requirements.txt setup.py pyproject.toml package.json; do
        if [ -e "$BUILD_DIR/$_m" ]; then
            printf '%s' "$_m"
            return 0
        fi
    done
    return 1
}

# web_program: sets WEB_COMMAND, WEB_WORD (the program as the Procfile names it) and WEB_FILE
# (its path under BUILD_DIR). Fails with REASON set when the app is not a binary app.
# shellcheck disable=SC2034 # the callers use them
web_program() {
    WEB_COMMAND='' WEB_WORD='' WEB_FILE='' REASON=
    if [ ! -f "$BUILD_DIR/Procfile" ]; then
        REASON="no Procfile: the binary buildpack runs the executable that a Procfile's web: command names (web: ./server)"
        return 1
    fi
    WEB_COMMAND=$(procfile_command "$BUILD_DIR/Procfile" web)
    if [ -z "$WEB_COMMAND" ]; then
        REASON="the Procfile has no web: command"
        return 1
    fi
    WEB_WORD=$(first_word "$WEB_COMMAND")
    if ! WEB_FILE=$(app_file "$WEB_WORD"); then
        REASON="Procfile web: runs '$WEB_WORD', which is not a file in the app (a program in the app is named with a path: ./server)"
        return 1
    fi
    return 0
}

# check_runnable FILE NAME: fails clearly when FILE cannot run on this stack: a #! interpreter
# the stack lacks, CRLF line endings, an ELF for another CPU or needing a loader the stack lacks.
check_runnable() {
    _magic=$(head -c 4 "$1" | od -An -tx1 | tr -d ' \n')
    case "$_magic" in
        7f454c46) _check_elf "$1" "$2" ;;
        2321*) _check_shebang "$1" "$2" ;;
        *)
            if [ ! -s "$1" ]; then
                die "$2 is empty" "push the built executable"
            fi
            warn "$2 has no #! line and is not an ELF executable: sh will run it as a shell script"
            ;;
    esac
}

_check_shebang() {
    _line=$(head -n 1 "$1")
    case "$_line" in
        *"$(printf '\r')")
            die "$2 has Windows line endings (CRLF), so its #! line names a program that does not exist" \
                "convert it to Unix line endings (dos2unix $2) and push again"
            ;;
    esac
    _interp=${_line#??}
    # shellcheck disable=SC2086
    set -- "$1" "$2" $_interp
    [ $# -ge 3 ] || die "$2 has an empty #! line" "start it with #!/bin/sh"
    _prog=$3
    if [ "${_prog##*/}" = env ] && [ $# -ge 4 ]; then
        _prog=$4
        [ "$_prog" != -S ] || _prog=${5:-}
        on_path "$_prog" >/dev/null ||
            die "$2 starts with '$_line', and $_prog is not on stack $(stack_name)" \
                "use #!/bin/sh (POSIX sh, on every stack) or stage on a stack that has $_prog (--stack bookworm)"
    elif [ ! -f "$_prog" ] || [ ! -x "$_prog" ]; then
        die "$2 starts with '$_line', and $_prog is not on stack $(stack_name)" \
            "use #!/bin/sh (POSIX sh, on every stack) or stage on a stack that has $_prog (--stack bookworm)"
    fi
    info "$2 is a script for $_prog"
}

_check_elf() {
    _machine=$(od -An -tu1 -j18 -N2 "$1" | awk '{ print $1 + 256 * $2 }')
    case "$(uname -m)" in
        x86_64) _want=62 ;;
        aarch64 | arm64) _want=183 ;;
        armv6l | armv7l) _want=40 ;;
        i386 | i486 | i586 | i686) _want=3 ;;
        riscv64) _want=243 ;;
        *) _want= ;;
    esac
    if [ -n "$_want" ] && [ "$_machine" != "$_want" ]; then
        die "$2 is an executable for another CPU (ELF machine $_machine) and this stack runs on $(uname -m)" \
            "build it for linux/$(uname -m) and push again"
    fi
    # A dynamically linked executable names its loader (PT_INTERP) near the start of the file.
    _loader=$(head -c 4096 "$1" | tr -c ' -~' '\n' | grep -m 1 '^/.*/ld-.*\.so' || true)
    if [ -z "$_loader" ]; then
        info "$2 is a statically linked executable"
    elif [ -e "$_loader" ]; then
        info "$2 is a dynamically linked executable (loader $_loader)"
    else
        die "$2 is dynamically linked, and its loader $_loader is not on stack $(stack_name)" \
            "link it statically (Go: CGO_ENABLED=0; Rust: --target <arch>-unknown-linux-musl; C: -static) or stage with --stack bookworm"
    fi
}
