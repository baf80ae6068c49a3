/* Tries the syscalls a container must not get, and prints name=ok or name=<errno> for each. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <sys/syscall.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *name, long rc) {
    if (rc >= 0) printf("%s=ok\n", name);
    else if (errno == EPERM) printf("%s=EPERM\n", name);
    else if (errno == ENOSYS) printf("%s=ENOSYS\n", name);
    else if (errno == ENODATA) printf("%s=ENODATA\n", name);
    else printf("%s=errno%d\n", name, errno);
}

int main(void) {
    report("keyctl", syscall(SYS_keyctl, 0, -3, 0));
    report("add_key", syscall(SYS_add_key, "user", "k", "v", 1, -3));
    report("unshare_user", unshare(CLONE_NEWUSER));
    report("unshare_net", unshare(CLONE_NEWNET));
    report("mount", mount("none", "/tmp", "tmpfs", 0, NULL));
    report("clone3", syscall(SYS_clone3, NULL, 0));
    /* A user namespace needs no capability: only seccomp can refuse this one. */
    long child = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (child == 0) _exit(0);
    if (child > 0) waitpid((pid_t)child, NULL, 0);
    report("clone_newuser", child);
    report("bpf", syscall(SYS_bpf, 0, NULL, 0));
    report("userfaultfd", syscall(SYS_userfaultfd, 0));
    report("io_uring_setup", syscall(SYS_io_uring_setup, 1, NULL));
    report("raw_socket", socket(AF_INET, SOCK_RAW, IPPROTO_ICMP));
    /* Allowed: what `cp -a` of a directory does to drop a default ACL. */
    report("removexattr", syscall(SYS_removexattr, "/tmp", "system.posix_acl_default"));
    return 0;
}
