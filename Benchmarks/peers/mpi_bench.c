/*
 * mpi_bench: time Open MPI's (or any MPI's) raw collectives the way `fvd bench` times
 * ours, so Benchmarks/compare-mpi.sh can put them side by side.
 *
 *   mpicc -O2 -Wall -Wextra -o mpi_bench mpi_bench.c
 *   mpirun -n W ./mpi_bench [-b 64K] [-e 64M] [-f 4] [--warmup 5] [--iters 20] [--rounds 1]
 *                           [--dtype float32|bfloat16|float16]
 *                           [--op all_reduce|all_gather|all_to_all|reduce_scatter|broadcast|barrier|sendrecv|all]
 *
 * Sizes are bytes of each rank's input (K/M/G = 2^10/2^20/2^30); with --output-sizes,
 * all_gather's are bytes of its output (W inputs), as fvd bench counts them. Per size, the buffers are
 * allocated once and written before timing; each iteration starts after MPI_Barrier, and its
 * time is the slowest rank's (MPI_Reduce MAX over ranks of each iteration's time). After each
 * iteration every rank copies the op's copy-model bytes with memcpy (after another barrier),
 * as `fvd bench` does for its baseline, so both sides meet the same cache state. Rank 0
 * prints one JSON object to stdout: the median iteration (with --rounds R, the median of the
 * R rounds' medians), the fastest and slowest iteration, with the key names of fvd-bench/1
 * where they apply, plus input_gbps = input_bytes / median time. all_to_all is reported as
 * "all_to_all_4d" (the op fvd compares it with); its count, and reduce_scatter's
 * (MPI_Reduce_scatter_block), are rounded down to a multiple of the world size. broadcast is
 * MPI_Bcast from rank 0; barrier is MPI_Barrier, one row of size 0; sendrecv is a ping-pong of
 * MPI_Send and MPI_Recv between ranks 0 and 1 (osu_latency), reported as half the round
 * trip. 16-bit dtypes travel as MPI_UINT16_T, so they are not timed for the reductions (a
 * sum over MPI_UINT16_T would be wrong).
 */
#include <mpi.h>
#include <stdint.h>
/* A peer built on this file (mpi_a2a4d_fastvideo.c) defines PEER_ALL_TO_ALL(in, out, count,
 * type) to time its own all-to-all, and PEER_LIBRARY to name it before MPI's version. */
#ifndef PEER_LIBRARY
#define PEER_LIBRARY ""
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum op { OP_ALL_REDUCE, OP_ALL_GATHER, OP_ALL_TO_ALL, OP_REDUCE_SCATTER, OP_BROADCAST, OP_BARRIER, OP_SENDRECV, OP_COUNT };
static const char *const op_names[OP_COUNT] = {
    "all_reduce", "all_gather", "all_to_all", "reduce_scatter", "broadcast", "barrier", "sendrecv"};
static const char *const op_json[OP_COUNT] = {
    "all_reduce", "all_gather", "all_to_all_4d", "reduce_scatter", "broadcast", "barrier", "sendrecv"};

static int rank, world;

static void die(const char *msg, const char *arg) {
    if (rank == 0) fprintf(stderr, "mpi_bench: %s%s\n", msg, arg ? arg : "");
    MPI_Finalize();
    exit(2);
}

static size_t parse_size(const char *s) {
    char *end;
    double v = strtod(s, &end);
    size_t mult = 1;
    switch (*end) {
    case 'K': case 'k': mult = (size_t)1 << 10; end++; break;
    case 'M': case 'm': mult = (size_t)1 << 20; end++; break;
    case 'G': case 'g': mult = (size_t)1 << 30; end++; break;
    default: break;
    }
    if (end == s || *end != '\0' || v <= 0) die("bad size: ", s);
    return (size_t)(v * (double)mult);
}

static int parse_int(const char *s, int min) {
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < min || v > 1000000) die("bad number: ", s);
    return (int)v;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One collective on buffers prepared by the caller. */
static void run_op(enum op op, const void *in, void *out, int count, MPI_Datatype type) {
    switch (op) {
    case OP_ALL_REDUCE: MPI_Allreduce(in, out, count, type, MPI_SUM, MPI_COMM_WORLD); break;
    case OP_ALL_GATHER: MPI_Allgather(in, count, type, out, count, type, MPI_COMM_WORLD); break;
    case OP_ALL_TO_ALL:
#ifdef PEER_ALL_TO_ALL
        PEER_ALL_TO_ALL(in, out, count, type);
#else
        MPI_Alltoall(in, count / world, type, out, count / world, type, MPI_COMM_WORLD);
#endif
        break;
    case OP_REDUCE_SCATTER: MPI_Reduce_scatter_block(in, out, count / world, type, MPI_SUM, MPI_COMM_WORLD); break;
    case OP_BROADCAST: MPI_Bcast(rank == 0 ? (void *)in : out, count, type, 0, MPI_COMM_WORLD); break;
    case OP_BARRIER: MPI_Barrier(MPI_COMM_WORLD); break;
    case OP_SENDRECV:
        if (rank == 0) {
            MPI_Send(in, count, type, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(out, count, type, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
            MPI_Recv(out, count, type, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(out, count, type, 0, 0, MPI_COMM_WORLD);
        }
        break;
    default: break;
    }
}

/* Times `op` for one size; on rank 0 prints the JSON row (preceded by `sep`). */
static int output_sizes; /* --output-sizes: all_gather's sizes are its output bytes, as fvd bench's */

static void bench(enum op op, size_t bytes, int warmup, int iters, int rounds, const char *dtype,
                  MPI_Datatype type, size_t esize, const char *sep) {
    size_t count = (op == OP_ALL_GATHER && output_sizes ? bytes / (size_t)world : bytes) / esize;
    if (op == OP_ALL_TO_ALL || op == OP_REDUCE_SCATTER) {
        count -= count % (size_t)world;
        if (count < (size_t)world) count = (size_t)world;
    }
    if (count < 1) count = 1;
    if (op == OP_BARRIER) count = 0;
    if (count > (size_t)INT32_MAX / (size_t)world) die("size too large for an int count", NULL);
    size_t in_bytes = count * esize;
    size_t out_bytes = op == OP_ALL_GATHER ? in_bytes * (size_t)world : in_bytes;
    int samples = iters * rounds;

    /* The copy model of fvd bench: bytes a perfect implementation writes per rank. */
    size_t model = op == OP_ALL_GATHER ? out_bytes
                 : op == OP_ALL_REDUCE ? in_bytes + in_bytes / (size_t)world
                 : op == OP_BARRIER ? 0 : in_bytes;
    unsigned char *in = malloc(in_bytes + 1), *out = malloc(out_bytes + 1);
    unsigned char *copy_from = malloc(model + 1), *copy_to = malloc(model + 1);
    double *t = malloc(sizeof(double) * (size_t)samples), *tmax = malloc(sizeof(double) * (size_t)samples);
    if (!in || !out || !t || !tmax || !copy_from || !copy_to) {
        fprintf(stderr, "mpi_bench: rank %d: out of memory at %zu bytes\n", rank, out_bytes);
        MPI_Abort(MPI_COMM_WORLD, 1); /* the other ranks may already wait in a collective */
    }
    if (type == MPI_FLOAT) {
        float *f = (float *)(void *)in;
        for (size_t i = 0; i < count; i++) f[i] = (float)(rank + 1) + (float)(i % 7);
    } else {
        memset(in, rank + 1, in_bytes);
    }
    memset(out, 0, out_bytes); /* fault the output pages in before timing */
    memset(copy_from, 1, model);
    memset(copy_to, 0, model);

    /* A ping-pong's iteration is a round trip: the op's time is half of it. */
    double scale = op == OP_SENDRECV ? 0.5 : 1.0;
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < warmup + iters; i++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = now();
            run_op(op, in, out, (int)count, type);
            double t1 = now();
            if (i >= warmup) t[r * iters + i - warmup] = (t1 - t0) * scale;
            if (model > 0) {
                MPI_Barrier(MPI_COMM_WORLD);
                memcpy(copy_to, copy_from, model);
            }
        }
    }
    MPI_Reduce(t, tmax, samples, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);

    if (rank == 0) {
        /* The median of the rounds' medians; the fastest and slowest of all iterations. */
        double *medians = malloc(sizeof(double) * (size_t)rounds);
        for (int r = 0; r < rounds; r++) {
            double *round = tmax + (size_t)r * (size_t)iters;
            qsort(round, (size_t)iters, sizeof(double), cmp_double);
            medians[r] = iters % 2 ? round[iters / 2] : (round[iters / 2 - 1] + round[iters / 2]) / 2;
        }
        qsort(medians, (size_t)rounds, sizeof(double), cmp_double);
        double med = rounds % 2 ? medians[rounds / 2] : (medians[rounds / 2 - 1] + medians[rounds / 2]) / 2;
        free(medians);
        qsort(tmax, (size_t)samples, sizeof(double), cmp_double);
        size_t size_bytes = op == OP_ALL_GATHER ? out_bytes : in_bytes; /* nccl-tests' size */
        printf("%s\n    {\"op\": \"%s\", \"input_bytes\": %zu, \"size_bytes\": %zu, \"count\": %zu, "
               "\"dtype\": \"%s\", \"time_us\": %.3f, \"time_us_min\": %.3f, \"time_us_max\": %.3f, "
               "\"input_gbps\": %.4f, \"algbw_gbps\": %.4f}",
               sep, op_json[op], in_bytes, size_bytes, count, dtype, med * 1e6, tmax[0] * 1e6,
               tmax[samples - 1] * 1e6, (double)in_bytes / med / 1e9, (double)size_bytes / med / 1e9);
        fflush(stdout);
    }
    free(in); free(out); free(t); free(tmax); free(copy_from); free(copy_to);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);

    size_t b = 64 << 10, e = 64 << 20;
    double f = 4;
    int warmup = 5, iters = 20, rounds = 1, ops[OP_COUNT] = {1, 1, 1, 1, 1, 1, 1};
    const char *dtype = "float32";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            if (rank == 0)
                printf("usage: mpirun -n W %s [-b 64K] [-e 64M] [-f 4] [--warmup 5] [--iters 20] [--rounds 1]\n"
                       "       [--dtype float32|bfloat16|float16] [--output-sizes]\n"
                       "       [--op all_reduce|all_gather|all_to_all|reduce_scatter|broadcast|barrier|sendrecv|all]\n",
                       argv[0]);
            MPI_Finalize();
            return 0;
        }
        if (!strcmp(a, "--output-sizes")) {
            output_sizes = 1;
            continue;
        }
        if (!v) die("missing value for ", a);
        i++;
        if (!strcmp(a, "-b")) b = parse_size(v);
        else if (!strcmp(a, "-e")) e = parse_size(v);
        else if (!strcmp(a, "-f")) f = (double)parse_int(v, 2);
        else if (!strcmp(a, "--warmup")) warmup = parse_int(v, 0);
        else if (!strcmp(a, "--iters")) iters = parse_int(v, 1);
        else if (!strcmp(a, "--rounds")) rounds = parse_int(v, 1);
        else if (!strcmp(a, "--dtype")) dtype = v;
        else if (!strcmp(a, "--op")) {
            int k, all = !strcmp(v, "all");
            for (k = 0; k < OP_COUNT; k++) ops[k] = all || !strcmp(v, op_names[k]) || !strcmp(v, op_json[k]);
            for (k = 0; k < OP_COUNT && !ops[k]; k++) {}
            if (k == OP_COUNT) die("unknown op: ", v);
        } else die("unknown option: ", a);
    }
    if (b > e) die("-b is larger than -e", NULL);
    if (ops[OP_SENDRECV] && world < 2) {
        if (rank == 0) fprintf(stderr, "mpi_bench: skipping sendrecv (needs 2 ranks)\n");
        ops[OP_SENDRECV] = 0;
    }

    MPI_Datatype type;
    size_t esize;
    if (!strcmp(dtype, "float32")) { type = MPI_FLOAT; esize = 4; }
    else if (!strcmp(dtype, "bfloat16") || !strcmp(dtype, "float16")) {
        type = MPI_UINT16_T; esize = 2;
        if ((ops[OP_ALL_REDUCE] || ops[OP_REDUCE_SCATTER]) && rank == 0)
            fprintf(stderr, "mpi_bench: skipping the reductions for %s (no MPI sum for it)\n", dtype);
        ops[OP_ALL_REDUCE] = ops[OP_REDUCE_SCATTER] = 0;
    } else die("unsupported dtype: ", dtype);

    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int len;
    MPI_Get_library_version(version, &len);
    version[strcspn(version, ",\n")] = '\0';
    if (rank == 0)
        printf("{\"schema\": \"mpi-bench/1\", \"library\": \"%s%s\", \"world_size\": %d, \"dtype\": \"%s\", "
               "\"warmup\": %d, \"iterations\": %d, \"rounds\": %d, "
               "\"timing\": \"median over rounds of the median over iterations of the max over ranks\", "
               "\"rows\": [", PEER_LIBRARY, version, world, dtype, warmup, iters, rounds);
    const char *sep = "";
    for (int k = 0; k < OP_COUNT; k++) {
        if (!ops[k]) continue;
        if (k == OP_BARRIER) {
            bench((enum op)k, 0, warmup, iters, rounds, dtype, type, esize, sep);
            sep = ",";
            continue;
        }
        for (size_t s = b; s <= e; s = (size_t)((double)s * f)) {
            bench((enum op)k, s, warmup, iters, rounds, dtype, type, esize, sep);
            sep = ",";
        }
    }
    if (rank == 0) printf("\n]}\n");
    MPI_Finalize();
    return 0;
}
