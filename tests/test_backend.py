"""The BLAS seam: OpenBLAS is loaded before mlx when present, and can be turned off."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from zephyr_local.backend import OPENBLAS_CANDIDATES
from zephyr_local.testmodel import TOKENIZER_SHA256

PROBE = (
    "import zephyr_local, mlx.core as mx\n"
    "from zephyr_local import backend\n"
    "mx.eval(mx.ones((64, 64)) @ mx.ones((64, 64)))\n"
    "maps = open('/proc/self/maps').read()\n"
    "print(backend.blas()[0], 'libopenblas' in maps)\n"
)


def _probe(**env) -> list[str]:
    full = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=full)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_blas_off_keeps_the_reference_blas():
    assert _probe(ZEPHYR_LOCAL_BLAS="off") == ["reference", "False"]


def test_system_openblas_is_loaded_when_present():
    present = any(os.path.exists(p) for p in OPENBLAS_CANDIDATES)
    # The process maps tell, independently of what backend.blas() claims.
    expected = ["openblas", "True"] if present else ["reference", "False"]
    assert _probe(ZEPHYR_LOCAL_BLAS="") == expected


def test_blas_path_that_does_not_exist():
    name, = _probe(ZEPHYR_LOCAL_BLAS="/nonexistent/libopenblas.so")[:1]
    assert name == "reference"


def test_test_model_carries_the_real_zephyr_tokenizer(test_model):
    digest = hashlib.sha256((test_model / "tokenizer.model").read_bytes()).hexdigest()
    assert digest == TOKENIZER_SHA256
