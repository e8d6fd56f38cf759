"""Prompt lookup decoding: the n-gram search, and exactly the tokens of `ar`."""
import pytest
from hypothesis import given, strategies as st

from refimpl.decoding.lookup import find_continuation, prompt_lookup
from refimpl.errors import InputError
from refimpl.model import Model, ModelConfig
from refimpl.sampling import SamplingSettings
from refimpl.testing import StepCoverage, assert_same_as_ar, random_model, random_weights, tiny_configs

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_latest_earlier_occurrence_wins():
    context = [5, 6, 7, 8, 1, 5, 6, 9, 9, 4, 5, 6]
    assert find_continuation(context, 2, 3) == [9, 9, 4]       # "5 6" last seen before 9 9 4
    assert find_continuation(context, 2, 1) == [9]
    assert find_continuation(context, 2, 0) == []


def test_shorter_ngrams_are_tried_when_the_longest_is_absent():
    context = [3, 4, 5, 9, 4, 8, 2, 4]
    assert find_continuation(context, 3, 2) == [8, 2]           # only "4" recurs; its latest: 4 8 2
    assert find_continuation([1, 2, 3], 2, 4) == []             # nothing recurs
    assert find_continuation([7], 2, 4) == []


def test_the_continuation_may_run_into_the_suffix_itself():
    assert find_continuation([1, 2, 1, 2, 1, 2], 2, 5) == [1, 2]


def test_lookup_gives_the_tokens_of_ar():
    """The property, with its examples' coverage asserted (rejections at depths 1-2,
    partial and full acceptance)."""
    coverage = StepCoverage()

    @given(config=tiny_configs(), seed=st.integers(0, 2**16), data=st.data())
    def check(config, seed, data):
        model = random_model(config, seed)
        pattern = data.draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=1, max_size=4))
        prompt = (pattern * 6)[:data.draw(st.integers(1, 12))]     # repetitive prompts give matches
        settings = SamplingSettings(temperature=data.draw(st.sampled_from([0.0, 0.0, 0.8])),
                                    top_k=data.draw(st.sampled_from([0, 3])), seed=data.draw(st.integers(0, 99)),
                                    ignore_eos=data.draw(st.sampled_from([True, True, False])))
        got = assert_same_as_ar(prompt_lookup, model, prompt, settings, data.draw(st.sampled_from([0, 20, 40])),
                                gamma=data.draw(st.integers(1, 6)), ngram=data.draw(st.integers(1, 4)))
        coverage.add(got)

    check()
    coverage.assert_covered(depths=2)


def test_lookup_accepts_copied_text():
    """A model that repeats itself: lookup proposes the repetition and the target accepts it."""
    config = ModelConfig(dim=24, hidden_dim=40, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, seq_len=96,
                         shared_classifier=False)
    model = Model.from_dense(config, random_weights(config, 8, logit_scale=1.0))
    gen = assert_same_as_ar(prompt_lookup, model, [1, 9, 14], SamplingSettings(), 80, gamma=4, ngram=2)
    assert gen.target_calls < len(gen.tokens)
    assert all(r.draft_passes == 0 for r in gen.records)


def test_bad_input_is_one_clear_error():
    model = random_model(ModelConfig(dim=8, hidden_dim=8, n_layers=1, n_heads=1, n_kv_heads=1, vocab_size=9,
                                     seq_len=16), 0)
    with pytest.raises(InputError, match="--gamma 0"):
        prompt_lookup(model, [1, 2], SamplingSettings(), 5, gamma=0)
    with pytest.raises(InputError, match="--ngram 0"):
        prompt_lookup(model, [1, 2], SamplingSettings(), 5, ngram=0)
