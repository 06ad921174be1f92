/* Fan-out bench subscribers: COUNT SSE connections on one epoll, in C.
 *
 * On a 2-core machine the load clients share the CPU with the server under test. Python
 * subscribers spent about 30 us of CPU per socket read, half a core for the fan-out bench's
 * 100,000 deliveries a second; this program spends a few. It measures the same thing the
 * Python clients did: for each tick event ({"seq": n, "t": <time.monotonic() at publish>})
 * the latency to its arrival here, and whether any seq arrives twice or never.
 *
 *   fanout_client PORT PATH COUNT TOTAL READY_ON_PING SETTLE_S TIMEOUT_S LATENCY_FILE
 *
 * Prints "ready N" once N connections are ready (first body bytes, or a "ping" event when
 * READY_ON_PING is 1: Flask-SSE sends nothing before its first event), then reads until every
 * connection has TOTAL distinct ticks, stdin closes, or TIMEOUT_S passes. Then it writes the
 * latencies (native doubles, seconds) to LATENCY_FILE and prints
 * "done RECEIVED DUPES CLOSED READS ERRORS".
 *
 * Both servers write an event's data as one-line JSON inside chunked transfer coding. Chunk
 * size lines only ever fall between whole frames, so the body is scanned as it comes: a frame
 * is complete at its blank line, and the bytes after the last one wait for the next read.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_SIZE 65536

typedef struct {
    int fd;
    int head_done, first_bytes, pinged, closed;
    char *rest;      /* bytes after the last complete frame (or of the head) */
    size_t rest_len, rest_cap;
    unsigned char *seen;
    long unique, dupes;
} conn_t;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* the clock of Python's time.monotonic() */
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double *latencies;
static size_t n_latencies, cap_latencies;
static long total, errors;

static void add_latency(double value) {
    if (n_latencies == cap_latencies) {
        cap_latencies = cap_latencies ? cap_latencies * 2 : 1 << 20;
        latencies = realloc(latencies, cap_latencies * sizeof *latencies);
        if (!latencies) { perror("realloc"); exit(1); }
    }
    latencies[n_latencies++] = value;
}

static void append(conn_t *c, const char *data, size_t len) {
    if (c->rest_len + len > c->rest_cap) {
        c->rest_cap = (c->rest_len + len) * 2;
        c->rest = realloc(c->rest, c->rest_cap);
        if (!c->rest) { perror("realloc"); exit(1); }
    }
    memcpy(c->rest + c->rest_len, data, len);
    c->rest_len += len;
}

/* Count the ticks in buf[0, len), which holds whole frames only. */
static void scan_frames(conn_t *c, const char *buf, size_t len, double now) {
    const char *end = buf + len, *p = buf;
    if (!c->pinged && memmem(buf, len, "ping", 4)) c->pinged = 1;
    while ((p = memmem(p, end - p, "\"seq\":", 6)) != NULL) {
        char *after;
        p += 6;
        long seq = strtol(p, &after, 10);
        const char *t = memmem(after, end - after, "\"t\":", 4);
        if (t == NULL) break;
        double sent = strtod(t + 4, &after);
        p = after;
        if (seq < 0 || seq >= total) continue;
        if (c->seen[seq]) {
            c->dupes++;
        } else {
            c->seen[seq] = 1;
            c->unique++;
            add_latency(now - sent);
        }
    }
}

static void on_data(conn_t *c, const char *data, size_t len, double now) {
    if (!c->head_done) {
        append(c, data, len);
        char *end = memmem(c->rest, c->rest_len, "\r\n\r\n", 4);
        if (end == NULL) return;
        if (c->rest_len < 12 || memcmp(c->rest + 9, "200", 3) != 0) {
            errors++;
            c->closed = 1;
            return;
        }
        c->head_done = 1;
        size_t body = end + 4 - c->rest;
        memmove(c->rest, c->rest + body, c->rest_len - body);
        c->rest_len -= body;
        data = NULL;
        len = 0;
    }
    if (data) append(c, data, len);
    if (c->rest_len && !c->first_bytes) c->first_bytes = 1;
    /* The last blank line ends the last complete frame; keep what follows it. */
    char *last = NULL;
    for (char *p = c->rest; (p = memmem(p, c->rest + c->rest_len - p, "\n\n", 2)); p += 2) last = p;
    if (last == NULL) return;
    size_t whole = last + 2 - c->rest;
    scan_frames(c, c->rest, whole, now);
    memmove(c->rest, c->rest + whole, c->rest_len - whole);
    c->rest_len -= whole;
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s PORT PATH COUNT TOTAL READY_ON_PING SETTLE_S TIMEOUT_S LATENCY_FILE\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]), count = atoi(argv[3]), ready_on_ping = atoi(argv[5]);
    const char *path = argv[2], *latency_file = argv[8];
    total = atol(argv[4]);
    double settle = atof(argv[6]), timeout = atof(argv[7]);

    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < (rlim_t)count + 64) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
    char request[2048];
    int request_len = snprintf(request, sizeof request,
        "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
        path, port);

    int ep = epoll_create1(0);
    conn_t *conns = calloc(count, sizeof *conns);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    for (int i = 0; i < count; i++) {
        conn_t *c = &conns[i];
        c->seen = calloc(total > 0 ? total : 1, 1);
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (c->fd < 0 || (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS)) {
            errors++;
            c->closed = 1;
            continue;
        }
        struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = (unsigned)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    struct epoll_event in = {.events = EPOLLIN, .data.u32 = (unsigned)count}; /* stdin: stop */
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &in);

    static char buf[READ_SIZE];
    struct epoll_event events[256];
    long reads = 0;
    int phase = 0; /* 0: waiting for readiness, 1: measuring */
    double started = now_s(), deadline = started + settle;
    for (;;) {
        double now = now_s();
        int done = 1, ready = 0;
        for (int i = 0; i < count; i++) {
            conn_t *c = &conns[i];
            int is_ready = !c->closed && (ready_on_ping ? c->pinged : c->first_bytes);
            ready += is_ready;
            if (phase == 0 ? !(c->closed || is_ready) : !(c->closed || c->unique >= total)) done = 0;
        }
        if (phase == 0 && (done || now >= deadline)) {
            printf("ready %d\n", ready);
            fflush(stdout);
            phase = 1;
            reads = 0;
            deadline = now + timeout;
            continue;
        }
        if (phase == 1 && (done || now >= deadline)) break;
        int n = epoll_wait(ep, events, 256, 100);
        int stop = 0;
        for (int k = 0; k < n; k++) {
            unsigned i = events[k].data.u32;
            if (i == (unsigned)count) { stop = 1; continue; }
            conn_t *c = &conns[i];
            if (events[k].events & EPOLLOUT) { /* connected: send the request once */
                struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                if (send(c->fd, request, request_len, 0) != request_len) { errors++; c->closed = 1; }
                continue;
            }
            ssize_t got = recv(c->fd, buf, sizeof buf, 0);
            if (got > 0) {
                reads++;
                on_data(c, buf, (size_t)got, now_s());
            } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
                c->closed = 1;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
            }
        }
        if (stop) break;
    }

    long received = 0, dupes = 0, closed = 0;
    for (int i = 0; i < count; i++) {
        received += conns[i].unique;
        dupes += conns[i].dupes;
        closed += conns[i].closed;
    }
    FILE *out = fopen(latency_file, "wb");
    if (out == NULL || fwrite(latencies, sizeof *latencies, n_latencies, out) != n_latencies) {
        perror(latency_file);
        return 1;
    }
    fclose(out);
    printf("done %ld %ld %ld %ld %ld\n", received, dupes, closed, reads, errors);
    fflush(stdout);
    return 0;
}
