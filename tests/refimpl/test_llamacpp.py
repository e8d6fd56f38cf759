"""A real second client: llama.cpp (through llama-cpp-python, an implementation nobody here
wrote) loads the GGUF `convert --to gguf` writes from stories15M and stories260K and computes
the same function as refimpl on that file: its tokenizer gives our ids, its logits over
prompt + our greedy continuation are within fp32 rounding of ours at every position, and its
own greedy tokens equal ours or diverge only where the oracle reports a near-tie
(refimpl.oracle.NEAR_TIE_LOGITS, the one definition). A negative control (q/k rows written
in HF's rotate-half layout, the classic GGUF writer bug) fails every one of those checks.

Optional: skips with the reason unless llama-cpp-python is installed (the `llamacpp`
extra, built from source; not in the `test` extra).
"""
import numpy as np
import pytest

from conftest import checkpoint_file
from refimpl.llamacpp import missing_reason

llama_cpp = pytest.importorskip("llama_cpp", reason=missing_reason() or "llama-cpp-python is not installed")

from refimpl import llamacpp  # noqa: E402
from refimpl.checkpoints import find_tokenizer, load_model  # noqa: E402
from refimpl.convert import convert  # noqa: E402
from refimpl.formats.gguf import read_gguf, write_gguf  # noqa: E402
from refimpl.formats.hf import interleaved_to_rotate_half  # noqa: E402
from refimpl.model import Model, ModelConfig  # noqa: E402
from refimpl.oracle import compare, reference  # noqa: E402
from refimpl.sampling import SamplingSettings  # noqa: E402
from refimpl.testing import random_weights  # noqa: E402
from refimpl.tokenizer import BOS_ID, load_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["Once upon a time", "Tom and his dog Max went to the park.", "The little cat was hungry and looked for"]
NEW_TOKENS = 80
SETTINGS = SamplingSettings(ignore_eos=True)   # decode past EOS on both sides, so every run is NEW_TOKENS long
FP32_LOGITS = 1e-3    # max |llama.cpp - refimpl| logit on an F32 file (measured: 3e-5 on stories15M)
HALF_LOGITS = {"f16": 0.05, "bf16": 0.5}   # llama.cpp rounds activations to the weights' type (measured 0.01 / 0.1)


class Pair:
    """llama.cpp on the GGUF converted from `source`, refimpl on `source` itself (so a writer
    bug that our GGUF reader undoes would still show), the prompts' ids and our references."""

    def __init__(self, source, path):
        self.path = path
        self.model = load_model(source)
        self.llm = llamacpp.open_gguf(path, n_ctx=self.model.config.seq_len)
        self.tokenizer = load_tokenizer(find_tokenizer(source), self.model.config.vocab_size)
        self.prompts = [[BOS_ID] + self.tokenizer.encode(text) for text in PROMPTS]
        self.references = [reference(self.model, ids, SETTINGS, NEW_TOKENS) for ids in self.prompts]


@pytest.fixture(scope="module", params=["stories15M/stories15M.bin", "stories260K/stories260K.bin"],
                ids=["stories15M", "stories260K"])
def pair(request, tmp_path_factory):
    import numba

    source = checkpoint_file(request.param)
    path = convert(source, tmp_path_factory.mktemp("gguf") / f"{source.stem}.gguf", "gguf")
    before = numba.get_num_threads()
    numba.set_num_threads(1)   # the module-scoped setup runs before the one_thread fixture
    try:
        return Pair(source, path)
    finally:
        numba.set_num_threads(before)


def teacher_forced(pair, ref):
    """(llama.cpp's, our) logits over prompt + our greedy continuation, one pass each."""
    ids = ref["prompt_ids"] + ref["tokens"][:-1]
    ours = pair.model.forward(ids, np.arange(len(ids)), pair.model.new_cache(len(ids)))
    return llamacpp.logits(pair.llm, ids), ours


def test_llamacpp_reads_our_metadata(pair):
    config = pair.model.config
    assert pair.llm.n_vocab() == config.vocab_size and pair.llm.n_embd() == config.dim
    assert pair.llm.n_ctx() == config.seq_len
    meta = pair.llm.metadata
    assert int(meta["llama.attention.head_count_kv"]) == config.n_kv_heads
    assert int(meta["llama.rope.dimension_count"]) == config.head_dim
    assert (pair.llm.token_bos(), pair.llm.token_eos()) == (config.bos_id, config.eos_ids[0])


def test_its_tokenizer_of_our_vocabulary_gives_our_ids(pair):
    for text, ids in zip(PROMPTS + ["  two  spaces\nand \u00e9 \u65e5\u672c"], pair.prompts + [None]):
        ids = ids or [BOS_ID] + pair.tokenizer.encode(text)
        assert pair.llm.tokenize(text.encode("utf-8"), add_bos=True) == ids, text
    # BOS and EOS carry SentencePiece's spelling (a llama2.c tokenizer.bin has "\n<s>\n")
    assert pair.llm.tokenize(b"<s>Once", add_bos=False, special=True)[0] == BOS_ID
    assert pair.llm.detokenize([BOS_ID, 2], special=True) == b"<s></s>"


def test_logits_agree_to_fp32_rounding_at_every_position(pair):
    worst = 0.0
    for ref in pair.references:
        theirs, ours = teacher_forced(pair, ref)
        worst = max(worst, float(np.abs(theirs - ours).max()))
    print(f"{pair.path.name}: max |llama.cpp - refimpl| logit over {len(pair.references)} x "
          f"{len(theirs)} positions: {worst:.3g}")
    assert worst < FP32_LOGITS


def test_its_argmax_on_our_continuation_is_ours_or_a_near_tie(pair):
    """At every position of our greedy continuation, llama.cpp's top token is ours, or the
    oracle calls the difference a near-tie."""
    for ref in pair.references:
        theirs, _ = teacher_forced(pair, ref)
        picks = np.argmax(theirs[len(ref["prompt_ids"]) - 1:], axis=1)
        for index in np.flatnonzero(picks != np.array(ref["tokens"])):
            verdict = compare(ref, {"tokens": ref["tokens"][:index] + [int(picks[index])]})
            assert verdict.status == "near-tie", verdict.describe()


def test_its_greedy_tokens_equal_ours_or_diverge_at_a_near_tie(pair):
    statuses = []
    for ids, ref in zip(pair.prompts, pair.references):
        theirs = llamacpp.candidate(pair.llm, ids, NEW_TOKENS)
        assert len(theirs["tokens"]) == len(ref["tokens"]) == NEW_TOKENS
        verdict = compare(ref, theirs)   # also compares llama.cpp's log-probs with ours
        assert verdict.passed, verdict.describe()
        statuses.append(verdict.status)
    print(f"{pair.path.name}: {statuses}")


@pytest.mark.parametrize("dtype", sorted(HALF_LOGITS))
def test_half_precision_files_agree_within_their_rounding(tmp_path, dtype):
    source = checkpoint_file("stories15M/stories15M.bin")
    path = convert(source, tmp_path / f"stories15M-{dtype}.gguf", "gguf", dtype)
    model = load_model(path)   # the same rounded weights on both sides
    ids = [BOS_ID] + load_tokenizer(find_tokenizer(source)).encode(PROMPTS[1])
    ours = model.forward(ids, np.arange(len(ids)), model.new_cache(len(ids)))
    theirs = llamacpp.logits(llamacpp.open_gguf(path, n_ctx=64), ids)
    assert np.abs(theirs - ours).max() < HALF_LOGITS[dtype]


def test_a_random_gqa_model_without_a_vocabulary_loads_and_agrees(tmp_path):
    """No tokenizer (tokenizer.ggml.model "none", which llama.cpp needs to load the file),
    grouped-query attention, an untied classifier and a RoPE theta of 500000."""
    config = ModelConfig(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, seq_len=256,
                         shared_classifier=False, rope_theta=500000.0)
    weights = random_weights(config, 3)
    write_gguf(tmp_path / "random.gguf", config, weights)
    model = Model.from_dense(config, weights)
    llm = llamacpp.open_gguf(tmp_path / "random.gguf", n_ctx=config.seq_len)
    ids = [int(t) for t in np.random.default_rng(0).integers(0, config.vocab_size, 64)]
    ours = model.forward(ids, np.arange(len(ids)), model.new_cache(len(ids)))
    assert np.abs(llamacpp.logits(llm, ids) - ours).max() < FP32_LOGITS
    ref = reference(model, ids[:8], SETTINGS, 48)
    verdict = compare(ref, llamacpp.candidate(llm, ids[:8], 48))
    assert verdict.passed, verdict.describe()


def test_negative_control_rotate_half_q_k_rows_fail_every_check(pair, tmp_path):
    """A writer that left q/k rows in HF's rotate-half order (no permutation to llama.cpp's
    interleaved pairs) still loads, but the logits and the greedy tokens give it away."""
    config, weights = read_gguf(pair.path)
    for name, heads in (("wq", config.n_heads), ("wk", config.n_kv_heads)):
        weights[name] = [interleaved_to_rotate_half(w, heads) for w in weights[name]]
    write_gguf(tmp_path / "bad.gguf", config, weights)
    bad = llamacpp.open_gguf(tmp_path / "bad.gguf", n_ctx=config.seq_len)
    ref = pair.references[0]
    _, ours = teacher_forced(pair, ref)
    fed = ref["prompt_ids"] + ref["tokens"][:-1]
    assert np.abs(llamacpp.logits(bad, fed) - ours).max() > 100 * FP32_LOGITS
    verdict = compare(ref, llamacpp.candidate(bad, ref["prompt_ids"], NEW_TOKENS))
    assert verdict.status == "diverged" and not verdict.passed, verdict.describe()
