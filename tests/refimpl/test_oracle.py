"""The oracle (Python and `mirrorstream oracle check`) and the speculative options of
`mirrorstream generate`: same tokens as ar, stats, traces, one-line errors with exit 2."""
import json

import numpy as np
import pytest

from mirrorstream.cli import main
from refimpl.checkpoints import save_llama2c
from refimpl.errors import InputError
from refimpl.model import Model, ModelConfig
from refimpl.oracle import TokenFile, check, read_token_file
from refimpl.sampling import SamplingSettings
from refimpl.testing import decode, random_weights
from refimpl.trace import read_trace

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = ModelConfig(dim=24, hidden_dim=40, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=64, seq_len=96,
                     shared_classifier=False)
PROMPT = [1, 9, 14]


@pytest.fixture(scope="module")
def model():
    return Model.from_dense(CONFIG, random_weights(CONFIG, 8, logit_scale=1.0))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A target checkpoint, a small draft with its vocabulary and one with another vocabulary."""
    root = tmp_path_factory.mktemp("ckpt")
    save_llama2c(root / "target.bin", CONFIG, random_weights(CONFIG, 8, logit_scale=1.0))
    small = ModelConfig(dim=8, hidden_dim=16, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=64, seq_len=96)
    save_llama2c(root / "small.bin", small, random_weights(small, 2))
    other = ModelConfig(dim=8, hidden_dim=8, n_layers=1, n_heads=1, n_kv_heads=1, vocab_size=65, seq_len=96)
    save_llama2c(root / "other.bin", other, random_weights(other, 1))
    return root


# -- the Python function ---------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_reference_output_is_equal(model, temperature):
    settings = SamplingSettings(temperature=temperature, seed=5)
    tokens = decode("sd", model, PROMPT, settings, 30, draft=model.first_layers(1), gamma=3).tokens
    report = check(model, PROMPT, tokens, settings)
    assert len(tokens) == 30 and report.equal and report.compared == 30 and report.index is None
    assert "equal" in report.describe()


def test_a_divergence_reports_position_tokens_top5_and_margin(model):
    settings = SamplingSettings()
    tokens = decode("ar", model, PROMPT, settings, 20).tokens
    wrong = tokens[:7] + [(tokens[7] + 1) % 64] + tokens[8:]
    report = check(model, PROMPT, wrong, settings)
    assert not report.equal
    assert (report.index, report.position, report.expected, report.got) == (7, 10, tokens[7], wrong[7])
    ids = PROMPT + tokens[:7]
    logits = model.forward(ids, np.arange(len(ids)), model.new_cache())[-1]
    assert [t for t, _ in report.top5] == list(np.argsort(-logits, kind="stable")[:5])
    assert report.top5[0][0] == tokens[7]
    assert report.margin == pytest.approx(float(np.sort(logits)[-1] - np.sort(logits)[-2]))
    text = report.describe()
    assert "position 10" in text and "margin" in text and f"expected {tokens[7]}" in text


def test_a_stop_token_may_end_their_list_and_running_past_the_sequence_shows(model):
    settings = SamplingSettings(temperature=1.0, seed=0)
    for seed in range(50):   # find a sampled run that stops on EOS/BOS
        settings = SamplingSettings(temperature=1.0, seed=seed)
        gen = decode("ar", model, PROMPT, settings, 60)
        if gen.stop_reason in ("eos", "bos"):
            break
    stop = 2 if gen.stop_reason == "eos" else 1
    assert check(model, PROMPT, gen.tokens, settings).equal
    assert check(model, PROMPT, gen.tokens + [stop], settings).equal
    report = check(model, PROMPT, gen.tokens + [stop, 5], settings)
    assert not report.equal and report.index == len(gen.tokens) + 1 and report.expected is None


def test_token_files(tmp_path):
    cases = {"list.json": "[3, 4, 5]", "lines.txt": "3\n4\n5\n", "gen.json": json.dumps({"tokens": [3, 4, 5]})}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        assert read_token_file(tmp_path / name) == TokenFile([3, 4, 5], None)
    (tmp_path / "full.json").write_text(json.dumps({"prompt_ids": [1, 7], "tokens": [3, 4], "text": "x"}))
    assert read_token_file(tmp_path / "full.json") == TokenFile([3, 4], [1, 7])
    for text in ['{"a": 1}', '[1, "x"]', "3\nfour\n", "[1.5]", "[]", "", '{"tokens": [3], "prompt_ids": []}',
                 '{"tokens": [3], "prompt_ids": ["1"]}', "[" * 100_000, "[" + "9" * 5000 + "]", "1\n" + "9" * 5000]:
        (tmp_path / "bad").write_text(text)
        with pytest.raises(InputError, match="--tokens"):
            read_token_file(tmp_path / "bad")
    with pytest.raises(InputError, match="no such file"):
        read_token_file(tmp_path / "absent")


# -- the command line ------------------------------------------------------------------------------

def generate_json(capsys, checkpoints, *args):
    assert main(["generate", "--model", str(checkpoints / "target.bin"), "--prompt-ids", "1,9,14",
                 "--max-new-tokens", "40", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("method", [
    ["--method", "sd", "--draft-layers", "1", "--gamma", "3"],
    ["--method", "sd", "--draft-layers", "2", "--gamma", "2", "--tree-k", "2"],
    ["--method", "sd", "--draft-layers", "3", "--gamma", "4"],
    ["--method", "lookup", "--gamma", "3", "--ngram", "2"],
    ["--method", "sd", "--draft", "{root}/small.bin", "--gamma", "3", "--verify", "rejection"],
])
@pytest.mark.parametrize("sampling", [[], ["--temperature", "0.8", "--top-k", "10", "--seed", "4"]])
def test_generate_methods_give_ar_tokens_and_stats(capsys, checkpoints, tmp_path, method, sampling):
    method = [a.replace("{root}", str(checkpoints)) for a in method]
    ar = generate_json(capsys, checkpoints, *sampling)
    out = generate_json(capsys, checkpoints, *method, *sampling, "--trace", str(tmp_path / "t.jsonl"))
    rejection = "rejection" in method
    assert out["tokens"] == ar["tokens"] or (rejection and sampling)   # rejection: same law, other draws
    stats = out["stats"]
    assert ar["stats"]["mean_accepted"] == 1.0 and ar["stats"]["draft_calls"] == 0
    assert stats["mean_accepted"] >= 1.0
    if out["tokens"] == ar["tokens"]:
        assert stats["target_calls"] <= ar["stats"]["target_calls"]
    assert sum(stats["acceptance_histogram"].values()) == stats["target_calls"]
    header, records = read_trace(tmp_path / "t.jsonl")
    assert header.method == method[1] and header.params["gamma"] == int(method[method.index("--gamma") + 1])
    assert len(records) == stats["target_calls"] and sum(r.emitted for r in records) == len(out["tokens"])
    assert sum(r.draft_passes for r in records) == stats["draft_calls"]
    if "--draft" in method:
        assert header.draft["num_hidden_layers"] == 1 and header.params["verify"] == "rejection"
    elif method[1] == "sd":
        assert header.draft["num_hidden_layers"] == int(method[3]) and header.params["verify"] == "match"
    else:
        assert header.draft is None


def test_oracle_check_command(capsys, checkpoints, tmp_path):
    out = generate_json(capsys, checkpoints, "--method", "sd", "--draft-layers", "1", "--temperature", "1",
                        "--seed", "9")
    (tmp_path / "ok.json").write_text(json.dumps(out))
    base = ["oracle", "check", "--model", str(checkpoints / "target.bin"), "--prompt-ids", "1,9,14",
            "--temperature", "1", "--seed", "9"]
    assert main([*base, "--tokens", str(tmp_path / "ok.json")]) == 0
    assert "equal" in capsys.readouterr().out
    bad = out["tokens"][:]
    bad[5] = (bad[5] + 1) % 64
    (tmp_path / "bad.txt").write_text("\n".join(map(str, bad)))
    assert main([*base, "--tokens", str(tmp_path / "bad.txt"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["index"] == 5 and report["got"] == bad[5] and len(report["top5"]) == 5
    assert main([*base[:-2], "--seed", "10", "--tokens", str(tmp_path / "ok.json")]) == 1


@pytest.mark.parametrize("args,needle", [
    (["--method", "sd", "--draft", "{root}/other.bin"], "vocabulary"),
    (["--method", "sd", "--draft-layers", "1", "--gamma", "0"], "--gamma 0"),
    (["--method", "sd", "--draft-layers", "9"], "--draft-layers 9"),
    (["--method", "sd"], "needs a draft"),
    (["--method", "sd", "--draft-layers", "1", "--tree-k", "3", "--gamma", "5"], "exceeds the cache"),
    (["--method", "lookup", "--gamma", "-1"], "--gamma -1"),
    (["--method", "lookup", "--ngram", "0"], "--ngram 0"),
])
def test_generate_bad_input_is_one_line_and_exit_2(capsys, checkpoints, args, needle):
    args = [a.replace("{root}", str(checkpoints)) for a in args]
    assert main(["generate", "--model", str(checkpoints / "target.bin"), "--prompt-ids", "1,9,14", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_oracle_bad_token_file_is_one_line_and_exit_2(capsys, checkpoints, tmp_path):
    (tmp_path / "t.json").write_text('{"ids": [1, 2]}')
    assert main(["oracle", "check", "--model", str(checkpoints / "target.bin"), "--prompt-ids", "1",
                 "--tokens", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--tokens" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("edit,needle", [
    (lambda h, r: (dict(h, version=2), r), "version 2"),
    (lambda h, r: (h, {k: v for k, v in r.items() if k != "accepted"}), "lacks 'accepted'"),
])
def test_traces_of_another_version_or_with_missing_fields_are_refused(capsys, checkpoints, tmp_path, edit,
                                                                      needle):
    generate_json(capsys, checkpoints, "--method", "lookup", "--trace", str(tmp_path / "t.jsonl"))
    header, *records = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    header, record = edit(header, records[1])
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(x) for x in [header, record]) + "\n")
    with pytest.raises(InputError, match=needle):
        read_trace(tmp_path / "t.jsonl")
