"""Token trees: building, flattening (positions, ancestor mask), exact-match walks, and the KV
cache after a tree pass (keep the accepted path) equal, bit for bit, to plain decoding's."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from refimpl.model import ModelConfig
from refimpl.testing import random_model, tiny_configs
from refimpl.trees import TokenTree, full_tree_size

pytestmark = pytest.mark.usefixtures("one_thread")


def paths_strategy(vocab=6, max_paths=6, max_len=4):
    return st.lists(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=max_len),
                    min_size=0, max_size=max_paths)


def test_chain_is_a_path():
    tree = TokenTree.chain(7, [3, 4, 5])
    assert tree.tokens == [7, 3, 4, 5] and tree.parents == [-1, 0, 1, 2] and tree.depths == [0, 1, 2, 3]
    assert np.array_equal(tree.ancestor_mask(), np.tri(4, dtype=bool))
    assert list(tree.positions(10)) == [10, 11, 12, 13]


def test_top_k_per_depth_is_the_product_of_candidates():
    tree = TokenTree.from_candidates(0, [[1, 2], [3, 4, 5]])
    assert len(tree) == 1 + 2 + 6
    assert [tree.tokens[i] for i in tree.children(0)] == [1, 2]
    for node in tree.at_depth(1):
        assert [tree.tokens[c] for c in tree.children(node)] == [3, 4, 5]
    assert len(TokenTree.from_candidates(0, [[1, 2]] * 3)) == full_tree_size(2, 3) == 15


@given(paths=paths_strategy())
def test_from_paths_is_a_trie_holding_every_path(paths):
    tree = TokenTree.from_paths(9, paths)
    assert len(tree) == 1 + len({tuple(p[:i]) for p in paths for i in range(1, len(p) + 1)})
    for path in paths:   # each candidate is a root-to-node path
        node = 0
        for token in path:
            node = tree.child_with(node, token)
            assert node is not None
        assert [tree.tokens[i] for i in tree.path_to(node)] == [9] + path
    for i, parent in enumerate(tree.parents):
        assert parent < i and (parent < 0 or tree.depths[i] == tree.depths[parent] + 1)


@given(paths=paths_strategy())
def test_ancestor_mask_is_self_plus_ancestors(paths):
    tree = TokenTree.from_paths(0, paths)
    mask = tree.ancestor_mask()
    for r in range(len(tree)):
        assert set(np.flatnonzero(mask[r])) == set(tree.path_to(r))


@given(paths=paths_strategy(vocab=3), choice=st.lists(st.integers(0, 2), min_size=8, max_size=8))
def test_longest_match_follows_the_target_while_a_child_agrees(paths, choice):
    tree = TokenTree.from_paths(0, paths)
    target_next = lambda node: choice[tree.depths[node]]   # noqa: E731
    path = tree.longest_match(target_next)
    assert path[0] == 0
    for a, b in zip(path, path[1:]):
        assert tree.parents[b] == a and tree.tokens[b] == target_next(a)
    assert tree.child_with(path[-1], target_next(path[-1])) is None
    # no other root path agrees with the target for longer
    for node in range(len(tree)):
        nodes = tree.path_to(node)
        if all(tree.tokens[b] == target_next(a) for a, b in zip(nodes, nodes[1:])):
            assert len(nodes) <= len(path)


@given(config=tiny_configs(), seed=st.integers(0, 2**16), data=st.data())
def test_cache_after_keeping_an_accepted_path_equals_plain_decoding(config, seed, data):
    """A tree pass appends every node; keeping one root-to-node path compacts it into place
    and rolls back the rest: keys, values and the next logits are plain decoding's bits."""
    model = random_model(config, seed)
    vocab = config.vocab_size
    n_prefix = data.draw(st.integers(1, 6), label="prefix")
    prefix = data.draw(st.lists(st.integers(0, vocab - 1), min_size=n_prefix + 1, max_size=n_prefix + 1))
    paths = data.draw(paths_strategy(vocab=min(vocab, 5), max_paths=5, max_len=4), label="paths")
    tree = TokenTree.from_paths(prefix[-1], paths)
    accepted = tree.path_to(data.draw(st.integers(0, len(tree) - 1), label="accepted node"))
    cache = model.new_cache()
    model.forward(prefix[:-1], np.arange(n_prefix), cache)
    model.forward(tree.token_array(), tree.positions(n_prefix), cache, mask=tree.ancestor_mask(), commit=False)
    cache.keep(accepted)
    tokens = prefix[:-1] + [tree.tokens[i] for i in accepted]
    plain = model.new_cache()
    for p, t in enumerate(tokens):
        model.forward([t], [p], plain)
    assert cache.length == plain.length == len(tokens)
    assert np.array_equal(cache.k[:, :cache.length], plain.k[:, :plain.length])
    assert np.array_equal(cache.v[:, :cache.length], plain.v[:, :plain.length])
    probe = [len(tokens) % vocab]
    assert np.array_equal(model.forward(probe, [len(tokens)], cache), model.forward(probe, [len(tokens)], plain))


def test_rolling_back_matters():
    """Negative control: committing a branching tree pass as written is not plain decoding's cache."""
    config = ModelConfig(dim=16, hidden_dim=24, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=30, seq_len=32)
    model = random_model(config, 3)
    tree = TokenTree.from_paths(5, [[1, 2], [3, 4]])
    plain = model.new_cache()
    model.forward([7, 5, 3, 4], np.arange(4), plain)
    for compact in (True, False):
        cache = model.new_cache()
        model.forward([7], [0], cache)
        model.forward(tree.token_array(), tree.positions(1), cache, mask=tree.ancestor_mask(), commit=False)
        if compact:
            cache.keep([0, 3, 4])
        else:
            cache.commit(len(tree))
        assert np.array_equal(cache.k[:, :4], plain.k[:, :4]) == compact


@given(logits=st.lists(st.sampled_from([-1.0, 0.0, 0.5, 2.0]), min_size=1, max_size=12), k=st.integers(1, 5))
def test_top_children_are_the_k_best_ties_to_the_lower_id(logits, k):
    from refimpl.verify import top_children

    expected = [int(t) for t in np.argsort(-np.array(logits), kind="stable")[:k]]
    assert top_children(np.array(logits, dtype=np.float32), k) == expected


@given(config=tiny_configs(), seed=st.integers(0, 2**16), paths=paths_strategy(vocab=5, max_paths=5, max_len=4),
       data=st.data())
def test_logits_on_demand_equal_the_full_pass(config, seed, paths, data):
    """The speculative loop runs the head only on visited rows: same bits as model.forward."""
    from refimpl.decoding.speculative import NodeLogits

    model = random_model(config, seed)
    tree = TokenTree.from_paths(1 % config.vocab_size, [[t % config.vocab_size for t in p] for p in paths])
    prefix = [0, 2 % config.vocab_size]
    full_cache, lazy_cache = model.new_cache(), model.new_cache()
    model.forward(prefix, [0, 1], full_cache)
    model.forward(prefix, [0, 1], lazy_cache)
    full = model.forward(tree.token_array(), tree.positions(2), full_cache, tree.ancestor_mask(), commit=False)
    hidden = model.hidden_states(tree.token_array(), tree.positions(2), lazy_cache, tree.ancestor_mask(),
                                 commit=False)
    lazy = NodeLogits(model, hidden, tree)
    for node in data.draw(st.permutations(range(len(tree)))):
        assert np.array_equal(lazy[node], full[node])
