# The procfile buildpack's own helpers (needs common.sh and BUILD_DIR).

# Words a POSIX shell runs without a file on PATH.
SHELL_BUILTINS='cd . : eval exec export set trap ulimit umask unset test [ echo printf true false read wait if while until for case { ('

# resolve_word WORD: where the program WORD of a command comes from, printed: "a shell
# builtin", "app:<file>" for a file in the app, or its path on the stack. Fails if none.
resolve_word() {
    case " $SHELL_BUILTINS " in
        *" $1 "*)
            printf 'a shell builtin'
            return 0
            ;;
    esac
    if _f=$(app_file "$1"); then
        printf 'app:%s' "$_f"
        return 0
    fi
    case "$1" in
        '' | *'$'* | '~'*) return 1 ;;
    esac
    on_path "$1"
}

# app_marker: a file that makes the app another built-in buildpack's, with that buildpack.
app_marker() {
    for _m in Staticfile:staticfile requirements.txt:python setup.py:python pyproject.toml:python package.json:nodejs; do
        if [ -e "$BUILD_DIR/${_m%%:*}" ]; then
            printf '%s (the %s buildpack)' "${_m%%:*}" "${_m#*:}"
            return 0
        fi
    done
    return 1
}
