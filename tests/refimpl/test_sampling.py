"""Sampling rules: the filtered distribution, position-keyed uniforms, and draws that follow it."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy import stats

from refimpl.errors import InputError
from refimpl.sampling import DRAFT, SAMPLE, SamplingSettings, draw, probabilities, sample, uniform

LOGITS = np.array([2.0, 1.0, 1.0, 0.5, -1.0, 3.0, 3.0], dtype=np.float32)


def test_greedy_picks_the_lowest_id_among_ties():
    assert sample(LOGITS, SamplingSettings(), position=3) == 5


def test_top_k_and_top_p_keep_the_expected_sets():
    p = probabilities(LOGITS, SamplingSettings(temperature=1.0, top_k=3))
    assert set(np.flatnonzero(p)) == {5, 6, 0}
    full = probabilities(LOGITS, SamplingSettings(temperature=1.0))
    order = [5, 6, 0, 1, 2, 3, 4]
    mass = np.cumsum(full[order])
    p = probabilities(LOGITS, SamplingSettings(temperature=1.0, top_p=float(mass[2]) - 1e-9))
    assert set(np.flatnonzero(p)) == {5, 6, 0}
    np.testing.assert_allclose(p[[5, 6, 0]], full[[5, 6, 0]] / mass[2])
    assert probabilities(LOGITS, SamplingSettings(temperature=1.0, top_p=1e-6)).tolist() == \
        [0, 0, 0, 0, 0, 1.0, 0]


@given(logits=st.lists(st.floats(-20, 20), min_size=2, max_size=40), k=st.integers(0, 50),
       p=st.floats(0.01, 1.0), t=st.floats(0.05, 3.0), position=st.integers(0, 10**6))
def test_draws_never_leave_the_allowed_set(logits, k, p, t, position):
    settings = SamplingSettings(temperature=t, top_k=k, top_p=p, seed=position % 7)
    probs = probabilities(np.array(logits, dtype=np.float32), settings)
    assert abs(probs.sum() - 1) < 1e-12
    if k:
        assert np.count_nonzero(probs) <= k
    token = sample(np.array(logits, dtype=np.float32), settings, position)
    assert probs[token] > 0


def test_uniform_reproduces_the_known_answers_published_in_the_docs():
    """The table in refimpl.sampling's docstring is what other implementations reproduce."""
    import re

    import refimpl.sampling as sampling

    table = re.findall(r"uniform\((\d+), (\d+), (\d+), (\d+)\) = ([0-9.]+)", sampling.__doc__)
    assert len(table) >= 8
    for *key, value in table:
        assert uniform(*map(int, key)) == float(value), key


def test_the_hash_is_splitmix64():
    """SplitMix64's published outputs: seeded 0, then seeded 1234567 (two consecutive outputs)."""
    from refimpl.sampling import _splitmix64

    golden, mask = 0x9E3779B97F4A7C15, (1 << 64) - 1
    assert _splitmix64(0) == 0xE220A8397B1DCDAF
    assert [_splitmix64(1234567), _splitmix64((1234567 + golden) & mask)] == [6457827717110365317,
                                                                              3203168211198807973]


def test_uniforms_are_uniform_and_a_biased_generator_is_caught():
    u = np.array([uniform(3, p) for p in range(20000)])
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert stats.kstest(u ** 1.05, "uniform").pvalue < 1e-3  # negative control


def test_sampled_frequencies_follow_the_distribution():
    settings = SamplingSettings(temperature=0.8, top_k=5, seed=11)
    probs = probabilities(LOGITS, settings)
    allowed = np.flatnonzero(probs)
    counts = np.bincount([sample(LOGITS, settings, p) for p in range(20000)], minlength=len(LOGITS))
    assert counts[probs == 0].sum() == 0
    assert stats.chisquare(counts[allowed], 20000 * probs[allowed]).pvalue > 1e-3
    wrong = probabilities(LOGITS, SamplingSettings(temperature=1.0, top_k=5))  # negative control
    assert stats.chisquare(counts[allowed], 20000 * wrong[allowed]).pvalue < 1e-3


def test_draw_is_inverse_cdf_in_id_order():
    probs = np.array([0.25, 0.0, 0.5, 0.25])
    assert [draw(probs, u) for u in (0.0, 0.2499, 0.25, 0.74, 0.75, 0.999999)] == [0, 0, 2, 2, 3, 3]


@pytest.mark.parametrize("kwargs,option", [({"temperature": -1}, "--temperature"), ({"top_p": 0.0}, "--top-p"),
                                           ({"top_p": 1.5}, "--top-p"), ({"top_k": -2}, "--top-k"),
                                           ({"temperature": float("nan")}, "--temperature")])
def test_bad_settings_name_the_option(kwargs, option):
    with pytest.raises(InputError, match=option):
        SamplingSettings(**kwargs)
