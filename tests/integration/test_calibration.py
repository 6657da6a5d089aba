"""svdq_calibrate on the default model writes a basis file that an independent reader
(this test, following the format in models/basis_file.h) accepts: magic, version, JSON
header, payload size, CRC-32, orthonormal bases with descending singular values."""
import json
import struct
import subprocess
import zlib

import numpy as np

from conftest import BUILD


def test_calibrated_basis_file(model_path, tmp_path):
    out = tmp_path / "model.svdq-basis"
    r = subprocess.run([str(BUILD / "tools" / "svdq_calibrate"), str(model_path), "--tokens", "256", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert data[:8] == b"SVDQBAS1"
    version, hlen = struct.unpack_from("<II", data, 8)
    assert version == 1
    header = json.loads(data[16:16 + hlen])
    assert (header["layers"], header["units"], header["width"], header["scope"]) == (30, 3, 64, "head")
    assert header["centered"] and header["tokens"] == 256
    assert struct.unpack_from("<I", data, len(data) - 4)[0] == zlib.crc32(data[:-4])
    w, n = 64, 30 * 3
    payload = np.frombuffer(data[16 + hlen:-4], dtype=np.float32)
    assert payload.size == n * (2 * w + w * w)
    for k in (0, n // 2, n - 1):
        rec = payload[k * (2 * w + w * w):(k + 1) * (2 * w + w * w)]
        vectors = rec[w:w + w * w].reshape(w, w)
        sv = rec[w + w * w:]
        np.testing.assert_allclose(vectors.T @ vectors, np.eye(w), atol=1e-4)
        assert np.all(np.diff(sv) <= 1e-6)

    # A corrupted copy is refused with a message naming the problem.
    bad = tmp_path / "bad.svdq-basis"
    bad.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    r = subprocess.run([str(BUILD / "bench" / "svdq_study"), str(model_path), "--tokens", "64", "--basis", str(bad)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "checksum" in r.stderr
