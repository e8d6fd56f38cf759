"""Token trees: what speculative methods offer the target in one verification pass.

A tree's node 0 is the *root*: the last committed token, whose keys and values
are not yet in the target's cache (the pending token). Every other node is a
proposed continuation of its parent. Nodes are stored in topological order
(a parent before its children), which is also the order of the query rows of
the target pass:

- row i holds `tokens[i]` at absolute position `base + depth[i]`, where `base`
  is the cache length (the root's position);
- row i attends to the committed cache and to its ancestors and itself
  (`ancestor_mask`), never to siblings or cousins;
- the target's logits at row i give the distribution of the token after node i.

Exact-match verification walks down from the root: at node i the target has
decided the token after it; if a child carries that token the walk goes on,
otherwise it stops (`longest_match`). The accepted path (root included) is what
the KV cache keeps (`KVCache.keep(path)`); the target's token after the path's
last node is the bonus/correction token.

A chain of gamma tokens is a tree of depth gamma with one child per node.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TokenTree:
    """Tokens and parent links (-1 for the root), parents before children."""

    tokens: list[int]
    parents: list[int] = field(default_factory=lambda: [-1])
    depths: list[int] = field(default_factory=lambda: [0])

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def root(cls, token: int) -> "TokenTree":
        return cls(tokens=[int(token)])

    def add(self, parent: int, token: int) -> int:
        """Append a child of node `parent` (duplicates allowed); return its index."""
        if not 0 <= parent < len(self.tokens):
            raise IndexError(f"no node {parent} in a tree of {len(self.tokens)}")
        self.tokens.append(int(token))
        self.parents.append(parent)
        self.depths.append(self.depths[parent] + 1)
        return len(self.tokens) - 1

    @classmethod
    def chain(cls, root: int, tokens) -> "TokenTree":
        """root -> tokens[0] -> tokens[1] -> ..."""
        tree = cls.root(root)
        for token in tokens:
            tree.add(len(tree) - 1, token)
        return tree

    @classmethod
    def from_paths(cls, root: int, paths) -> "TokenTree":
        """The trie of candidate continuations (each a token list below the root):
        shared prefixes become shared nodes."""
        tree = cls.root(root)
        for path in paths:
            node = 0
            for token in path:
                child = tree.child_with(node, token)
                node = tree.add(node, token) if child is None else child
        return tree

    @classmethod
    def from_candidates(cls, root: int, per_depth) -> "TokenTree":
        """Top-k per depth, Medusa style: every node at depth d has the children
        per_depth[d] (a list of candidate tokens); size 1 + k1 + k1*k2 + ..."""
        tree = cls.root(root)
        frontier = [0]
        for candidates in per_depth:
            frontier = [tree.add(node, token) for node in frontier for token in candidates]
        return tree

    # -- reading ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.tokens)

    def children(self, node: int) -> list[int]:
        return [i for i in range(node + 1, len(self.tokens)) if self.parents[i] == node]

    def child_with(self, node: int, token: int) -> int | None:
        """The first child of `node` that carries `token`, or None."""
        for child in self.children(node):
            if self.tokens[child] == token:
                return child
        return None

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root down to `node`, both included."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]

    @property
    def depth(self) -> int:
        return max(self.depths)

    def at_depth(self, depth: int) -> list[int]:
        return [i for i, d in enumerate(self.depths) if d == depth]

    # -- flattening into one pass -----------------------------------------------------------

    def token_array(self) -> np.ndarray:
        return np.asarray(self.tokens, dtype=np.int64)

    def positions(self, base: int) -> np.ndarray:
        """Absolute position of each row: the root's position plus the node's depth."""
        return base + np.asarray(self.depths, dtype=np.int64)

    def ancestor_mask(self) -> np.ndarray:
        """mask[r, j]: node j is node r or one of its ancestors."""
        n = len(self.tokens)
        mask = np.zeros((n, n), dtype=np.bool_)
        for r in range(n):
            if self.parents[r] >= 0:
                mask[r] = mask[self.parents[r]]
            mask[r, r] = True
        return mask

    # -- exact-match verification -----------------------------------------------------------

    def longest_match(self, target_next) -> list[int]:
        """The accepted path (root first) when target_next(node) is the token the
        target puts after `node`: follow the child carrying that token while one exists."""
        path = [0]
        while True:
            child = self.child_with(path[-1], target_next(path[-1]))
            if child is None:
                return path
            path.append(child)


def full_tree_size(k: int, depth: int) -> int:
    """Nodes of the full k-ary tree of the given depth, root included."""
    return sum(k ** d for d in range(depth + 1))


# -- speculative streams (refimpl.streams): extra rows in the last layers -----------------------

def stream_positions(node_positions: np.ndarray, nodes, n_streams: int) -> np.ndarray:
    """RoPE positions of stream rows, the one place they are stated: every stream of a
    node sits at the node's own position (the stream embedding, not RoPE, tells how far
    ahead a stream looks). Rows are node-major: node nodes[0]'s streams 1..n, then the next."""
    return np.repeat(np.asarray(node_positions, dtype=np.int64)[list(nodes)], n_streams)


def stream_mask(mask: np.ndarray, nodes, n_streams: int) -> np.ndarray:
    """The mask of a pass whose n tree rows (ancestor mask `mask`) are followed by
    n_streams stream rows for each node in `nodes` (node-major, as stream_positions):

    - tree rows see what `mask` allows and never a stream row (v1: the main stream
      does not attend to the streams);
    - stream j of node i sees node i and its ancestors, and streams 1..j of node i.
    """
    n, m = mask.shape[0], len(nodes) * n_streams
    out = np.zeros((n + m, n + m), dtype=np.bool_)
    out[:n, :n] = mask
    lower = np.tri(n_streams, dtype=np.bool_)
    for index, node in enumerate(nodes):
        rows = slice(n + index * n_streams, n + (index + 1) * n_streams)
        out[rows, :n] = mask[node]
        out[rows, rows] = lower
    return out
