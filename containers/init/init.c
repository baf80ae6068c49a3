/*
 * kiln-init: pid 1 of every Kiln container.
 *
 * It holds the container open between processes, reaps every orphan, exits 0 on SIGTERM or
 * SIGINT so that a graceful stop ends the container, and starts processes for the backend.
 *
 * The backend's end of a SOCK_SEQPACKET socketpair is this process's stdin. Each packet is one
 * message of NUL-terminated fields:
 *   backend -> init:  run  id uid gid cwd argc arg... envc env... rlimc (resource soft hard)...
 *                          with three fds attached (SCM_RIGHTS): the process's stdin, stdout, stderr
 *                     kill id signal
 *   init -> backend:  started id pid
 *                     failed  id errno what
 *                     exited  id wait-status
 * A process is forked here, so it inherits this init's seccomp filter, no_new_privs, bounding
 * set and namespaces; it then drops to its user (setgroups, setgid, setuid: capabilities go
 * with root), sets its rlimits (lowering only), and execs. When the backend's end closes, init
 * stays as a plain reaper so that a restarted backend can adopt the container. On SIGTERM it
 * passes the signal to the processes it started and exits once they have ended (a graceful
 * stop; the backend SIGKILLs what is left after the grace period).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_MSG (256 * 1024)
#define MAX_FIELDS 4096
#define MAX_PROCS 4096
#define ID_LEN 96

struct proc { pid_t pid; char id[ID_LEN]; };
static struct proc procs[MAX_PROCS];
static int control = -1;
static int stopping = 0;

static int tracked(void) {
    int n = 0;
    for (int i = 0; i < MAX_PROCS; i++) n += procs[i].pid != 0;
    return n;
}

static void reply(const char *kind, const char *id, long a, const char *b) {
    char buf[512];
    int n = snprintf(buf, sizeof buf, "%s%c%s%c%ld%c%s%c", kind, 0, id, 0, a, 0, b ? b : "", 0);
    if (control >= 0 && n > 0 && n < (int)sizeof buf) {
        send(control, buf, (size_t)n, MSG_NOSIGNAL);
    }
}

/* Splits a packet into NUL-terminated fields. */
static int split(char *msg, size_t len, char **fields) {
    int n = 0;
    size_t start = 0;
    for (size_t i = 0; i < len && n < MAX_FIELDS; i++) {
        if (msg[i] == 0) {
            fields[n++] = msg + start;
            start = i + 1;
        }
    }
    return n;
}

static void exec_child(char **argv, char **envp, const char *cwd, uid_t uid, gid_t gid,
                       char **rl, int rlc, int fds[3], int status_fd) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int i = 0; i < 3; i++) {
        if (dup2(fds[i], i) < 0) goto fail;
    }
    setsid();
    for (int i = 0; i < rlc; i++) {
        struct rlimit lim = { strtoull(rl[3 * i + 1], NULL, 10), strtoull(rl[3 * i + 2], NULL, 10) };
        if (setrlimit(atoi(rl[3 * i]), &lim) != 0) goto fail;
    }
    if (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0) goto fail;
    if (chdir(cwd) != 0) goto fail;
    if (strchr(argv[0], '/')) {
        execve(argv[0], argv, envp);
    } else {
        const char *path = "/usr/local/bin:/usr/bin:/bin";
        for (char **e = envp; *e; e++) {
            if (strncmp(*e, "PATH=", 5) == 0) path = *e + 5;
        }
        char candidate[4096];
        const char *p = path;
        int saved = ENOENT;
        while (*p) {
            const char *end = strchr(p, ':');
            size_t len = end ? (size_t)(end - p) : strlen(p);
            if (len + strlen(argv[0]) + 2 < sizeof candidate) {
                memcpy(candidate, p, len);
                candidate[len] = '/';
                strcpy(candidate + len + 1, argv[0]);
                execve(candidate, argv, envp);
                if (errno != ENOENT) saved = errno;
            }
            if (!end) break;
            p = end + 1;
        }
        errno = saved;
    }
fail:;
    int err = errno;
    if (write(status_fd, &err, sizeof err) < 0) {
        /* nothing more to do */
    }
    _exit(127);
}

static void handle_run(char **f, int n, int fds[3]) {
    /* run id uid gid cwd argc arg... envc env... rlimc (res soft hard)... */
    if (n < 6) return;
    const char *id = f[1];
    int argc = atoi(f[5]);
    if (argc < 1 || 6 + argc >= n) { reply("failed", id, EINVAL, "bad request"); return; }
    int envc = atoi(f[6 + argc]);
    int rl_at = 7 + argc + envc;
    if (rl_at >= n) { reply("failed", id, EINVAL, "bad request"); return; }
    int rlc = atoi(f[rl_at]);
    if (rl_at + 1 + 3 * rlc > n) { reply("failed", id, EINVAL, "bad request"); return; }
    int slot = -1;
    for (int i = 0; i < MAX_PROCS; i++) {
        if (procs[i].pid == 0) { slot = i; break; }
    }
    if (slot < 0) { reply("failed", id, EAGAIN, "too many processes"); return; }

    char *argv[MAX_FIELDS + 1];
    char *envp[MAX_FIELDS + 1];
    for (int i = 0; i < argc; i++) argv[i] = f[6 + i];
    argv[argc] = NULL;
    for (int i = 0; i < envc; i++) envp[i] = f[7 + argc + i];
    envp[envc] = NULL;

    int status_pipe[2];
    if (pipe2(status_pipe, O_CLOEXEC) != 0) { reply("failed", id, errno, "pipe"); return; }
    pid_t pid = fork();
    if (pid < 0) {
        int err = errno;
        close(status_pipe[0]);
        close(status_pipe[1]);
        reply("failed", id, err, "fork");
        return;
    }
    if (pid == 0) {
        close(status_pipe[0]);
        exec_child(argv, envp, f[4], (uid_t)atol(f[2]), (gid_t)atol(f[3]), f + rl_at + 1, rlc,
                   fds, status_pipe[1]);
    }
    close(status_pipe[1]);
    int err = 0;
    ssize_t got = read(status_pipe[0], &err, sizeof err);
    close(status_pipe[0]);
    if (got == (ssize_t)sizeof err) {
        waitpid(pid, NULL, 0);
        reply("failed", id, err, "exec");
        return;
    }
    procs[slot].pid = pid;
    snprintf(procs[slot].id, ID_LEN, "%s", id);
    reply("started", id, pid, NULL);
}

static void handle_kill(char **f, int n) {
    if (n < 3) return;
    for (int i = 0; i < MAX_PROCS; i++) {
        if (procs[i].pid != 0 && strcmp(procs[i].id, f[1]) == 0) {
            /* The process leads its own group (setsid): signal everything it started. */
            if (kill(-procs[i].pid, atoi(f[2])) != 0) kill(procs[i].pid, atoi(f[2]));
        }
    }
}

static void receive(void) {
    static char msg[MAX_MSG];
    static char *fields[MAX_FIELDS];
    char cbuf[CMSG_SPACE(3 * sizeof(int))];
    struct iovec iov = { msg, sizeof msg - 1 };
    struct msghdr mh = { 0 };
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    ssize_t len = recvmsg(control, &mh, MSG_CMSG_CLOEXEC);
    if (len <= 0) {
        if (len == 0 || (errno != EINTR && errno != EAGAIN)) {
            close(control);
            control = -1; /* the backend went away: stay a reaper */
        }
        return;
    }
    int fds[3] = { -1, -1, -1 };
    int nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            nfds = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            if (nfds > 3) nfds = 3;
            memcpy(fds, CMSG_DATA(c), (size_t)nfds * sizeof(int));
        }
    }
    msg[len] = 0;
    int n = split(msg, (size_t)len, fields);
    if (n >= 1 && strcmp(fields[0], "run") == 0 && nfds == 3) {
        handle_run(fields, n, fds);
    } else if (n >= 1 && strcmp(fields[0], "kill") == 0) {
        handle_kill(fields, n);
    }
    for (int i = 0; i < nfds; i++) close(fds[i]);
}

static void reap(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_PROCS; i++) {
            if (procs[i].pid == pid) {
                reply("exited", procs[i].id, status, NULL);
                procs[i].pid = 0;
            }
        }
    }
    if (stopping && tracked() == 0) exit(0);
}

int main(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    /* Not dumpable: container processes, root included, cannot ptrace this init or open its
       /proc files (mem, fds), so they cannot use its channel to the backend. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

    /* Keep the control socket off fd 0 and out of every child; fd 0 becomes /dev/null. */
    int type = 0;
    socklen_t tlen = sizeof type;
    if (getsockopt(0, SOL_SOCKET, SO_TYPE, &type, &tlen) == 0 && type == SOCK_SEQPACKET) {
        control = fcntl(0, F_DUPFD_CLOEXEC, 3);
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null >= 0) {
            dup2(null, 0);
            close(null);
        }
    }

    for (;;) {
        struct pollfd pfd[2] = { { sfd, POLLIN, 0 }, { control, POLLIN, 0 } };
        if (poll(pfd, control >= 0 ? 2 : 1, -1) < 0) {
            continue;
        }
        if (pfd[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                if (si.ssi_signo == SIGCHLD) {
                    reap();
                } else {
                    /* A graceful stop: pass it on, and end once the processes have. */
                    stopping = 1;
                    for (int i = 0; i < MAX_PROCS; i++) {
                        if (procs[i].pid != 0) kill(-procs[i].pid, SIGTERM);
                    }
                    reap();
                    if (tracked() == 0) return 0;
                }
                break;
            }
        }
        if (control >= 0 && (pfd[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            receive();
        }
    }
}
