#ifndef CFVDSHIMS_H
#define CFVDSHIMS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

// Atomics on plain words in memory we allocate ourselves (heap or anonymous memory for
// the in-process transport, a shared mapping across processes). Swift's `Atomic` has no
// stable address, which futex and shared memory need.
static inline uint64_t fvd_atomic_load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void fvd_atomic_store_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
/// Relaxed forms: no ordering, only freedom from torn reads (flight-recorder fields).
static inline uint64_t fvd_atomic_load_relaxed_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void fvd_atomic_store_relaxed_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline uint32_t fvd_atomic_load_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline uint32_t fvd_atomic_add_u32(uint32_t *p, uint32_t v) { return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t fvd_atomic_sub_u32(uint32_t *p, uint32_t v) { return __atomic_sub_fetch(p, v, __ATOMIC_SEQ_CST); }
static inline void fvd_atomic_store_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t fvd_atomic_add_u64(uint64_t *p, uint64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST); }
/// Compare-and-swap; returns 1 when `*p` was `expected` and is now `desired`.
static inline int fvd_atomic_cas_u64(uint64_t *p, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
/// A full (sequentially consistent) fence: orders a store before a later load.
static inline void fvd_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

static inline void fvd_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/// CLOCK_MONOTONIC in nanoseconds (vDSO: no system call).
static inline uint64_t fvd_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/// A cheap monotonic counter for timing calls: the time-stamp counter on x86-64 (about
/// 10 ns to read, against 25 ns for clock_gettime), the virtual counter on arm64, else
/// CLOCK_MONOTONIC in nanoseconds. Its rate is measured once (TickClock).
static inline uint64_t fvd_ticks(void) {
#if defined(__x86_64__)
    return __builtin_ia32_rdtsc();
#elif defined(__aarch64__)
    uint64_t value;
    __asm__ __volatile__("mrs %0, cntvct_el0" : "=r"(value));
    return value;
#else
    return fvd_now_ns();
#endif
}

/// CLOCK_REALTIME in nanoseconds since 1970.
static inline uint64_t fvd_wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/// Sleeps while `*addr == expected`, at most `timeout_ns` (< 0: no limit).
/// Returns 0 when woken or when the value already differed, ETIMEDOUT on timeout,
/// EINTR when interrupted. `shared` selects the cross-process futex operations.
int fvd_futex_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns, int shared);
/// Wakes up to `count` waiters on `addr`. Returns the number woken or -errno.
int fvd_futex_wake(uint32_t *addr, int count, int shared);

/// Copies `n` bytes like memcpy; with `streaming` set it uses non-temporal stores
/// (on x86-64) so that copies far larger than the cache do not evict it.
void fvd_copy(void *dst, const void *src, size_t n, int streaming);
/// Orders streaming stores before later stores; call once after a batch of `fvd_copy(..., 1)`.
void fvd_store_fence(void);

/// Bytes of ``fvd_thread_scratch``.
#define FVD_THREAD_SCRATCH_BYTES 4096
/// FVD_THREAD_SCRATCH_BYTES bytes, 64-byte aligned, private to the calling thread and
/// alive as long as it is: a work area without an allocation or a stack-size check.
void *fvd_thread_scratch(void);

/// The most a waiter spins by the clock, in nanoseconds (the starting spin budget).
#define FVD_SPIN_BUDGET_MAX_NS 200000u
/// The calling thread's spin budget in nanoseconds, which GroupRegion.wait adapts:
/// starts at FVD_SPIN_BUDGET_MAX_NS; private to the thread and alive as long as it is.
uint32_t *fvd_thread_spin_budget(void);
/// CPUs the calling thread may run on (its affinity mask, as `taskset` sets it), or 0
/// when the mask cannot be read.
int fvd_affinity_cpu_count(void);

/// shm_open(name, O_CREAT | O_RDWR | O_CLOEXEC, 0600); returns the fd or -errno.
int fvd_shm_create_or_open(const char *name);
/// Allocates the pages of [offset, offset + length) of `fd` (posix_fallocate); 0 or an errno
/// (ENOSPC when /dev/shm is full), so a later write cannot die of SIGBUS.
int fvd_fallocate(int fd, int64_t offset, int64_t length);
/// Gives the pages of [offset, offset + length) of `fd` back (punches a hole; the size stays); 0 or an errno.
int fvd_punch_hole(int fd, int64_t offset, int64_t length);
/// shm_unlink(name); returns 0 or -errno.
int fvd_shm_unlink(const char *name);

/// A 64-bit hash of `n` bytes (a multiply-xorshift mix over 8-byte words, the length
/// folded into the last), different for each `seed`: for comparing results by digest.
uint64_t fvd_hash_bytes(const void *bytes, size_t n, uint64_t seed);
/// A pidfd of process `pid` (pidfd_open), or -errno (-ESRCH: it has ended already).
int fvd_pidfd_open(int pid);
/// Blocks until process `pid` has ended: polls `pidfd` when it is >= 0 (then closes it),
/// else checks kill(pid, 0) every 100 ms (kernels without pidfds).
void fvd_wait_for_process_end(int pid, int pidfd);

#endif
