"""numba compiles on first use and caches: a second process loads every kernel from the cache,
a cache holding several specialisations of a kernel never crashes a later process, and a first
use on a terminal says that it compiles."""
import json
import os
import pty
import subprocess
import sys

import pytest

from refimpl.kernels import COMPILE_NOTICE

CONFIG = "ModelConfig(dim=16, hidden_dim=24, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=40, seq_len=16)"

PROBE = f"""
import json, numba
from refimpl import kernels
from refimpl.testing import random_model
from refimpl.model import ModelConfig
model = random_model({CONFIG})
model.forward([1, 2, 3], [0, 1, 2], model.new_cache())
stats = {{name: dict(hits=sum(f.stats.cache_hits.values()), misses=sum(f.stats.cache_misses.values()))
         for name, f in vars(kernels).items() if isinstance(f, numba.core.registry.CPUDispatcher) and f.signatures}}
print(json.dumps(stats))
"""

# One forward pass, in one of two specialisations: the weights as numpy arrays of our own
# (writable) or memory-mapped from a checkpoint file (read-only arrays, another numba type).
# Nothing here sets the thread count: that would start numba's thread pool and hide a kernel
# whose cached code forgot to start it.
FORWARD = f"""
import sys
from refimpl.checkpoints import load_model, save_llama2c
from refimpl.model import ModelConfig
from refimpl.testing import random_model, random_weights
mode, path = sys.argv[1], sys.argv[2]
config = {CONFIG}
if mode == "writable":
    model = random_model(config)
else:
    save_llama2c(path, config, random_weights(config))
    model = load_model(path)
assert model.layers[0].attn_norm.flags.writeable == (mode == "writable")
logits = model.forward([1, 2, 3], [0, 1, 2], model.new_cache())
print(logits.tobytes().hex())
"""


def run_probe(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_second_process_compiles_nothing(tmp_path):
    first = run_probe(tmp_path)
    assert first and all(s["misses"] > 0 for s in first.values())
    second = run_probe(tmp_path)
    assert {"transformer_layer", "matmul", "rmsnorm"} <= set(second)  # what the model calls directly
    assert all(s["misses"] == 0 and s["hits"] > 0 for s in second.values()), second


@pytest.mark.parametrize("sequence", [
    ("writable", "readonly", "readonly", "writable"),
    pytest.param(("readonly", "writable", "writable", "readonly"),
                 marks=pytest.mark.skipif(bool(os.environ.get("CI")), reason="the thorough variant, for local runs")),
])
def test_processes_sharing_a_cache_of_several_specialisations_never_crash(tmp_path, sequence):
    """Each process compiles what the cache lacks and loads the rest; every one must run
    (numba issue 8578: a cached caller of a parallel kernel loaded from the cache used to
    skip starting the thread pool and jumped to a null pointer, SIGSEGV) and agree bit for bit."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    env.pop("NUMBA_NUM_THREADS", None)
    outputs = []
    for i, mode in enumerate(sequence):
        run = subprocess.run([sys.executable, "-c", FORWARD, mode, str(tmp_path / "model.bin")],
                             env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"process {i + 1} ({mode}) exited {run.returncode}: {run.stderr[-2000:]}"
        assert COMPILE_NOTICE not in run.stderr  # compiling or not, stderr is a pipe here: quiet
        outputs.append(run.stdout)
    assert len(set(outputs)) == 1


def stderr_on_a_terminal(cache_dir) -> str:
    """stderr of one forward pass in a fresh process whose stderr is a pseudo-terminal."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    code = ("import sys; from refimpl.testing import random_model; from refimpl.model import ModelConfig; "
            f"m = random_model({CONFIG}); m.forward([1, 2], [0, 1], m.new_cache()); "
            "print('isatty', sys.stderr.isatty(), file=sys.stderr)")
    leader, follower = pty.openpty()
    try:
        subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=follower,
                       check=True, timeout=600)
    finally:
        os.close(follower)
    chunks = []
    try:
        while chunk := os.read(leader, 4096):
            chunks.append(chunk)
    except OSError:  # EIO: the other side is closed and everything was read
        pass
    finally:
        os.close(leader)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_compile_notice_once_on_a_terminal_then_quiet_once_cached(tmp_path):
    """(Quiet on a pipe: the processes of the crash test above compile with stderr piped.)"""
    first = stderr_on_a_terminal(tmp_path)
    assert first.count(COMPILE_NOTICE) == 1 and "isatty True" in first, first
    second = stderr_on_a_terminal(tmp_path)
    assert COMPILE_NOTICE not in second and "isatty True" in second, second
