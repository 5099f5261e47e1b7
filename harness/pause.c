/*
 * Minimal pod sandbox "pause" program for the test harness (harness/images.py builds it
 * with `gcc -static -O2` into the pause image).
 *
 * Sleeps forever; exits 0 on SIGTERM or SIGINT; reaps every child (as PID 1 of a pod
 * with a shared PID namespace it inherits orphans).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_exit_signal(int sig)
{
    (void)sig;
    _exit(0);
}

static void on_child(int sig)
{
    int saved = errno;
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

int main(int argc, char **argv)
{
    struct sigaction sa;

    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        printf("pause (cri-resmgr harness)\n");
        return 0;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_exit_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) < 0 || sigaction(SIGINT, &sa, NULL) < 0) {
        perror("pause: sigaction");
        return 1;
    }
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGCHLD, &sa, NULL) < 0) {
        perror("pause: sigaction SIGCHLD");
        return 2;
    }

    for (;;) {
        pause();
    }
    /* not reached */
    return 42;
}
