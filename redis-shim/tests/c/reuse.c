/* Run with the shim preloaded by shim_fds.rs: closes (or replaces) a queued socket's
 * descriptor one way (argv[1]), reuses its number for a socket to another peer, and
 * writes to that. Each peer must get exactly its own bytes.
 *
 *   reuse MODE PORT1 PORT2 N
 *
 * Connects A to 127.0.0.1:PORT1 and writes N bytes 'A' (the last write is left queued:
 * no epoll_wait after it), closes A's number by MODE, connects B to PORT2 (the same
 * number), writes N bytes 'B', and exits. MODE exec: A is close-on-exec and the program
 * execs itself (stage2) before connecting B. MODE raw_close_sweep: A's number is closed
 * by a raw system call and not reused; the program keeps waiting in epoll_wait for
 * 3 s before it connects B. Prints "A=<fd> B=<fd>".
 *
 * The shim is started (one epoll_wait) before A is made, and every free number below A
 * is filled once A is registered, so that the shim's own descriptors (its rings; the
 * threads backend's copy of A) are below A: closefrom(A) must not close them, and B gets
 * A's number. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int ep;

static void die(const char *what) {
  fprintf(stderr, "reuse: %s: %s\n", what, strerror(errno));
  exit(2);
}

static void pump(int ms) {
  struct epoll_event ev[4];
  epoll_wait(ep, ev, 4, ms);
}

static int connect_to(int port, int cloexec) {
  int s = socket(AF_INET, SOCK_STREAM | (cloexec ? SOCK_CLOEXEC : 0), 0);
  if (s < 0) die("socket");
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) die("connect");
  if (fcntl(s, F_SETFL, O_NONBLOCK) != 0) die("fcntl");
  return s;
}

/* Writes n bytes of c to s, waiting in epoll_wait while the shim takes no more; no
 * wait after the last write when leave_queued. */
static void write_n(int s, char c, long n, int leave_queued) {
  char buf[65536];
  memset(buf, c, sizeof buf);
  long off = 0;
  time_t start = time(NULL);
  while (off < n) {
    long k = n - off < (long)sizeof buf ? n - off : (long)sizeof buf;
    ssize_t r = write(s, buf, k);
    if (r > 0) {
      off += r;
    } else if (r < 0 && errno != EAGAIN) {
      die("write");
    }
    if (time(NULL) - start > 30) {
      errno = ETIMEDOUT;
      die("write_n");
    }
    if (off < n || !leave_queued) pump(1);
  }
}

static long raw_close(int fd) {
#if defined(__x86_64__)
  long ret;
  __asm__ volatile("syscall" : "=a"(ret) : "a"((long)SYS_close), "D"((long)fd) : "rcx", "r11", "memory");
  return ret;
#else
  (void)fd;
  fprintf(stderr, "reuse: raw_close needs x86-64\n");
  exit(3);
#endif
}

/* Fills every free descriptor number below `a` (with /dev/null). */
static void fill_below(int a) {
  for (;;) {
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("open");
    if (fd > a) {
      close(fd);
      return;
    }
  }
}

/* A connected to port1 the way the modes need (see the top). */
static int first(int port1, int cloexec) {
  pump(0);
  int hole1 = open("/dev/null", O_RDONLY), hole2 = open("/dev/null", O_RDONLY);
  int a = connect_to(port1, cloexec);
  close(hole1);
  close(hole2);
  write_n(a, 'A', 1, 0);
  fill_below(a);
  return a;
}

static void second(int port2, long n, int a) {
  int b = connect_to(port2, 0);
  printf("A=%d B=%d\n", a, b);
  fflush(stdout);
  write_n(b, 'B', n, 0);
  exit(0);
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: reuse MODE PORT1 PORT2 N\n");
    return 2;
  }
  const char *mode = argv[1];
  int port1 = atoi(argv[2]), port2 = atoi(argv[3]);
  long n = atol(argv[4]);
  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  if (strcmp(mode, "stage2") == 0) {
    pump(0);
    second(port2, n, -1);
  }
  int a = first(port1, strcmp(mode, "exec") == 0);
  write_n(a, 'A', n - 1, 1);
  if (strcmp(mode, "close") == 0) {
    close(a);
  } else if (strcmp(mode, "close_range") == 0) {
    if (close_range(a, a, 0) != 0) die("close_range");
  } else if (strcmp(mode, "closefrom") == 0) {
    closefrom(a);
  } else if (strcmp(mode, "fclose") == 0) {
    FILE *f = fdopen(a, "w");
    if (!f) die("fdopen");
    fclose(f);
  } else if (strcmp(mode, "syscall_close") == 0) {
    if (syscall(SYS_close, a) != 0) die("syscall close");
  } else if (strcmp(mode, "raw_close") == 0) {
    if (raw_close(a) != 0) die("raw close");
  } else if (strcmp(mode, "raw_close_sweep") == 0) {
    if (raw_close(a) != 0) die("raw close");
    time_t start = time(NULL);
    while (time(NULL) - start < 3) pump(10);
  } else if (strcmp(mode, "dup2") == 0 || strcmp(mode, "dup3") == 0 ||
             strcmp(mode, "syscall_dup3") == 0) {
    /* B first, then its descriptor over A's number. */
    int b = connect_to(port2, 0);
    int r = strcmp(mode, "dup2") == 0   ? dup2(b, a)
            : strcmp(mode, "dup3") == 0 ? dup3(b, a, 0)
                                        : (int)syscall(SYS_dup3, b, a, 0);
    if (r != a) die("dup");
    close(b);
    printf("A=%d B=%d\n", a, r);
    fflush(stdout);
    write_n(a, 'B', n, 0);
    return 0;
  } else if (strcmp(mode, "exec") == 0) {
    char *args[] = {argv[0], "stage2", argv[2], argv[3], argv[4], NULL};
    execv(argv[0], args);
    die("execv");
  } else {
    fprintf(stderr, "reuse: unknown mode %s\n", mode);
    return 2;
  }
  second(port2, n, a);
  return 0;
}
