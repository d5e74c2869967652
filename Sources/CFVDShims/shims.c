#define _GNU_SOURCE
#include "CFVDShims.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif

int fvd_futex_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns, int shared) {
    struct timespec ts;
    struct timespec *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000LL);
        ts.tv_nsec = (long)(timeout_ns % 1000000000LL);
        tsp = &ts;
    }
    int op = shared ? FUTEX_WAIT : FUTEX_WAIT_PRIVATE;
    long rc = syscall(SYS_futex, addr, op, expected, tsp, NULL, 0);
    if (rc == 0) return 0;
    if (errno == EAGAIN) return 0;  // value already changed
    return errno;
}

int fvd_futex_wake(uint32_t *addr, int count, int shared) {
    int op = shared ? FUTEX_WAKE : FUTEX_WAKE_PRIVATE;
    long rc = syscall(SYS_futex, addr, op, count, NULL, NULL, 0);
    return rc < 0 ? -errno : (int)rc;
}

void fvd_copy(void *dst, const void *src, size_t n, int streaming) {
#if defined(__x86_64__)
    if (streaming && n >= 256) {
        unsigned char *d = (unsigned char *)dst;
        const unsigned char *s = (const unsigned char *)src;
        size_t head = (16 - ((uintptr_t)d & 15)) & 15;
        memcpy(d, s, head);
        d += head; s += head; n -= head;
        size_t blocks = n / 64;
        for (size_t i = 0; i < blocks; i++) {
            __m128i a = _mm_loadu_si128((const __m128i *)(s + 0));
            __m128i b = _mm_loadu_si128((const __m128i *)(s + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(s + 32));
            __m128i e = _mm_loadu_si128((const __m128i *)(s + 48));
            _mm_stream_si128((__m128i *)(d + 0), a);
            _mm_stream_si128((__m128i *)(d + 16), b);
            _mm_stream_si128((__m128i *)(d + 32), c);
            _mm_stream_si128((__m128i *)(d + 48), e);
            d += 64; s += 64;
        }
        memcpy(d, s, n - blocks * 64);
        return;
    }
#endif
    (void)streaming;
    memcpy(dst, src, n);
}

void fvd_store_fence(void) {
#if defined(__x86_64__)
    _mm_sfence();
#else
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

int fvd_shm_create_or_open(const char *name) {
    int fd;
    do { fd = shm_open(name, O_CREAT | O_RDWR | O_CLOEXEC, 0600); } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

int fvd_shm_unlink(const char *name) {
    return shm_unlink(name) == 0 ? 0 : -errno;
}

int fvd_fallocate(int fd, int64_t offset, int64_t length) {
    int rc;
    do { rc = posix_fallocate(fd, (off_t)offset, (off_t)length); } while (rc == EINTR);
    return rc;
}

int fvd_punch_hole(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length) == 0 ? 0 : errno;
}

void *fvd_thread_scratch(void) {
    static __thread _Alignas(64) unsigned char scratch[FVD_THREAD_SCRATCH_BYTES];
    return scratch;
}

uint32_t *fvd_thread_spin_budget(void) {
    static __thread uint32_t budget = FVD_SPIN_BUDGET_MAX_NS;
    return &budget;
}

int fvd_affinity_cpu_count(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
    return CPU_COUNT(&set);
}

int fvd_pidfd_open(int pid) {
#ifdef SYS_pidfd_open
    int fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
    if (fd >= 0) {
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        return fd;
    }
    return -errno;
#else
    return -ENOSYS;
#endif
}

void fvd_wait_for_process_end(int pid, int pidfd) {
    if (pidfd >= 0) {
        struct pollfd entry = {.fd = pidfd, .events = POLLIN, .revents = 0};
        while (poll(&entry, 1, -1) < 0 && errno == EINTR) {}
        close(pidfd);
        return;
    }
    while (kill((pid_t)pid, 0) == 0 || errno != ESRCH) usleep(100000);
}

uint64_t fvd_hash_bytes(const void *bytes, size_t n, uint64_t seed) {
    const unsigned char *p = bytes;
    uint64_t h = seed ^ 0x9E3779B97F4A7C15ull;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 29;
    }
    uint64_t tail = (uint64_t)n << 56;
    for (; i < n; i++) tail ^= (uint64_t)p[i] << (8 * (i & 7));
    h = (h ^ tail) * 0x94D049BB133111EBull;
    return h ^ (h >> 31);
}
