/*
 * fsync-delay: an LD_PRELOAD shim that makes fsync and fdatasync take a fixed time.
 *
 * Used by bench/durable-append.sh to measure the durable log against the plain fsync'ed file
 * on a disk model with a chosen, steady fsync latency: both files live on a tmpfs (where a real
 * fsync returns at once) and every fsync/fdatasync first calls the real one, then sleeps
 * FSYNC_DELAY_US microseconds (default 100). The sleep does not burn CPU, as a real device
 * flush does not. Timer slack is set to 1 ns so the sleep is close to the asked time.
 *
 * Build: cc -O2 -shared -fPIC -o fsync_delay.so fsync_delay.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static long delay_ns(void) {
    static long cached = -1;
    if (cached < 0) {
        const char *s = getenv("FSYNC_DELAY_US");
        long us = s ? atol(s) : 100;
        cached = us < 0 ? 0 : us * 1000;
    }
    return cached;
}

static void pause_like_a_disk(void) {
    long ns = delay_ns();
    if (ns == 0)
        return;
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    struct timespec t = {ns / 1000000000L, ns % 1000000000L};
    while (nanosleep(&t, &t) != 0) {
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int r = real(fd);
    pause_like_a_disk();
    return r;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int r = real(fd);
    pause_like_a_disk();
    return r;
}
