/*
 * mpi_a2a4d_fastvideo: FastVideo's way of doing the 4-D all-to-all, over MPI, timed exactly
 * as mpi_bench times MPI's own collectives (this file is mpi_bench.c with its all_to_all
 * replaced), so Benchmarks/compare-mpi.sh can put it beside fvd.
 *
 *   mpicc -O2 -Wall -Wextra -o mpi_a2a4d_fastvideo mpi_a2a4d_fastvideo.c
 *   mpirun -n W ./mpi_a2a4d_fastvideo --op all_to_all [-b 64K] [-e 64M] [-f 4] …
 *
 * FastVideo's `_all_to_all_4D(input, scatter_idx=2, gather_idx=1)` (fastvideo/distributed/
 * communication_op.py) runs over any torch.distributed backend:
 *
 *   input_t = input.reshape(bs, shard_seqlen, P, shard_hc, hs).transpose(0, 2).contiguous()
 *   dist.all_to_all_single(output, input_t)
 *   output = output.reshape(seqlen, bs, shard_hc, hs).transpose(0, 1).contiguous()
 *
 * that is a transpose-pack (one strided copy of the whole input), a contiguous all-to-all
 * (here MPI_Alltoall), and an unpack. The shape is fvd bench's: [1, S, 4W, D] (4 heads per
 * rank, D >= 128) from 512W elements, else [1, 1, W, count/W]. With bs = 1 the unpack's
 * transpose moves a dimension of size 1, so torch's .contiguous() copies nothing and neither
 * does this; the pack buffer is allocated once per size, not per call as torch does, which
 * only favours the peer.
 */
#include <stddef.h>

static void fastvideo_all_to_all_4d(const void *in, void *out, int count, int type);
#define PEER_ALL_TO_ALL(in, out, count, type) fastvideo_all_to_all_4d(in, out, count, (int)(type == MPI_FLOAT ? 4 : 2))
#define PEER_LIBRARY "FastVideo _all_to_all_4D (transpose-pack, MPI_Alltoall) on "
#include "mpi_bench.c"

/* in: [1, S, H, D] of `esize`-byte elements, H = heads; packed: [P, S, H/P, D]. */
static void fastvideo_all_to_all_4d(const void *in, void *out, int count, int esize) {
    static unsigned char *packed;
    static size_t packed_bytes;
    size_t n = (size_t)world, heads = 4 * n, sequence = 1, dim;
    if ((size_t)count >= 128 * heads) {
        size_t per_head = (size_t)count / heads;
        for (size_t s = per_head / 128; s > 1; s--) {
            if (per_head % s == 0) { sequence = s; break; }
        }
        dim = per_head / sequence;
    } else {
        heads = n;
        dim = (size_t)count / n;
    }
    size_t bytes = (size_t)count * (size_t)esize;
    if (packed_bytes < bytes) {
        free(packed);
        packed = malloc(bytes);
        packed_bytes = bytes;
        if (!packed) MPI_Abort(MPI_COMM_WORLD, 1);
    }
    /* input.reshape(1, S, P, H/P, D).transpose(0, 2).contiguous(): block p holds heads
     * [p·H/P, (p+1)·H/P) of every token, runs of (H/P)·D elements. */
    size_t run = heads / n * dim * (size_t)esize, row = heads * dim * (size_t)esize;
    const unsigned char *src = in;
    for (size_t p = 0; p < n; p++) {
        for (size_t t = 0; t < sequence; t++) {
            memcpy(packed + (p * sequence + t) * run, src + t * row + p * run, run);
        }
    }
    int block = (int)(bytes / n);
    MPI_Alltoall(packed, block, MPI_BYTE, out, block, MPI_BYTE, MPI_COMM_WORLD);
}
