"""Training of speculative parameters: the hand-written backward passes equal finite
differences in float64; the training forward computes what inference computes; a short
run learns (loss falls, acceptance rises); state resumes to the same parameters."""
import numpy as np
import pytest

from refimpl.model import ModelConfig
from refimpl.streams import deferred_streams, random_streams
from refimpl.testing import random_model
from refimpl.train import (Frozen, TrainSettings, base_constants, medusa_loss, prune_loss, stream_loss,
                           train_streams)

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = ModelConfig(dim=16, hidden_dim=24, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=20, seq_len=32,
                     shared_classifier=False)


def sequences(rng, n=2, length=9):
    return [[1] + list(rng.integers(3, CONFIG.vocab_size, length - 1 - b)) for b in range(n)]


def finite_difference(f, x, eps=1e-6):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        up = f(x)
        x[i] = old - eps
        down = f(x)
        x[i] = old
        grad[i] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("n_layers", [1, 2])
def test_stream_gradient_matches_finite_differences(n_layers):
    rng = np.random.default_rng(0)
    model = random_model(CONFIG, 3)
    frozen = Frozen(model, n_layers, np.float64)
    consts = base_constants(model, sequences(rng), n_layers)
    emb = rng.standard_normal((3, CONFIG.dim))
    _, grad, _ = stream_loss(frozen, emb, consts)
    numeric = finite_difference(lambda e: stream_loss(frozen, e, consts, backward=False)[0], emb.copy())
    assert np.allclose(grad, numeric, rtol=1e-5, atol=1e-8)
    assert np.abs(grad).max() > 1e-4


def test_low_rank_stream_initialisation_gradients_match_finite_differences():
    rng = np.random.default_rng(4)
    model = random_model(CONFIG, 3)
    frozen = Frozen(model, 2, np.float64)
    consts = base_constants(model, sequences(rng), 2)
    emb = rng.standard_normal((2, CONFIG.dim))
    down, up = rng.standard_normal((2, CONFIG.dim, 3)) / 4, rng.standard_normal((2, 3, CONFIG.dim)) / 2
    _, (d_emb, d_down, d_up), _ = stream_loss(frozen, emb, consts, init=(down, up))
    loss = lambda e, d, u: stream_loss(frozen, e, consts, backward=False, init=(d, u))[0]
    assert np.allclose(d_emb, finite_difference(lambda e: loss(e, down, up), emb.copy()), rtol=1e-5, atol=1e-8)
    assert np.allclose(d_down, finite_difference(lambda d: loss(emb, d, up), down.copy()), rtol=1e-5, atol=1e-8)
    assert np.allclose(d_up, finite_difference(lambda u: loss(emb, down, u), up.copy()), rtol=1e-5, atol=1e-8)


def test_prune_and_medusa_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    model = random_model(CONFIG, 4)
    frozen = Frozen(model, 1, np.float64)
    consts = base_constants(model, sequences(rng), 1)
    down, up = rng.standard_normal((CONFIG.dim, 8)), 0.3 * rng.standard_normal((8, CONFIG.dim))
    _, (d_down, d_up), _ = prune_loss(frozen, down, up, consts)
    assert np.allclose(d_down, finite_difference(lambda a: prune_loss(frozen, a, up, consts, False)[0], down.copy()),
                       rtol=1e-5, atol=1e-9)
    assert np.allclose(d_up, finite_difference(lambda b: prune_loss(frozen, down, b, consts, False)[0], up.copy()),
                       rtol=1e-5, atol=1e-9)
    W, b = 0.3 * rng.standard_normal((2, CONFIG.dim, CONFIG.dim)), 0.1 * rng.standard_normal((2, CONFIG.dim))
    _, (dW, db), _ = medusa_loss(frozen, W, b, consts)
    assert np.allclose(dW, finite_difference(lambda w: medusa_loss(frozen, w, b, consts, False)[0], W.copy()),
                       rtol=1e-5, atol=1e-9)
    assert np.allclose(db, finite_difference(lambda c: medusa_loss(frozen, W, c, consts, False)[0], b.copy()),
                       rtol=1e-5, atol=1e-9)


def test_training_forward_is_the_inference_streams():
    """The numpy forward of stream rows equals the kernels' deferred stream pass (to float32 rounding)."""
    from refimpl import train

    rng = np.random.default_rng(2)
    model = random_model(CONFIG, 5)
    streams = random_streams(model, 3, 2, 7)
    streams.init_down = rng.standard_normal((3, CONFIG.dim, 4)).astype(np.float32) / 4
    streams.init_up = rng.standard_normal((3, 4, CONFIG.dim)).astype(np.float32) / 2
    seq = sequences(rng, 1, 12)[0]
    consts = base_constants(model, [seq], 2)
    frozen = Frozen(model, 2, np.float64)
    M = consts.split_hidden.astype(np.float64)
    S = M[:, :, None, :] + streams.embeddings[None, None]
    S = S + np.einsum("btge,ged->btgd", np.einsum("btd,gde->btge", M, streams.init_down), streams.init_up)
    for i, w in enumerate(frozen.layers):
        S, _ = train.msa_layer(frozen, w, S, consts.keys[i], consts.values[i])
    for t in (0, 5, 11):
        cache = model.new_cache(40)
        model.forward(seq[:t + 1], np.arange(t + 1), cache)
        rows = deferred_streams(model, streams, consts.split_hidden[0, t], t, cache)
        assert np.allclose(rows, S[0, t], rtol=1e-4, atol=1e-4)


def test_a_short_run_learns_and_resumes_to_the_same_parameters():
    model = random_model(CONFIG, 6)
    rng = np.random.default_rng(3)
    base = [1] + list(rng.integers(3, CONFIG.vocab_size, 5))
    data = [base * 3 for _ in range(4)]     # a repeating text: the future is predictable
    settings = TrainSettings(gamma=2, n_layers=1, steps=30, lr=0.05, batch=2)
    states = []
    streams, metrics = train_streams(model, data, settings, save_state=states.append, every=10)
    first = stream_loss(Frozen(model, 1), np.zeros((2, CONFIG.dim), np.float32),
                        base_constants(model, data[:2], 1), backward=False)[0]
    assert metrics["stream_loss"] < 0.7 * first
    resumed, _ = train_streams(model, data, settings, state=states[1])
    assert np.allclose(resumed.embeddings, streams.embeddings, rtol=1e-5, atol=1e-6)
