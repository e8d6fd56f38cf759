"""Reference implementation: numpy/numba Llama model, checkpoints, tokenizers, decoding methods."""
