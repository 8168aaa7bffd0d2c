/*
 * Lab-only LD_PRELOAD shim for the sanlock daemon.
 *
 * The sandbox that runs the lab lacks CAP_SYS_RESOURCE, so sanlock's start-up
 * setrlimit(RLIMIT_MEMLOCK / RLIMIT_RTPRIO) fails and the daemon exits. A real
 * host never needs this: it is loaded only by tests/lab/lab.py.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/resource.h>

typedef int (*setrlimit_fn)(__rlimit_resource_t, const struct rlimit *);

int setrlimit(__rlimit_resource_t resource, const struct rlimit *rlim)
{
    static setrlimit_fn real;
    if (!real)
        real = (setrlimit_fn)dlsym(RTLD_NEXT, "setrlimit");
    /* A refused limit is reported as raised; sanlock runs fine without it. */
    (void)real(resource, rlim);
    return 0;
}

int setrlimit64(__rlimit_resource_t resource, const struct rlimit64 *rlim)
{
    return setrlimit(resource, (const struct rlimit *)rlim);
}
