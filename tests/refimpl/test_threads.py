"""Thread invariance of whole runs: sampled and speculative outputs (tokens and what each
step accepted) are the same on one numba thread and on two."""
import numba
import pytest

from refimpl.model import Model, ModelConfig
from refimpl.sampling import SamplingSettings
from refimpl.testing import decode, random_weights

# wide enough that the matmuls split into several 64-column groups and attention has rows
# and heads to share out; past 64 cache slots
CONFIG = ModelConfig(dim=64, hidden_dim=172, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=300, seq_len=96,
                     shared_classifier=False)
MODEL = Model.from_dense(CONFIG, random_weights(CONFIG, 5, logit_scale=1.0))
RUNS = {
    "ar sampled": ("ar", SamplingSettings(temperature=0.9, top_p=0.95, seed=4, ignore_eos=True), {}),
    "sd tree": ("sd", SamplingSettings(temperature=0.8, seed=5, ignore_eos=True),
                dict(draft=MODEL.first_layers(1), gamma=3, tree_k=2)),
    "sd rejection": ("sd", SamplingSettings(temperature=1.0, top_k=20, seed=6, ignore_eos=True),
                     dict(draft=MODEL.first_layers(1), gamma=3, verify="rejection")),
    "lookup": ("lookup", SamplingSettings(ignore_eos=True), dict(gamma=4)),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_one_and_two_threads_give_the_same_run(name):
    method, settings, params = RUNS[name]
    prompt = [1, 17, 230, 17, 230, 5]
    before = numba.get_num_threads()
    runs = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            gen = decode(method, MODEL, prompt, settings, 70, **params)
            runs.append((gen.tokens, [(r.proposed, r.accepted) for r in gen.records]))
    finally:
        numba.set_num_threads(before)
    assert len(runs[0][0]) == 70 and runs[0] == runs[1]
