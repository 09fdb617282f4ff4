/* The delivery benchmarks' cheap API stand-in: HTTP/1.1 keep-alive over plain TCP,
 * one thread, epoll, and a timerfd for the added latency.
 *
 * Same answers as bench/_server.py: every request but GET /count gets
 * `200 {"ok":true}` (Content-Length, keep-alive) after --latency seconds and is counted;
 * GET /count answers the count at once. With one constant latency the answers are due
 * in the order the requests came, so the pending answers are a FIFO (no timer wheel
 * needed) and one timerfd, armed to the head's deadline with nanosecond precision,
 * wakes the loop. Answers on one connection keep their order (HTTP/1.1 pipelining).
 *
 * Built by bench/_server.py with the system C compiler when one exists:
 *     cc -O2 -o fast_server bench/_fast_server.c
 *     ./fast_server --latency 0.05      # prints the port, then serves; SIGTERM ends it
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static const char OK[] =
    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n"
    "{\"ok\":true}";

typedef struct {
    char *in;
    size_t in_len, in_cap;
    char *out;
    size_t out_len, out_cap;
    uint32_t gen;
    int open, want_out;
} conn_t;

typedef struct {
    int64_t due;
    int fd;
    uint32_t gen;
} pending_t;

static conn_t *conns;
static int nconns;
static pending_t *queue;
static size_t q_head, q_len, q_cap;
static int64_t latency_ns;
static uint64_t requests;
static volatile sig_atomic_t stop;
static int ep;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return;
    size_t c = *cap ? *cap : 4096;
    while (c < need) c *= 2;
    *buf = realloc(*buf, c);
    if (!*buf) abort();
    *cap = c;
}

static conn_t *conn_of(int fd) {
    if (fd >= nconns) {
        int n = nconns ? nconns : 1024;
        while (n <= fd) n *= 2;
        conns = realloc(conns, sizeof(conn_t) * n);
        if (!conns) abort();
        memset(conns + nconns, 0, sizeof(conn_t) * (n - nconns));
        nconns = n;
    }
    return &conns[fd];
}

static void close_conn(int fd) {
    conn_t *c = conn_of(fd);
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    c->open = 0;
    c->gen++;
    c->in_len = c->out_len = 0;
    c->want_out = 0;
}

static void flush_out(int fd) {
    conn_t *c = conn_of(fd);
    size_t off = 0;
    while (off < c->out_len) {
        ssize_t n = write(fd, c->out + off, c->out_len - off);
        if (n > 0) {
            off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            close_conn(fd);
            return;
        }
    }
    memmove(c->out, c->out + off, c->out_len - off);
    c->out_len -= off;
    int want = c->out_len > 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
        c->want_out = want;
    }
}

static void answer(int fd, const char *data, size_t len) {
    conn_t *c = conn_of(fd);
    grow(&c->out, &c->out_cap, c->out_len + len);
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
}

static void push(int fd) {
    if (q_len == q_cap) {
        size_t n = q_cap ? q_cap * 2 : 4096;
        pending_t *q = malloc(sizeof(pending_t) * n);
        if (!q) abort();
        for (size_t i = 0; i < q_len; i++) q[i] = queue[(q_head + i) % q_cap];
        free(queue);
        queue = q;
        q_head = 0;
        q_cap = n;
    }
    pending_t *p = &queue[(q_head + q_len) % q_cap];
    p->due = now_ns() + latency_ns;
    p->fd = fd;
    p->gen = conn_of(fd)->gen;
    q_len++;
}

/* Parses every complete request in the connection's buffer; 0, or -1 to close. */
static int parse(int fd) {
    conn_t *c = conn_of(fd);
    size_t pos = 0;
    int immediate = 0;
    for (;;) {
        char *start = c->in + pos;
        size_t avail = c->in_len - pos;
        char *end = memmem(start, avail, "\r\n\r\n", 4);
        if (!end) break;
        size_t head = (size_t)(end - start);
        size_t length = 0;
        for (size_t i = 0; i + 15 <= head; i++) {
            if ((start[i] == 'c' || start[i] == 'C') && strncasecmp(start + i, "content-length:", 15) == 0) {
                length = strtoul(start + i + 15, NULL, 10);
                break;
            }
        }
        if (length > (1u << 24)) return -1;
        size_t total = head + 4 + length;
        if (avail < total) break;
        if (head >= 10 && strncmp(start, "GET /count", 10) == 0) {
            char buf[128];
            char body[32];
            int blen = snprintf(body, sizeof body, "%llu", (unsigned long long)requests);
            int n = snprintf(buf, sizeof buf, "HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s", blen, body);
            answer(fd, buf, (size_t)n);
            immediate = 1;
        } else {
            requests++;
            if (latency_ns > 0) {
                push(fd);
            } else {
                answer(fd, OK, sizeof OK - 1);
                immediate = 1;
            }
        }
        pos += total;
    }
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
    if (immediate) flush_out(fd);
    return 0;
}

static void on_term(int sig) {
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv) {
    int port = 0;
    double latency = 0.0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--port") == 0) port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--latency") == 0) latency = atof(argv[i + 1]);
        else { fprintf(stderr, "unknown argument %s\n", argv[i]); return 2; }
    }
    latency_ns = (int64_t)(latency * 1e9);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) || listen(lfd, 4096)) {
        perror("bind/listen");
        return 1;
    }
    socklen_t alen = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    ep = epoll_create1(EPOLL_CLOEXEC);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    ev.data.fd = tfd;
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    int64_t armed = 0; /* the deadline the timerfd is set to, 0: none */
    struct epoll_event events[256];
    char rbuf[65536];

    while (!stop) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                for (;;) {
                    int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (cfd < 0) break;
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *c = conn_of(cfd);
                    c->open = 1;
                    c->in_len = c->out_len = 0;
                    c->want_out = 0;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
                }
            } else if (fd == tfd) {
                uint64_t expirations;
                ssize_t r = read(tfd, &expirations, sizeof expirations);
                (void)r;
                armed = 0;
            } else {
                conn_t *c = conn_of(fd);
                if (!c->open) continue;
                if (events[i].events & EPOLLOUT) flush_out(fd);
                if (!c->open) continue;
                if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                    for (;;) {
                        ssize_t r = read(fd, rbuf, sizeof rbuf);
                        if (r > 0) {
                            grow(&c->in, &c->in_cap, c->in_len + (size_t)r);
                            memcpy(c->in + c->in_len, rbuf, (size_t)r);
                            c->in_len += (size_t)r;
                            if ((size_t)r < sizeof rbuf) break;
                        } else if (r < 0 && errno == EINTR) {
                            continue;
                        } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                            break;
                        } else {
                            close_conn(fd);
                            break;
                        }
                    }
                    if (c->open && parse(fd) < 0) close_conn(fd);
                }
            }
        }
        /* The answers that are due, in order; then arm the timer for the next one. */
        if (q_len) {
            int64_t now = now_ns();
            while (q_len && queue[q_head].due <= now) {
                pending_t p = queue[q_head];
                q_head = (q_head + 1) % q_cap;
                q_len--;
                conn_t *c = conn_of(p.fd);
                if (!c->open || c->gen != p.gen) continue;
                answer(p.fd, OK, sizeof OK - 1);
                /* Write when the next pending answer is not for this connection. */
                if (!(q_len && queue[q_head].fd == p.fd && queue[q_head].due <= now)) flush_out(p.fd);
            }
            if (q_len && queue[q_head].due != armed) {
                int64_t due = queue[q_head].due;
                struct itimerspec its = {0};
                its.it_value.tv_sec = due / 1000000000;
                its.it_value.tv_nsec = due % 1000000000;
                timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
                armed = due;
            }
        }
    }
    return 0;
}
