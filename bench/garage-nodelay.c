/*
 * bench/garage-nodelay.c: an LD_PRELOAD shim that turns Nagle's algorithm
 * off (TCP_NODELAY) on every TCP socket a process connects or accepts.
 *
 * Why: Garage 2.5.0 never sets TCP_NODELAY, neither on its node-to-node
 * RPC (garage_net's netapp.rs) nor on its S3 API (garage_api_common's
 * generic_server.rs). A GET in the default consistency mode reads its
 * metadata from a quorum of nodes, and one RPC in ten waited for Nagle:
 * on the test kit's 3-node cluster, ranged 4 KiB GETs had p50 2.7 ms but
 * p90 60 ms and p99 65 ms; with this shim on the three nodes, p50 1.7,
 * p90 2.1, p99 3.4 ms (docs/benchmarks.md, 2026-12-07 night). The remedy
 * upstream is one `set_nodelay(true)` per accepted and connected stream;
 * until Garage does that, an operator can run it under this shim (see
 * docs/operations.md). bench/s3.sh builds and uses it with
 * GARAGE_NODELAY=1. Written in C because it must interpose libc's own
 * symbols in a process that is not ours.
 *
 *     cc -shared -fPIC -O2 -o garage-nodelay.so bench/garage-nodelay.c -ldl
 *     LD_PRELOAD=$PWD/garage-nodelay.so garage -c garage.toml server
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

/* Best effort: a socket that is not TCP refuses the option, and that is
 * fine; the caller's errno is left as the real call set it. */
static void nodelay(int fd)
{
    int one = 1;
    int saved = errno;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    errno = saved;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (!real)
        real = dlsym(RTLD_NEXT, "connect");
    int ret = real(fd, addr, len);
    /* Also when a non-blocking connect is still under way (EINPROGRESS). */
    nodelay(fd);
    return ret;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real)
        real = dlsym(RTLD_NEXT, "accept4");
    int ret = real(fd, addr, len, flags);
    if (ret >= 0)
        nodelay(ret);
    return ret;
}

int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real)
        real = dlsym(RTLD_NEXT, "accept");
    int ret = real(fd, addr, len);
    if (ret >= 0)
        nodelay(ret);
    return ret;
}
