# shellcheck shell=bash disable=SC2034 # variables set here are used by the scripts that source it
# Shared by deploy/up, deploy/down and deploy/check (sourced, not run): where a platform's
# files are, how its processes are recognised, and the audit of what its container backends
# leave on the machine.
#
# A platform is one data dir (KILN_DATA, default /var/lib/kiln/platform):
#   etc/    the components' config files (written by deploy/up at every run)
#   run/    <component>.pid, and the lock deploy/up and deploy/down take
#   logs/   <component>.log (appended to)
#   cc/     the controller's database, blobstore, keys, admin-password, internal-token
#   stager/ the stager's container backend;  executor/ the cell's droplets and container backend
#   stacks/ the stack store both backends import into;  tmp/ the stager's build dirs
# A process belongs to the platform when its pid file names it, its name (comm) is the
# component's binary and its working directory is the data dir (every component is started
# there), so a reused pid or another platform's process is never taken for one of ours.

# The components, in start order (deploy/down stops them in its own order).
KILN_COMPONENTS=(nats cc stager executor router)

kiln_paths() {
  local data=${KILN_DATA:-/var/lib/kiln/platform}
  case $data in
    /*) ;;
    *) data=$PWD/$data ;;
  esac
  # Canonical (symlinks resolved), as /proc/<pid>/cwd shows it; the dir may not exist yet.
  DATA=$(realpath -m -- "$data")
  if [ "$DATA" = / ]; then
    echo "KILN_DATA must not be /" >&2
    exit 2
  fi
  ETC=$DATA/etc
  RUN=$DATA/run
  LOGS=$DATA/logs
  STAGER_BACKEND=$DATA/stager
  EXECUTOR_BACKEND=$DATA/executor/containers
}

# The binary name (as /proc/<pid>/comm shows it) of a component.
kiln_comm() {
  case $1 in
    nats) echo nats-server ;;
    cc) echo kiln-cc ;;
    stager) echo kiln-stager ;;
    executor) echo kiln-executor ;;
    router) echo kiln-router ;;
    *) return 1 ;;
  esac
}

# Whether pid $1 runs (exists and is not a zombie waiting for its parent to reap it).
kiln_alive() {
  local stat
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat:0:1}" != Z ]
}

# Whether pid $2 is component $1 of this platform.
kiln_is_ours() {
  local name=$1 pid=$2 comm cwd
  kiln_alive "$pid" || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [ "$comm" = "$(kiln_comm "$name")" ] || return 1
  cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 1
  [ "$cwd" = "$DATA" ]
}

# Prints the pid of component $1 if it runs (per its pid file), else fails.
kiln_running_pid() {
  local file=$RUN/$1.pid pid
  [ -f "$file" ] || return 1
  pid=$(head -n 1 "$file" 2>/dev/null || true)
  kiln_is_ours "$1" "$pid" || return 1
  echo "$pid"
}

# Processes of this platform whatever their pid files say: "pid name" lines.
kiln_strays() {
  local pid comm cwd
  ps -e -o pid=,comm= | while read -r pid comm; do
    case $comm in
      nats-server | kiln-cc | kiln-stager | kiln-executor | kiln-router) ;;
      *) continue ;;
    esac
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || continue
    [ "$cwd" = "$DATA" ] && kiln_alive "$pid" && echo "$pid $comm"
  done
}

# The container backend's machine-wide tag of a backend data dir (kiln-containers'
# backend_tag: the first 6 hex digits of the sha256 of the canonical path).
kiln_backend_tag() {
  printf '%s' "$(realpath -m -- "$1")" | sha256sum | cut -c1-6
}

# Mount points at or under $1, deepest first.
kiln_mounts_under() {
  local root=$1
  # Field 5 of mountinfo is the mount point, with space, tab, newline and \ octal-escaped.
  awk '{ print $5 }' /proc/self/mountinfo |
    while IFS= read -r mp; do
      mp=$(printf '%b' "$mp")
      case $mp in
        "$root" | "$root"/*) printf '%s\n' "$mp" ;;
      esac
    done | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2-
}

# What a container backend with data dir $1 still has on the machine, one line per thing
# ("kind name"); nothing when it is clean.
kiln_backend_leftovers() {
  local dir=$1 tag id f table
  tag=$(kiln_backend_tag "$dir")
  if [ -d "$dir/runc" ]; then
    runc --root "$dir/runc" list -q 2>/dev/null | while IFS= read -r id; do
      [ -n "$id" ] && echo "container $id"
    done
  fi
  for f in /sys/fs/cgroup/*/kiln/"$tag"; do
    [ -d "$f" ] && echo "cgroup $f"
  done
  ip -o link show 2>/dev/null | awk -F': ' '{ print $2 }' | sed 's/@.*//' |
    grep -E "^kl${tag}[0-9a-f]{3}h$" | sed 's/^/interface /' || true
  for table in filter nat; do
    iptables-save -t "$table" 2>/dev/null | grep -oE "^:KILN-${tag}-[0-9]+N?" |
      sed "s/^:/iptables-chain $table\\//" || true
  done
}

# --- for platforms whose components listen on other addresses (deploy/cluster) ------------------

# Whether the NATS server at $1:$2 answers with its INFO line.
kiln_nats_answers_at() {
  local line=""
  exec 8<>"/dev/tcp/$1/$2" 2>/dev/null || return 1
  IFS= read -r -t 2 line <&8 || true
  exec 8>&-
  [[ $line == INFO* ]]
}

# Whether something published on subject $3 of the NATS server at $1:$2 within 7 s has a
# payload containing $4 (the stagers and cells advertise themselves every 5 s and 2 s). A
# minimal NATS client on fd 8.
kiln_bus_has_at() {
  local subject=$3 want=$4 line buf="" deadline=$((SECONDS + 7)) rc
  exec 8<>"/dev/tcp/$1/$2" 2>/dev/null || return 1
  printf 'CONNECT {"verbose":false,"pedantic":false,"name":"deploy"}\r\nSUB %s 1\r\nPING\r\n' \
    "$subject" >&8
  while ((SECONDS < deadline)); do
    rc=0
    IFS= read -r -t 1 line <&8 || rc=$?
    if ((rc > 128)); then # timed out: keep what came of a line
      buf+=$line
      continue
    elif ((rc != 0)); then
      break
    fi
    line=${buf}${line%$'\r'}
    buf=""
    case $line in
      PING) printf 'PONG\r\n' >&8 ;;
      *"$want"*)
        exec 8>&-
        return 0
        ;;
    esac
  done
  exec 8>&-
  return 1
}

# The pids of the processes in network namespace $1 (a name of `ip netns`), one a line.
kiln_netns_pids() {
  local want pid ns
  want=$(stat -L -c %i "/run/netns/$1" 2>/dev/null) || return 0
  for pid in /proc/[0-9]*; do
    ns=$(readlink "$pid/ns/net" 2>/dev/null) || continue
    [ "$ns" = "net:[$want]" ] && kiln_alive "${pid#/proc/}" && echo "${pid#/proc/}"
  done
  return 0
}

# Shell commands (one a line, for `bash -c`) that mount this machine's cgroup hierarchies at
# their places under /sys/fs/cgroup again. `ip netns exec` runs its command in a new mount
# namespace with a sysfs of the network namespace mounted over /sys, which hides the cgroup
# mounts; runc and the container backend need them. Mounting a cgroup v1 hierarchy with the
# same controllers (or name=) gives the same hierarchy, so the cgroups are the machine's.
kiln_cgroup_mounts_script() {
  local id parent majmin root mp opts rest fstype src sopts o flags keep base=/sys/fs/cgroup l
  local tmpfs=""
  while read -r id parent majmin root mp opts rest; do
    rest=" $rest"
    rest=${rest#* - } # the optional fields end with " - "
    read -r fstype src sopts <<<"$rest"
    case $mp in "$base" | "$base"/*) ;; *) continue ;; esac
    flags=""
    for o in ${opts//,/ }; do
      case $o in nosuid | nodev | noexec) flags+=${flags:+,}$o ;; esac
    done
    keep=$flags
    for o in ${sopts//,/ }; do
      case $o in rw | ro) ;; *) keep+=${keep:+,}$o ;; esac
    done
    case $mp:$fstype in
      "$base":tmpfs)
        tmpfs=1
        printf 'mount -t tmpfs -o %q tmpfs %q\n' "${flags:+$flags,}mode=755" "$mp"
        ;;
      "$base":cgroup2) printf 'mount -t cgroup2 %s cgroup2 %q\n' "${keep:+-o $keep}" "$mp" ;;
      "$base"/*:cgroup | "$base"/*:cgroup2)
        [ -n "$tmpfs" ] || {
          tmpfs=1
          printf 'mount -t tmpfs -o mode=755 tmpfs %q\n' "$base"
        }
        printf 'mkdir -p %q && mount -t %s %s %s %q\n' "$mp" "$fstype" "${keep:+-o $keep}" "$fstype" "$mp"
        ;;
    esac
  done </proc/self/mountinfo
  for l in "$base"/*; do
    [ -L "$l" ] && printf 'ln -sfn %q %q\n' "$(readlink "$l")" "$l"
  done
  return 0
}
