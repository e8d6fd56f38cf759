"""numba compiles on first use and caches: a second process loads every kernel from the cache."""
import json
import os
import subprocess
import sys

PROBE = """
import json, numba
from refimpl import kernels
from refimpl.testing import random_model
from refimpl.model import ModelConfig
model = random_model(ModelConfig(dim=16, hidden_dim=24, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=40, seq_len=16))
model.forward([1, 2, 3], [0, 1, 2], model.new_cache())
stats = {name: dict(hits=sum(f.stats.cache_hits.values()), misses=sum(f.stats.cache_misses.values()))
         for name, f in vars(kernels).items() if isinstance(f, numba.core.registry.CPUDispatcher) and f.signatures}
print(json.dumps(stats))
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
