#ifndef CFVD_ALLOCATION_COUNTER_H
#define CFVD_ALLOCATION_COUNTER_H

#include <stdint.h>

/// Heap allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign)
/// made by the calling thread so far, or UINT64_MAX where they cannot be counted (a
/// sanitizer build, whose runtime owns malloc).
uint64_t fvd_test_thread_allocations(void);

#endif
