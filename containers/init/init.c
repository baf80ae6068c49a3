/*
 * kiln-init: pid 1 of every Kiln container.
 *
 * It holds the container open between processes, reaps every orphan the
 * container's processes leave behind, and exits 0 on SIGTERM or SIGINT so that
 * a graceful stop ends the container. It opens no file and talks to no one.
 */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>

int main(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0) {
            continue;
        }
        if (sig == SIGCHLD) {
            while (waitpid(-1, NULL, WNOHANG) > 0) {
            }
        } else {
            return 0;
        }
    }
}
