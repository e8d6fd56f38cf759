"""Medusa-1 heads baseline (`--method medusa`): K extra heads on the target's last hidden state.

Head k (1..K) on the final-normed hidden state h of the last committed node guesses the
token k + 1 places after it: classifier(h + silu(W_k h + b_k)), one residual block per
head and the target's own classifier (Cai et al. 2024, Medusa-1; the base stays frozen).
The tree and its verification are Speculative Streaming's (refimpl.decoding.ss
LevelDrafter): root = the target's token after the accepted node, level k = the top-k
(or k draws) of head k; exact match or rejection. The heads read the verification pass's
hidden states, so a step is one target pass plus K residual blocks and K classifier rows
(in traces: one "draft pass" of K rows, the header's draft a one-layer shape of the target,
an upper bound on K residual blocks; the header's params "draft_vocab", the shortlist's size,
tell the simulator to price the K heads on one row and their K classifier rows, refimpl.trace).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from refimpl import kernels
from refimpl.decoding.common import token_budget
from refimpl.decoding.speculative import Proposal, default_prefill_pass, default_tree_pass, speculative_decode
from refimpl.decoding.ss import MAX_TREE_K, LevelDrafter
from refimpl.errors import InputError
from refimpl.sampling import SamplingSettings
from refimpl.streams import classifier_rows, model_identity, read_safetensors, vocabulary_of
from refimpl.verify import MATCH, VERIFY_RULES

FORMAT = "mirrorstream.medusa"


@dataclass
class MedusaHeads:
    weights: np.ndarray       # (K, dim, dim)
    biases: np.ndarray        # (K, dim)
    identity: dict = field(default_factory=dict)
    vocabulary: np.ndarray | None = None    # draft shortlist, as for streams (refimpl.streams)
    packed: dict = field(default_factory=dict, repr=False)

    @property
    def gamma(self) -> int:
        return self.weights.shape[0]

    def check_for(self, model, source: str = "heads") -> None:
        dim = model.config.dim
        if self.vocabulary is not None and (self.vocabulary.max() >= model.config.vocab_size):
            raise InputError(f"{source}: its draft vocabulary does not fit the model's {model.config.vocab_size} tokens")
        if self.weights.ndim != 3 or self.weights.shape[1:] != (dim, dim) or self.biases.shape != (self.gamma, dim):
            raise InputError(f"{source}: heads of shape {self.weights.shape} do not fit the model's hidden size {dim}")
        if self.identity:
            mine = model_identity(model)
            for key in ("dim", "n_layers", "vocab_size"):
                if self.identity.get(key) != mine[key]:
                    raise InputError(f"{source}: trained for a model with {key}={self.identity.get(key)}, "
                                     f"this one has {mine[key]}")
            if self.identity.get("checksum") != mine["checksum"]:
                raise InputError(f"{source}: trained for another model (weights checksum differs)")

    def logits(self, model, hidden: np.ndarray) -> np.ndarray:
        """(K, vocab): every head's logits for one row of the last layer's residual stream."""
        normed = np.empty((1, hidden.shape[-1]), np.float32)
        kernels.rmsnorm(hidden.reshape(1, -1), model.final_norm, model.eps, normed)
        z = self.weights @ normed[0] + self.biases
        with np.errstate(over="ignore"):     # SiLU: exp(-z) = inf for very negative z gives 0, as it should
            blocks = (normed[0] + z / (1.0 + np.exp(-z))).astype(np.float32)
        return classifier_rows(model, self.vocabulary, self.packed, blocks)


def random_heads(model, gamma: int, seed: int = 0, scale: float = 0.5) -> MedusaHeads:
    rng = np.random.default_rng(seed)
    dim = model.config.dim
    return MedusaHeads((scale * rng.standard_normal((gamma, dim, dim)) / np.sqrt(dim)).astype(np.float32),
                       (scale * rng.standard_normal((gamma, dim))).astype(np.float32))


def save_heads(path, heads: MedusaHeads, config: dict | None = None, dtype=np.float32) -> None:
    """Write the heads as safetensors (dtype float16 halves the file: the shipped one)."""
    from safetensors.numpy import save_file

    metadata = {"format": FORMAT, "gamma": str(heads.gamma), "identity": json.dumps(heads.identity, sort_keys=True),
                "config": json.dumps(config or {}, sort_keys=True)}
    tensors = {"weights": np.ascontiguousarray(heads.weights, dtype),
               "biases": np.ascontiguousarray(heads.biases, dtype)}
    if heads.vocabulary is not None:
        tensors["vocabulary"] = np.ascontiguousarray(heads.vocabulary, dtype=np.int32)
    save_file(tensors, str(path), metadata=metadata)


def load_heads(path, model) -> MedusaHeads:
    tensors, metadata = read_safetensors(path, "heads", FORMAT, ("weights", "biases"))
    heads = MedusaHeads(tensors["weights"], tensors["biases"], metadata["identity"], vocabulary_of(tensors, path))
    heads.check_for(model, str(path))
    return heads


class MedusaProposer(LevelDrafter):
    def __init__(self, model, heads: MedusaHeads, settings: SamplingSettings, tree_k: int, verify: str):
        super().__init__(settings, tree_k, verify)
        self.model, self.heads = model, heads
        self.hidden, self.level_logits = None, None

    def prefill_pass(self, target, prompt_ids, cache):
        self.hidden = default_prefill_pass(target, prompt_ids, cache)
        return self.hidden

    def tree_pass(self, target, proposal: Proposal, base: int, cache):
        proposal, self.hidden = default_tree_pass(target, proposal, base, cache)
        return proposal, self.hidden

    def accepted(self, row: int) -> None:
        self.level_logits = self.heads.logits(self.model, self.hidden[row])

    def __call__(self, context, max_depth, max_nodes) -> Proposal:
        depth = 0 if self.level_logits is None else self.depth_for(max_depth, max_nodes, 1, self.heads.gamma)
        proposal = self.tree(context[-1], self.level_logits, len(context) - 1, depth)
        proposal.draft_rows = [self.heads.gamma] if self.level_logits is not None else []
        return proposal


def medusa(model, prompt_ids, settings: SamplingSettings, max_new_tokens: int, heads=None, gamma: int | None = None,
           tree_k: int = 1, verify: str = MATCH, cache=None):
    """Medusa-1 decoding; the step generator of refimpl.decoding."""
    if heads is None:
        raise InputError("--method medusa needs heads (--heads FILE)")
    heads.check_for(model)
    if gamma is not None and not 1 <= gamma <= heads.gamma:
        raise InputError(f"--gamma {gamma}: must be between 1 and the {heads.gamma} trained heads")
    if not 1 <= tree_k <= MAX_TREE_K:
        raise InputError(f"--tree-k {tree_k}: must be between 1 and {MAX_TREE_K}")
    if verify not in VERIFY_RULES:
        raise InputError(f"--verify {verify!r}: must be one of {', '.join(VERIFY_RULES)}")
    token_budget(model, prompt_ids, max_new_tokens)
    if gamma is not None and gamma < heads.gamma:
        heads = MedusaHeads(heads.weights[:gamma], heads.biases[:gamma], heads.identity, heads.vocabulary)
    proposer = MedusaProposer(model, heads, settings, tree_k, verify)
    return speculative_decode(model, prompt_ids, settings, max_new_tokens, proposer, verify, cache)
