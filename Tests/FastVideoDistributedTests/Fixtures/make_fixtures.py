#!/usr/bin/env python3
"""Writes the tensor-file fixtures that TensorIOTests reads.

Run from anywhere: python3 make_fixtures.py  (needs numpy; the .safetensors file
needs the `safetensors` package: pip install safetensors). The files are committed,
so the tests do not need python. The values here are repeated in TensorIOTests.swift;
change both together.
"""
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def path(name):
    return os.path.join(HERE, name)


def main():
    # One small array per supported dtype, values that are exact in every dtype.
    np.save(path("float32.npy"), np.array([1.5, -2.25, 0.0, 3.0e38], dtype=np.float32))
    np.save(path("float64.npy"), np.array([[1.0, -0.5], [1e300, 2.0 ** -1074]], dtype=np.float64))
    np.save(path("float16.npy"), np.array([1.0, -2.5, 65504.0, 2.0 ** -24], dtype=np.float16))
    np.save(path("int8.npy"), np.array([-128, -1, 0, 127], dtype=np.int8))
    np.save(path("int16.npy"), np.array([-32768, 1234, 32767], dtype=np.int16))
    np.save(path("int32.npy"), np.array([[-2147483648, 7], [42, 2147483647]], dtype=np.int32))
    np.save(path("int64.npy"), np.array([-(2 ** 63), -1, 2 ** 63 - 1], dtype=np.int64))
    np.save(path("uint8.npy"), np.array([0, 1, 200, 255], dtype=np.uint8))
    np.save(path("bool.npy"), np.array([True, False, True, True, False], dtype=np.bool_))

    # A 0-d scalar, a zero-size array and a 3-D array with known values.
    np.save(path("scalar.npy"), np.array(3.25, dtype=np.float64))
    np.save(path("empty.npy"), np.zeros((0, 3), dtype=np.float32))
    np.save(path("arange.npy"), np.arange(24, dtype=np.float32).reshape(2, 3, 4) * 0.5)
    # 16 dimensions: numpy's 21-digit growth room pushes this header past 128 bytes.
    np.save(path("manydims.npy"), np.full((1,) * 15 + (2,), 7, dtype=np.int8))

    # Files the reader must refuse.
    np.save(path("fortran.npy"), np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)))
    np.save(path("bigendian.npy"), np.arange(4, dtype=">i4"))
    np.save(path("object.npy"), np.array([1, "two", None], dtype=object), allow_pickle=True)

    # A safetensors file written by the reference implementation.
    from safetensors.numpy import save_file

    save_file(
        {
            "weight": np.arange(6, dtype=np.float32).reshape(2, 3) * 0.25,
            "half": np.array([1.0, -0.5, 2048.0], dtype=np.float16),
            "steps": np.array([-5, 0, 2 ** 40], dtype=np.int64),
            "bytes": np.array([[0, 7], [128, 255]], dtype=np.uint8),
            "mask": np.array([True, False, True], dtype=np.bool_),
        },
        path("reference.safetensors"),
        metadata={"format": "np", "note": "made by make_fixtures.py"},
    )


if __name__ == "__main__":
    main()
