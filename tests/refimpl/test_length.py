"""How long a run is: llama2.c's rule for every method (the token predicted at the last
position, seq_len - 1, is emitted too), stop reasons that tell max_new_tokens apart from
the end of the sequence, and ignore_eos; checked against run.c itself on stories15M."""
import shutil
import subprocess

import pytest

from conftest import checkpoint_file
from refimpl.errors import InputError
from refimpl.model import ModelConfig
from refimpl.sampling import SamplingSettings
from refimpl.testing import decode, random_model

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = ModelConfig(dim=16, hidden_dim=24, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=40, seq_len=20,
                     shared_classifier=False)
MODEL = random_model(CONFIG, 3)


def methods(model):
    """Every method, with parameters that speculate (a cut draft, chains and trees)."""
    from refimpl.decoding.medusa import random_heads

    draft = model.first_layers(1)
    return {"ar": ("ar", {}), "lookup": ("lookup", dict(gamma=3)),
            "mirror": ("mirror", dict(draft=draft, gamma=3)), "medusa": ("medusa", dict(heads=random_heads(model, 2))),
            "sd chain": ("sd", dict(draft=draft, gamma=3)), "sd tree": ("sd", dict(draft=draft, gamma=2, tree_k=2)),
            "sd rejection": ("sd", dict(draft=draft, gamma=3, verify="rejection"))}


@pytest.mark.parametrize("name", list(methods(MODEL)))
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_method_runs_to_the_token_after_the_last_position(name, temperature):
    method, params = methods(MODEL)[name]
    seq_len = CONFIG.seq_len
    longest = seq_len - (7 if name == "sd tree" else 4 if method in ("sd", "mirror") else 0)  # its tree must fit
    for n_prompt in (1, 5, longest - 1, longest):
        prompt = [(7 * i + 3) % CONFIG.vocab_size for i in range(n_prompt)]
        settings = SamplingSettings(temperature=temperature, seed=n_prompt, ignore_eos=True)
        room = seq_len - n_prompt + 1
        cache = MODEL.new_cache() if method != "ar" else None
        extra = dict(cache=cache) if cache is not None else {}
        full = decode(method, MODEL, prompt, settings, 1000, **params, **extra)
        assert (len(full.tokens), full.stop_reason) == (room, "seq_len")
        if cache is not None:     # every token but the last was cached: the last needs no slot
            assert cache.length == seq_len
        exact = decode(method, MODEL, prompt, settings, room, **params)
        short = decode(method, MODEL, prompt, settings, room - 1, **params)
        assert (len(exact.tokens), exact.stop_reason) == (room, "max_new_tokens")
        assert (len(short.tokens), short.stop_reason) == (room - 1, "max_new_tokens")
        if params.get("verify") != "rejection":   # exact match: the very tokens of ar, whatever the budget
            assert exact.tokens == full.tokens and short.tokens == full.tokens[:-1]


def test_a_prompt_longer_than_the_sequence_is_an_error():
    with pytest.raises(InputError, match="sequence length is 20"):
        decode("ar", MODEL, [1] * 21, SamplingSettings(), 5)


def test_ignore_eos_decodes_past_the_stop_ids():
    """A 5-token vocabulary: sampled runs hit BOS/EOS early; with ignore_eos they continue,
    the tokens up to the stop being the same."""
    config = ModelConfig(dim=8, hidden_dim=12, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=5, seq_len=40,
                         shared_classifier=False)
    model = random_model(config, 1)
    stopped = 0
    for seed in range(10):
        plain = decode("ar", model, [3], SamplingSettings(temperature=1.0, seed=seed), 30)
        past = decode("ar", model, [3], SamplingSettings(temperature=1.0, seed=seed, ignore_eos=True), 30)
        assert len(past.tokens) == 30 and past.stop_reason == "max_new_tokens"
        if plain.stop_reason in ("bos", "eos"):
            stopped += 1
            stop_id = 1 if plain.stop_reason == "bos" else 2
            assert past.tokens[:len(plain.tokens) + 1] == plain.tokens + [stop_id]
    assert stopped >= 5


# -- against llama2.c's run.c on stories15M --------------------------------------------------------


@pytest.fixture(scope="module")
def run_c(tmp_path_factory):
    from conftest import REPO_ROOT, checkpoints_dir

    places = [checkpoints_dir().parent, REPO_ROOT.parent / "shared"]
    build = next((p / "anchors/llama2c/build.sh" for p in places if (p / "anchors/llama2c/build.sh").is_file()), None)
    if shutil.which("gcc") is None or build is None:
        pytest.skip("gcc or llama2.c's build script is missing")
    out = tmp_path_factory.mktemp("llama2c")
    subprocess.run(["bash", str(build), str(out)], check=True, capture_output=True, timeout=120)
    return out / "run"


def test_every_method_prints_what_run_c_prints(run_c):
    """run.c -n 256 (= seq_len) at temperature 0: the same text, so the same 250 tokens."""
    from refimpl.checkpoints import load_model
    from refimpl.tokenizer import load_tokenizer

    model_path = checkpoint_file("stories15M/stories15M.bin")
    tokenizer_path = checkpoint_file("stories15M/tokenizer.bin")
    prompt = "Ben had a toy car"    # greedy, its story runs to the end of the sequence (no BOS)
    theirs = subprocess.run([str(run_c), str(model_path), "-z", str(tokenizer_path), "-t", "0", "-n", "256",
                             "-i", prompt], capture_output=True, text=True, check=True, timeout=60).stdout
    model = load_model(model_path)
    tokenizer = load_tokenizer(tokenizer_path, model.config.vocab_size)
    prompt_ids = [1] + tokenizer.encode(prompt)
    for name, (method, params) in methods(model).items():
        if name in ("ar", "lookup", "sd chain"):
            params = {**params, "draft": model.first_layers(3)} if "draft" in params else params
            gen = decode(method, model, prompt_ids, SamplingSettings(), 1000, **params)
            assert gen.stop_reason == "seq_len" and len(gen.tokens) == 256 - len(prompt_ids) + 1, name
            assert tokenizer.decode(prompt_ids[1:] + gen.tokens) + "\n" == theirs, name


def test_generate_ignore_eos_flag(tmp_path, capsys):
    import json

    from mirrorstream.cli import main
    from refimpl.checkpoints import save_llama2c
    from refimpl.testing import random_weights

    config = ModelConfig(dim=8, hidden_dim=12, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=5, seq_len=40,
                         shared_classifier=False)
    save_llama2c(tmp_path / "tiny.bin", config, random_weights(config, 1))
    args = ["generate", "--model", str(tmp_path / "tiny.bin"), "--prompt-ids", "3", "--temperature", "1",
            "--max-new-tokens", "100", "--json"]
    reasons = set()
    for flags in ([], ["--ignore-eos"]):
        assert main(args + flags) == 0
        out = json.loads(capsys.readouterr().out)
        reasons.add(out["stats"]["stop_reason"])
        if flags:
            assert len(out["tokens"]) == 40 and out["stats"]["stop_reason"] == "seq_len"
    assert reasons == {"seq_len", "eos"} or reasons == {"seq_len", "bos"}
