"""Writes the `fvd apply` fixtures: per case, inputs in/rank{r}.* and FastVideo's outputs in expected/rank{r}.*.

The expected outputs follow FastVideo's own code paths, emulated with numpy so that
no GPU or torch is needed:
- all_gather: GroupCoordinator.all_gather (all_gather_into_tensor on dim 0, reshape to
  (world_size, *input.shape), movedim(0, dim), reshape);
- all_to_all_4D: _all_to_all_4D of fastvideo/utils/communications.py (reshape, transpose,
  all_to_all_single, transpose, reshape);
- all_reduce: a sum in group-rank order ((x0 + x1) + x2) ..., 16-bit floats accumulated
  in float32 and rounded once (the library's documented order; NCCL's order is unspecified).
Run from this folder: python3 make_apply_fixtures.py (needs numpy). The files are committed.
"""
import json
import os
import shutil
import struct

import numpy as np

rng = np.random.default_rng(20261127)


def all_to_all_single(inputs, group):
    """torch.distributed.all_to_all_single over `group`: rank r's output chunk j is rank j's input chunk r."""
    n = len(group)
    chunks = {g: np.split(inputs[g], n, axis=0) for g in group}
    return {g: np.concatenate([chunks[src][i] for src in group], axis=0) for i, g in enumerate(group)}


def a2a_4d(inputs, group, scatter_idx, gather_idx):
    """FastVideo's _all_to_all_4D for every member of `group`."""
    n = len(group)
    if scatter_idx == 2 and gather_idx == 1:
        bs, shard_seqlen, hc, hs = inputs[group[0]].shape
        seqlen, shard_hc = shard_seqlen * n, hc // n
        t = {g: np.ascontiguousarray(inputs[g].reshape(bs, shard_seqlen, n, shard_hc, hs).transpose(2, 1, 0, 3, 4)) for g in group}
        out = all_to_all_single(t, group)
        return {g: np.ascontiguousarray(out[g].reshape(seqlen, bs, shard_hc, hs).transpose(1, 0, 2, 3)).reshape(bs, seqlen, shard_hc, hs) for g in group}
    if scatter_idx == 1 and gather_idx == 2:
        bs, seqlen, shard_hc, hs = inputs[group[0]].shape
        hc, shard_seqlen = shard_hc * n, seqlen // n
        t = {g: np.ascontiguousarray(
            inputs[g].reshape(bs, n, shard_seqlen, shard_hc, hs).transpose(3, 1, 2, 0, 4).transpose(1, 0, 2, 3, 4)
        ).reshape(n, shard_hc, shard_seqlen, bs, hs) for g in group}
        out = all_to_all_single(t, group)
        return {g: np.ascontiguousarray(out[g].reshape(hc, shard_seqlen, bs, hs).transpose(2, 1, 0, 3)).reshape(bs, shard_seqlen, hc, hs) for g in group}
    raise ValueError("unsupported dims")


def all_gather(inputs, group, dim):
    """FastVideo's GroupCoordinator.all_gather for every member of `group`."""
    shape = inputs[group[0]].shape
    dim = dim % len(shape)
    stacked = np.stack([inputs[g] for g in group])  # all_gather_into_tensor, viewed as (n, *shape)
    moved = np.moveaxis(stacked, 0, dim)
    out = moved.reshape(shape[:dim] + (len(group) * shape[dim],) + shape[dim + 1:])
    return {g: out for g in group}


def all_reduce_sum(inputs, group):
    dtype = inputs[group[0]].dtype
    acc_type = np.float32 if dtype == np.float16 else dtype
    acc = inputs[group[0]].astype(acc_type)
    for g in group[1:]:
        acc = acc + inputs[g].astype(acc_type)
    return {g: acc.astype(dtype) for g in group}


def all_reduce_max(inputs, group):
    acc = inputs[group[0]]
    for g in group[1:]:
        acc = np.maximum(acc, inputs[g])
    return {g: acc for g in group}


def blocks(w, size):
    return [list(range(s, s + size)) for s in range(0, w, size)]


def run(groups, fn, inputs):
    out = {}
    for group in groups:
        out.update(fn(inputs, group))
    return out


def random_array(shape, dtype):
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    return rng.standard_normal(shape).astype(dtype)


def write_safetensors(path, name, bits, dtype_name, metadata):
    """A safetensors file holding one tensor whose raw little-endian bytes are `bits`."""
    header = {"__metadata__": metadata, name: {"dtype": dtype_name, "shape": list(bits.shape), "data_offsets": [0, bits.nbytes]}}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + bits.tobytes())


def case(name, args, w, inputs, outputs, writer=None):
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    shutil.rmtree(root, ignore_errors=True)
    for sub, arrays in (("in", inputs), ("expected", outputs)):
        os.makedirs(os.path.join(root, sub))
        for r in range(w):
            if writer:
                writer(os.path.join(root, sub), r, arrays[r])
            else:
                np.save(os.path.join(root, sub, f"rank{r}.npy"), arrays[r])
    with open(os.path.join(root, "args"), "w") as f:
        f.write(" ".join(args) + "\n")


def main():
    # sequence_model_parallel_all_to_all_4D, default dims (2, 1), W = 4, sp = 4.
    w = 4
    x = {r: random_array((2, 3, 8, 5), np.float32) for r in range(w)}
    case("a2a_21_sp4_float32", ["sequence_model_parallel_all_to_all_4D", "--world-size", "4"], w, x,
         run(blocks(w, 4), lambda i, g: a2a_4d(i, g, 2, 1), x))
    # (1, 2), int16, explicit dims.
    x = {r: random_array((2, 12, 2, 5), np.int16) for r in range(w)}
    case("a2a_12_sp4_int16", ["sequence_model_parallel_all_to_all_4D", "--world-size", "4", "--scatter-dim", "1", "--gather-dim", "2"],
         w, x, run(blocks(w, 4), lambda i, g: a2a_4d(i, g, 1, 2), x))
    # Two SP groups of 2 (tp 2 x sp 2), float16.
    x = {r: random_array((1, 5, 4, 3), np.float16) for r in range(w)}
    case("a2a_21_tp2_sp2_float16", ["sequence_model_parallel_all_to_all_4D", "--world-size", "4", "--tp", "2", "--sp", "2"],
         w, x, run(blocks(w, 2), lambda i, g: a2a_4d(i, g, 2, 1), x))
    # bfloat16 through safetensors: the all-to-all moves the raw 16-bit patterns.
    x = {r: random_array((1, 4, 6, 2), np.uint16) for r in range(3)}
    def bf16_writer(folder, r, bits):
        write_safetensors(os.path.join(folder, f"rank{r}.safetensors"), "hidden_states", bits, "BF16", {"step": "7"})
    case("a2a_21_sp3_bfloat16_safetensors", ["sequence_model_parallel_all_to_all_4D", "--world-size", "3"], 3, x,
         run(blocks(3, 3), lambda i, g: a2a_4d(i, g, 2, 1), x), bf16_writer)
    # sequence_model_parallel_all_gather, dim 1, two SP groups of 2, uint8.
    x = {r: random_array((3, 2, 4), np.uint8) for r in range(w)}
    case("sp_all_gather_dim1_sp2_uint8", ["sequence_model_parallel_all_gather", "--world-size", "4", "--sp", "2", "--dim", "1"],
         w, x, run(blocks(w, 2), lambda i, g: all_gather(i, g, 1), x))
    # tensor_model_parallel_all_gather, default dim -1, tp 4, float64; and bool on dim 0 with tp 2.
    x = {r: random_array((2, 3, 5), np.float64) for r in range(w)}
    case("tp_all_gather_default_tp4_float64", ["tensor_model_parallel_all_gather", "--world-size", "4"], w, x,
         run(blocks(w, 4), lambda i, g: all_gather(i, g, -1), x))
    x = {r: random_array((3, 7), np.bool_) for r in range(w)}
    case("tp_all_gather_dim0_tp2_bool", ["tensor_model_parallel_all_gather", "--world-size", "4", "--tp", "2", "--dim", "0"], w, x,
         run(blocks(w, 2), lambda i, g: all_gather(i, g, 0), x))
    # tensor_model_parallel_all_reduce: sum float32 (tp 4), sum float16 (tp 3), max int32 (tp 2 of 4).
    x = {r: random_array((6, 33), np.float32) for r in range(w)}
    case("tp_all_reduce_sum_tp4_float32", ["tensor_model_parallel_all_reduce", "--world-size", "4"], w, x,
         run(blocks(w, 4), all_reduce_sum, x))
    x = {r: random_array((5, 17), np.float16) for r in range(3)}
    case("tp_all_reduce_sum_tp3_float16", ["tensor_model_parallel_all_reduce", "--world-size", "3"], 3, x,
         run(blocks(3, 3), all_reduce_sum, x))
    x = {r: random_array((4, 9), np.int32) for r in range(w)}
    case("tp_all_reduce_max_tp2_int32", ["tensor_model_parallel_all_reduce", "--world-size", "4", "--tp", "2", "--op", "max"], w, x,
         run(blocks(w, 2), all_reduce_max, x))


if __name__ == "__main__":
    main()
