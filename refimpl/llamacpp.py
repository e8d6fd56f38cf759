"""llama.cpp as a second client of the GGUF files `convert --to gguf` writes (optional:
the `llama-cpp-python` package, the `llamacpp` extra, built from source).

An implementation nobody here wrote: tests/refimpl/test_llamacpp.py checks that it
computes the same function as refimpl on the same file, and
benchmarks/bench_llamacpp.py times it beside ours. Token ids go in directly
(llama.cpp's tokenizer plays no part in the comparison), the KV cache is kept in
F32 (llama.cpp's default F16 cache rounds keys and values, about 1e-3 in the
logits), and greedy decoding is a first-maximum argmax over llama.cpp's logits,
as refimpl's is, so only llama.cpp's forward pass is being compared.

    llm = open_gguf("stories15M.gguf", n_ctx=256)
    tokens = greedy(llm, [1, 9038, 2501], 64)
"""
from __future__ import annotations

import os
import time

import numpy as np

GGML_TYPE_F32 = 0  # ggml's type id, for an F32 KV cache


def missing_reason() -> str | None:
    """Why llama.cpp cannot be used here (None when it can)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        return (f"llama-cpp-python is not installed ({exc}); install it from source with "
                f"pip install --no-binary llama-cpp-python llama-cpp-python (the llamacpp extra)")
    return None


def open_gguf(path: str | os.PathLike, n_ctx: int, threads: int = 1):
    """A llama_cpp.Llama over the GGUF file, on `threads` CPU threads, every row's logits
    kept (logits_all), an F32 KV cache, quiet."""
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, n_threads_batch=threads,
                 logits_all=True, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, verbose=False)


def logits(llm, ids) -> np.ndarray:
    """llama.cpp's logits (len(ids), vocab) for one pass over `ids` from an empty cache."""
    ids = [int(t) for t in ids]
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def greedy(llm, prompt_ids, max_new_tokens: int, stop_ids=()) -> list[int]:
    """Greedy tokens after the prompt (a stop token, when one comes, ends the list)."""
    return timed_greedy(llm, prompt_ids, max_new_tokens, stop_ids)[0]


def candidate(llm, prompt_ids, max_new_tokens: int, stop_ids=()) -> dict:
    """An `oracle check` candidate record: llama.cpp's greedy "tokens" and each one's
    "logprobs" (log-softmax, in float64, of the logits that chose it)."""
    tokens = greedy(llm, prompt_ids, max_new_tokens, stop_ids)
    rows = np.asarray(llm.scores[len(prompt_ids) - 1:len(prompt_ids) - 1 + len(tokens)], dtype=np.float64)
    shifted = rows - rows.max(axis=1, keepdims=True)
    logprobs = shifted[np.arange(len(tokens)), tokens] - np.log(np.exp(shifted).sum(axis=1))
    return {"tokens": tokens, "logprobs": [float(v) for v in logprobs]}


def timed_greedy(llm, prompt_ids, max_new_tokens: int, stop_ids=()) -> tuple[list[int], float]:
    """(greedy tokens, seconds from the first generated token on): the prompt pass and the
    first token are left out of the time, as run.c's "achieved tok/s" and bench_model do."""
    llm.reset()
    llm.eval([int(t) for t in prompt_ids])
    tokens, start = [], None
    while len(tokens) < max_new_tokens:
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens.append(token)
        if start is None:
            start = time.perf_counter()
        if token in stop_ids or len(tokens) == max_new_tokens:
            break
        llm.eval([token])
    return tokens, (time.perf_counter() - start) if start is not None else 0.0
