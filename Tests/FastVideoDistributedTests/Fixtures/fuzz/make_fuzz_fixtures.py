#!/usr/bin/env python3
"""Writes the hand-made hostile inputs that FuzzRegressionTests feeds to the readers.

Run from anywhere: python3 make_fuzz_fixtures.py  (standard library only). The files
are committed, so the tests do not need python. Each `nasty-*` file here has an entry
in FuzzRegressionTests.swift saying what the reader must answer; inputs that the
fuzzers (Fuzz/run.sh) found crashing are kept next to them as `crash-*` files.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(folder, name, data):
    with open(os.path.join(HERE, folder, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------------------- npy

def npy(header, data=b"", version=(1, 0), length=None):
    """An npy file with `header` (text; a newline is appended) and `data`.

    `length` overrides the header length field."""
    text = (header + "\n").encode("latin-1")
    size = len(text) if length is None else length
    field = struct.pack("<H", size) if version == (1, 0) else struct.pack("<I", size)
    return b"\x93NUMPY" + bytes(version) + field + text + data


def dict_header(descr="'<f4'", shape="(2,)", fortran="False"):
    return "{'descr': %s, 'fortran_order': %s, 'shape': %s, }" % (descr, fortran, shape)


def make_npy():
    big = 2 ** 63 - 1
    files = {
        # A shape of 10^12 float32 (4 TB) with 4 bytes of data: must fail on the size, not allocate.
        "nasty-huge-shape.npy": npy(dict_header(shape="(1000000000000,)"), b"\0" * 4),
        # The same for a shape just under the element limit in every dimension.
        "nasty-huge-shape-2d.npy": npy(dict_header(descr="'|u1'", shape="(2000000, 1000000)"), b"\0" * 16),
        # The element count overflows Int.
        "nasty-overflowing-shape.npy": npy(dict_header(shape="(%d, %d)" % (big, big)), b"\0" * 8),
        # An empty tensor whose other dimensions overflow Int when multiplied (numpy refuses it).
        "nasty-zero-dim-overflow.npy": npy(dict_header(shape="(0, %d, %d)" % (big, big))),
        # A dimension that does not fit in Int64 at all.
        "nasty-dim-beyond-int64.npy": npy(dict_header(shape="(99999999999999999999,)"), b"\0" * 8),
        "nasty-negative-dim.npy": npy(dict_header(shape="(-1, 4)"), b"\0" * 16),
        "nasty-min-int-dim.npy": npy(dict_header(shape="(-9223372036854775808,)")),
        # Header length 0x0200 but only a few bytes follow.
        "nasty-truncated-header.npy": npy(dict_header(), length=0x200)[:30],
        # Version 2.0 header length field of 4 GB - 1.
        "nasty-header-length-beyond-file.npy": npy(dict_header(), version=(2, 0), length=0xFFFFFFFF),
        "nasty-magic-only.npy": b"\x93NUMPY",
        "nasty-version-only.npy": b"\x93NUMPY\x01\x00\x10",
        "nasty-unknown-version.npy": npy(dict_header(), b"\0" * 8, version=(9, 9)),
        "nasty-empty-file.npy": b"",
        "nasty-data-truncated.npy": npy(dict_header(shape="(4,)"), b"\0" * 15),
        "nasty-trailing-data.npy": npy(dict_header(shape="(1,)"), b"\0" * 5),
        "nasty-dtype-empty.npy": npy(dict_header(descr="''")),
        "nasty-dtype-byteorder-only.npy": npy(dict_header(descr="'<'")),
        "nasty-dtype-uint16.npy": npy(dict_header(descr="'<u2'"), b"\0" * 4),
        "nasty-dtype-object.npy": npy(dict_header(descr="'|O'"), b"\0" * 16),
        "nasty-dtype-bigendian.npy": npy(dict_header(descr="'>f8'"), b"\0" * 16),
        "nasty-dtype-unicode.npy": npy(dict_header(descr="'<U99999999999999999999'")),
        "nasty-dtype-structured.npy": npy(dict_header(descr="[('a', '<f4')]"), b"\0" * 8),
        "nasty-dtype-not-string.npy": npy(dict_header(descr="4"), b"\0" * 8),
        "nasty-fortran-order.npy": npy(dict_header(fortran="True"), b"\0" * 8),
        "nasty-shape-list.npy": npy(dict_header(shape="[2]"), b"\0" * 8),
        "nasty-shape-strings.npy": npy(dict_header(shape="('2',)"), b"\0" * 8),
        "nasty-missing-shape.npy": npy("{'descr': '<f4', 'fortran_order': False}", b"\0" * 4),
        "nasty-duplicate-key.npy": npy("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': ()}", b"\0" * 4),
        "nasty-unknown-key.npy": npy("{'descr': '<f4', 'fortran_order': False, 'shape': (), 'x': 1}", b"\0" * 4),
        "nasty-deep-nesting.npy": npy("{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 5000 + ")" * 5000 + "}"),
        "nasty-unterminated-string.npy": npy("{'descr': '<f4"),
        "nasty-not-a-dict.npy": npy("[1, 2, 3]"),
        "nasty-text-after-dict.npy": npy(dict_header(shape="()") + " x", b"\0" * 4),
        "nasty-non-utf8-v3.npy": npy("{'descr': '<f4\xff\xfe', 'fortran_order': False, 'shape': ()}", b"\0" * 4, version=(3, 0)),
        # Valid: a version 3.0 file with a header that is not padded, and a 0-d scalar.
        "valid-v3-scalar.npy": npy(dict_header(descr="'<i4'", shape="()"), struct.pack("<i", -7), version=(3, 0)),
        # Valid: an empty tensor with a large (but not overflowing) other dimension.
        "valid-empty-wide.npy": npy(dict_header(shape="(0, 1000000000)")),
    }
    for name, data in files.items():
        write("npy", name, data)


# ---------------------------------------------------------------------------- safetensors

def st(header, data=b"", length=None):
    """A safetensors file with the JSON `header` (a dict, or text as is) and `data`."""
    text = header if isinstance(header, (bytes, str)) else json.dumps(header, separators=(",", ":"))
    if isinstance(text, str):
        text = text.encode("utf-8")
    size = len(text) if length is None else length
    return struct.pack("<Q", size) + text + data


def entry(dtype="F32", shape=(1,), offsets=(0, 4)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def make_safetensors():
    big = 2 ** 63 - 1
    files = {
        "nasty-header-length-huge.safetensors": st({}, length=2 ** 64 - 1),
        "nasty-header-length-over-limit.safetensors": st({}, length=100_000_001),
        "nasty-header-length-beyond-file.safetensors": st({"a": entry()}, b"\0" * 4, length=4096),
        "nasty-short-file.safetensors": b"\x02\0\0\0",
        "nasty-empty-file.safetensors": b"",
        "nasty-non-utf8-header.safetensors": st(b'{"a\xff":{}}'),
        "nasty-not-json.safetensors": st(b"{not json}"),
        "nasty-not-an-object.safetensors": st(b"[1,2,3]"),
        "nasty-header-whitespace-first.safetensors": st(b" {}"),
        # 10^12 float32 elements claimed, 4 bytes present: must fail on the size, not allocate.
        "nasty-huge-shape.safetensors": st({"a": entry(shape=(10 ** 12,))}, b"\0" * 4),
        "nasty-overflowing-shape.safetensors": st({"a": entry(shape=(big, big))}, b"\0" * 4),
        "nasty-zero-dim-overflow.safetensors": st({"a": entry(shape=(0, big, big), offsets=(0, 0))}),
        "nasty-negative-dim.safetensors": st({"a": entry(shape=(-1,))}, b"\0" * 4),
        "nasty-dim-beyond-int64.safetensors": st(b'{"a":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,4]}}', b"\0" * 4),
        "nasty-dim-float.safetensors": st(b'{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}', b"\0" * 4),
        "nasty-unknown-dtype.safetensors": st({"a": entry(dtype="F8_E4M3")}, b"\0" * 4),
        "nasty-dtype-lowercase.safetensors": st({"a": entry(dtype="f32")}, b"\0" * 4),
        "nasty-dtype-not-string.safetensors": st(b'{"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
        "nasty-offsets-beyond-data.safetensors": st({"a": entry(offsets=(0, 4))}, b"\0" * 2),
        "nasty-offsets-huge.safetensors": st({"a": entry(offsets=(big - 3, big))}, b"\0" * 4),
        "nasty-offsets-negative.safetensors": st({"a": entry(offsets=(-4, 0))}, b"\0" * 4),
        "nasty-offsets-reversed.safetensors": st({"a": entry(offsets=(4, 0))}, b"\0" * 4),
        "nasty-offsets-three.safetensors": st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, b"\0" * 8),
        "nasty-offsets-missing.safetensors": st({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4),
        "nasty-offsets-size-mismatch.safetensors": st({"a": entry(shape=(2,), offsets=(0, 4))}, b"\0" * 8),
        "nasty-overlapping.safetensors": st({"a": entry(shape=(2,), offsets=(0, 8)), "b": entry(offsets=(4, 8))}, b"\0" * 8),
        "nasty-same-offsets.safetensors": st({"a": entry(), "b": entry()}, b"\0" * 4),
        "nasty-entry-not-object.safetensors": st(b'{"a":[1,2]}'),
        "nasty-metadata-not-strings.safetensors": st(b'{"__metadata__":{"k":1}}'),
        "nasty-metadata-list.safetensors": st(b'{"__metadata__":["k"]}'),
        "nasty-deep-nesting.safetensors": st(b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"),
        "nasty-duplicate-name.safetensors": st(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                                               b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8),
        "nasty-duplicate-empty-name.safetensors": st(b'{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},'
                                                     b'"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'),
        # Valid: offsets listed out of order (the reader orders tensors by offset).
        "valid-unsorted-offsets.safetensors": st({"b": entry(offsets=(4, 8)), "a": entry(offsets=(0, 4))},
                                                 struct.pack("<ff", 1.0, 2.0)),
        # Valid: an empty tensor sitting inside another tensor's bytes, and a null metadata.
        "valid-empty-inside.safetensors": st(b'{"__metadata__":null,"a":{"dtype":"I16","shape":[2],"data_offsets":[0,4]},'
                                             b'"z":{"dtype":"F64","shape":[3,0],"data_offsets":[2,2]}}', b"\1\0\2\0"),
    }
    for name, data in files.items():
        write("safetensors", name, data)


if __name__ == "__main__":
    make_npy()
    make_safetensors()
