"""Parity with an implementation nobody here wrote: small random transformers models
(saved with save_pretrained) give the same logits (1e-4 max abs, fp32) and the same
32 greedy tokens in refimpl. Needs torch and transformers (the `parity` extra)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch (pip install '.[parity]')")
transformers = pytest.importorskip("transformers", reason="parity tests need transformers (pip install '.[parity]')")

from refimpl.checkpoints import load_model  # noqa: E402
from refimpl.decoding import autoregressive, generate  # noqa: E402
from refimpl.sampling import SamplingSettings  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 1024
SHAPE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256, rms_norm_eps=1e-5,
             bos_token_id=1, eos_token_id=2)
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
ARCHITECTURES = {
    "llama": lambda: transformers.LlamaConfig(**SHAPE, tie_word_embeddings=False),
    "llama-tied-mha": lambda: transformers.LlamaConfig(**{**SHAPE, "num_key_value_heads": 4},
                                                       tie_word_embeddings=True),
    "llama3-rope": lambda: transformers.LlamaConfig(**SHAPE, rope_parameters=LLAMA3),
    "mistral": lambda: transformers.MistralConfig(**SHAPE, sliding_window=None),
    "qwen2": lambda: transformers.Qwen2Config(**SHAPE, tie_word_embeddings=False),
    "qwen3": lambda: transformers.Qwen3Config(**SHAPE, head_dim=32, tie_word_embeddings=True),
    "gpt2": lambda: transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=256,
                                            bos_token_id=1, eos_token_id=2),
}


def sharpen(model, seed):
    """Random weights scaled so the logits are far from uniform (std of several units)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name or name.endswith(("wte.weight", "wpe.weight")):
                p.copy_(torch.randn(p.shape, generator=gen))
            else:  # fan-in is the 2nd axis of nn.Linear, the 1st of GPT-2's Conv1D
                fan_in = p.shape[0] if ".c_" in name else p.shape[1]
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
        if not model.config.tie_word_embeddings:
            model.lm_head.weight.mul_(4)


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    config = ARCHITECTURES[request.param]()
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    sharpen(model, 1)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return model, load_model(folder)


def test_logits_over_a_64_token_prompt_match(pair):
    theirs, ours = pair
    ids = np.random.default_rng(2).integers(0, VOCAB, 64)
    with torch.no_grad():
        expected = theirs(torch.tensor(ids[None])).logits[0].numpy()
    got = ours.forward(ids, np.arange(64), ours.new_cache())
    assert expected.std() > 2.0  # far from uniform
    assert np.abs(got - expected).max() < 1e-4


def test_32_greedy_tokens_match(pair):
    theirs, ours = pair
    prompt = [1, 17, 300, 45]
    with torch.no_grad():
        out = theirs.generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
    expected = out[0, len(prompt):].tolist()
    got = generate(autoregressive(ours, prompt, SamplingSettings(ignore_eos=True), 32), prompt).tokens
    assert got == expected


def test_the_loaders_permutation_is_what_makes_them_agree(pair, tmp_path, monkeypatch):
    """Negative control: without the rotate-half -> interleaved permutation the logits differ."""
    from refimpl.formats import hf

    theirs, _ = pair
    theirs.save_pretrained(tmp_path)
    if theirs.config.model_type == "gpt2":
        pytest.skip("GPT-2 has no RoPE, so no permutation")
    monkeypatch.setattr(hf, "rotate_half_to_interleaved", lambda w, n: w)
    wrong = load_model(tmp_path)
    ids = np.arange(3, 40)
    with torch.no_grad():
        expected = theirs(torch.tensor(ids[None])).logits[0].numpy()
    assert np.abs(wrong.forward(ids, np.arange(len(ids)), wrong.new_cache()) - expected).max() > 1e-2
