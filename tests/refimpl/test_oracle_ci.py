"""The oracle for other engines' CI: `oracle reference` writes per-prompt references,
`oracle check --reference --candidate` classifies each prompt as equal / near-tie /
diverged (exit 0/1, 2 for bad input), and refimpl.oracle offers the same to pytest."""
import json

import numpy as np
import pytest

from mirrorstream.cli import main
from refimpl.checkpoints import save_llama2c
from refimpl.errors import InputError
from refimpl.model import Model, ModelConfig
from refimpl.oracle import assert_matches_reference, check_files, compare, reference
from refimpl.sampling import SamplingSettings
from refimpl.testing import decode, random_weights

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = ModelConfig(dim=24, hidden_dim=40, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, seq_len=96,
                     shared_classifier=False)
PROMPTS = [[1, 9, 14], [1, 30], [1, 5, 6, 7, 8]]


@pytest.fixture(scope="module")
def model():
    return Model.from_dense(CONFIG, random_weights(CONFIG, 8, logit_scale=1.0))


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def files(model, tmp_path):
    refs = [reference(model, p, SamplingSettings(), 24, f"p{i}") for i, p in enumerate(PROMPTS)]
    return write_jsonl(tmp_path / "ref.jsonl", refs), refs


def test_reference_logits_are_those_of_decoding(model):
    ref = reference(model, PROMPTS[0], SamplingSettings(), 20)
    ids, cache = list(PROMPTS[0]), model.new_cache()
    row = model.forward(ids, np.arange(len(ids)), cache)[-1]
    for index, token in enumerate(ref["tokens"]):
        order = np.argsort(-row, kind="stable")[:5]
        assert ref["top5"][index] == [[int(t), float(row[t])] for t in order]
        log_softmax = row.astype(np.float64) - row.max() - np.log(np.exp(row.astype(np.float64) - row.max()).sum())
        assert abs(ref["logprobs"][index] - log_softmax[token]) < 1e-12
        assert token == order[0]
        row = model.forward([token], [len(ids) + index], cache)[0]


def test_another_method_is_equal(model, files, tmp_path):
    ref_path, refs = files
    theirs = [{"id": r["id"], "tokens": decode("sd", model, r["prompt_ids"], SamplingSettings(), 24,
                                               draft=model.first_layers(1), gamma=3).tokens} for r in refs]
    verdicts = assert_matches_reference(ref_path, write_jsonl(tmp_path / "theirs.jsonl", theirs))
    assert [v.status for v in verdicts] == ["equal"] * 3 and verdicts[0].compared == 24


def test_a_divergence_names_position_tokens_top5_and_margin(files, tmp_path):
    ref_path, refs = files
    wrong = list(refs[1]["tokens"])
    wrong[5] = refs[1]["top5"][5][3][0]  # the 4th most likely token there
    theirs = write_jsonl(tmp_path / "t.jsonl", [{"id": r["id"], "tokens": r["tokens"]} for r in refs[:1]]
                         + [{"id": "p1", "tokens": wrong}, {"id": "p2", "tokens": refs[2]["tokens"]}])
    verdicts = check_files(ref_path, theirs, near_tie=0.0)
    v = verdicts[1]
    assert (v.status, v.index, v.position, v.expected, v.got) == ("diverged", 5, 7, refs[1]["tokens"][5], wrong[5])
    assert v.margin == refs[1]["top5"][5][0][1] - refs[1]["top5"][5][3][1] > 0
    assert "position 7" in v.describe() and "margin" in v.describe()
    with pytest.raises(AssertionError, match="p1: diverged"):
        assert_matches_reference(ref_path, theirs)


def test_near_tie_rule_is_the_logit_margin(files, tmp_path):
    """At the position with the smallest top-2 margin, taking the second token is a near-tie
    exactly when the margin is at most --near-tie."""
    ref_path, refs = files
    ref = refs[0]
    margins = [top[0][1] - top[1][1] for top in ref["top5"]]
    at = int(np.argmin(margins))
    theirs = ref["tokens"][:at] + [ref["top5"][at][1][0]]
    candidate = {"tokens": theirs}
    assert compare(ref, candidate, near_tie=margins[at]).status == "near-tie"
    assert compare(ref, candidate, near_tie=np.nextafter(margins[at], 0)).status == "diverged"
    sampled = dict(ref, settings=dict(ref["settings"], temperature=0.8))
    assert compare(sampled, candidate, near_tie=10.0).status == "diverged"  # the rule is for greedy runs


def test_stop_tokens_and_lengths(model):
    ref = reference(model, [1, 9, 14], SamplingSettings(), 24)
    ended = dict(ref, stop_reason="eos", tokens=ref["tokens"][:10] + [2])
    assert compare(ended, {"tokens": ref["tokens"][:10]}).status == "equal"      # stop token left out
    assert compare(ended, {"tokens": ref["tokens"][:10] + [2]}).status == "equal"
    longer = compare(ended, {"tokens": ref["tokens"][:10] + [2, 5]})
    assert (longer.status, longer.index, longer.expected, longer.got) == ("diverged", 11, None, 5)
    short = compare(ref, {"tokens": ref["tokens"][:7]})
    assert (short.status, short.index, short.got) == ("diverged", 7, None)
    assert compare(ref, {"tokens": ref["tokens"] + [3, 4]}).status == "equal"    # a longer budget is fine


def test_candidate_logprobs_are_compared(files):
    _, refs = files
    ref = refs[0]
    close = [lp + 1e-5 for lp in ref["logprobs"]]
    assert compare(ref, {"tokens": ref["tokens"], "logprobs": close}).logprob_ok
    far = list(close)
    far[3] += 0.05
    v = compare(ref, {"tokens": ref["tokens"], "logprobs": far})
    assert not v.logprob_ok and not v.passed and abs(v.logprob_error - 0.05) < 1e-3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    save_llama2c(root / "m.bin", CONFIG, random_weights(CONFIG, 8, logit_scale=1.0))
    return root / "m.bin"


def test_cli_reference_then_check(checkpoint, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": "a", "prompt_ids": [1, 9, 14]},
                                                       {"id": "b", "prompt_ids": [1, 30], "max_new_tokens": 5}])
    out = tmp_path / "ref.jsonl"
    assert main(["oracle", "reference", "--model", str(checkpoint), "--prompts", str(prompts),
                 "--out", str(out), "--max-new-tokens", "12"]) == 0
    refs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r["tokens"]) for r in refs] == [12, 5] and "tokens/s" in capsys.readouterr().err
    theirs = write_jsonl(tmp_path / "t.jsonl", [{"id": r["id"], "tokens": r["tokens"]} for r in refs])
    assert main(["oracle", "check", "--reference", str(out), "--candidate", str(theirs)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].startswith("oracle: PASS: 2 prompts, 2 equal")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "tokens": refs[0]["tokens"][:3] + [63]},
                                               {"id": "b", "tokens": refs[1]["tokens"]}])
    assert main(["oracle", "check", "--reference", str(out), "--candidate", str(bad), "--json",
                 "--near-tie", "0"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is False and report["prompts"][0]["index"] == 3 and report["prompts"][1]["passed"]


@pytest.mark.parametrize("content,message", [
    ('{"id": "a", "tokens": [1]}\n[1, 2]\n', "t.jsonl:2: expected a JSON object"),
    ('{"id": "a", "tokens": [1]}\n{"id": \n', "t.jsonl:2: not valid JSON"),
    ('{"id": "p0", "tokens": [-1]}\n', "t.jsonl:1: tokens must be a list"),
    ('', "t.jsonl: no records"),
])
def test_bad_candidate_files_exit_2_naming_file_and_line(files, tmp_path, capsys, content, message):
    ref_path, _ = files
    (tmp_path / "t.jsonl").write_text(content)
    assert main(["oracle", "check", "--reference", str(ref_path), "--candidate", str(tmp_path / "t.jsonl")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1


def test_bad_prompts_and_references_exit_2(checkpoint, tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text('{"prompt_ids": [1], "prompt": "x"}\n')
    assert main(["oracle", "reference", "--model", str(checkpoint), "--prompts", str(tmp_path / "p.jsonl"),
                 "--out", str(tmp_path / "r.jsonl")]) == 2
    assert "p.jsonl:1: give exactly one of" in capsys.readouterr().err
    (tmp_path / "r.jsonl").write_text('{"id": "x", "tokens": [1]}\n')
    assert main(["oracle", "check", "--reference", str(tmp_path / "r.jsonl"), "--candidate",
                 str(tmp_path / "r.jsonl")]) == 2
    assert "r.jsonl:1: missing 'prompt_ids'" in capsys.readouterr().err
    assert main(["oracle", "check", "--reference", str(tmp_path / "r.jsonl")]) == 2
    assert "go together" in capsys.readouterr().err
