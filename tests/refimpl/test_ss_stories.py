"""The shipped streams and heads for stories15M: they load (identity checked), ss and medusa
give ar's very tokens on the real checkpoint (greedy and sampled, both schedules), and the
trained streams are accepted often (the shipped file is not a stub)."""
import numpy as np
import pytest

from conftest import checkpoint_file
from refimpl.checkpoints import load_model
from refimpl.decoding.medusa import load_heads
from refimpl.sampling import SamplingSettings
from refimpl.streams import load_streams, shipped
from refimpl.testing import assert_same_as_ar

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = [1, 9038, 2501, 263, 931, 29892, 727, 471]   # "Once upon a time, there was"


@pytest.fixture(scope="module")
def model():
    return load_model(checkpoint_file("stories15M/stories15M.bin"))


@pytest.mark.parametrize("settings,params", [
    (SamplingSettings(), dict(tree_k=1)),
    (SamplingSettings(), dict(tree_k=2, schedule="fused", prune_threshold=0.05)),
    (SamplingSettings(temperature=0.8, seed=3), dict(tree_k=2)),
])
def test_shipped_streams_give_ar_tokens_on_stories15m(model, settings, params):
    streams = load_streams(shipped(model, "streams"), model)
    gen = assert_same_as_ar("ss", model, PROMPT, settings, 48, streams=streams, **params)
    if settings.greedy and params["tree_k"] == 1:
        assert len(gen.tokens) / gen.target_calls > 1.15   # trained: above ar's 1.0 (random streams: ~1.0)


def test_shipped_heads_give_ar_tokens_on_stories15m(model):
    heads = load_heads(shipped(model, "heads"), model)
    gen = assert_same_as_ar("medusa", model, PROMPT, SamplingSettings(), 48, heads=heads)
    assert len(gen.tokens) / gen.target_calls > 1.1
