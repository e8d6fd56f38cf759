"""Bad input to `mirrorstream generate` / `oracle check`: one line on stderr naming the
option or file, exit 2, in bounded time and memory. Tiny checkpoints written here, so
nothing skips for lack of the real ones."""
import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc

import pytest

from mirrorstream.cli import main
from refimpl.checkpoints import load_model, save_llama2c
from refimpl.errors import InputError
from refimpl.model import ModelConfig
from refimpl.testing import random_weights
from refimpl.tokenizer import load_tokenizer, save_llama2c_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = ModelConfig(dim=8, hidden_dim=16, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=300, seq_len=64)


def byte_vocabulary(extra: list[bytes]) -> list[bytes]:
    """<unk>, <s>, </s>, the 256 byte pieces, then `extra`."""
    return [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)] + extra


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A models directory: tiny/tiny.bin with a tokenizer.bin of its 300 pieces, and
    big.bin: a tokenizer with more pieces than the model's vocabulary."""
    root = tmp_path_factory.mktemp("models")
    (root / "tiny").mkdir()
    save_llama2c(root / "tiny" / "tiny.bin", CONFIG, random_weights(CONFIG, 3))
    extra = [b" a", b" b", b"ab", b" ab", b"c", b" c"]
    pieces = byte_vocabulary(extra + [bytes([97 + i % 26]) * (2 + i // 26) for i in range(300 - 259 - len(extra))])
    save_llama2c_tokenizer(root / "tiny" / "tokenizer.bin", pieces, [0.0] * 259 + list(range(41)))
    save_llama2c_tokenizer(root / "big.bin", pieces + [b"zz", b"zzz"], [0.0] * 302)
    return root


@pytest.fixture(autouse=True)
def models_env(monkeypatch, root):
    monkeypatch.setenv("MIRRORSTREAM_MODELS", str(root))


def one_line_error(capsys, argv, needle, status=2):
    """Run the CLI in-process; assert exit status, one stderr line containing needle, within 10 s."""
    start = time.perf_counter()
    assert main(argv) == status
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def run_cli(*args, timeout=60):
    """The console script in a subprocess (for cases that hung: a timeout fails the test)."""
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "mirrorstream.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


GEN = ["generate", "--model", "tiny", "--prompt-ids", "1,5"]


# -- options: range-checked before any work ----------------------------------------------------

@pytest.mark.parametrize("method", [["sd", "--draft-layers", "1"], ["mirror", "--draft-layers", "1"], ["lookup"]])
def test_a_huge_gamma_is_refused_at_once(method):
    proc = run_cli(*GEN, "--method", *method, "--gamma", "1000000000")
    assert proc.returncode == 2 and "--gamma 1000000000" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("option,value", [("--gamma", "0"), ("--tree-k", "0"), ("--ngram", "0"),
                                          ("--draft-layers", "0"), ("--threads", "0"),
                                          ("--max-new-tokens", "-1"), ("--kappa", "0"), ("--max-branches", "0"),
                                          ("--exit-layer", "0")])
def test_out_of_range_options_fail_before_the_model_is_read(capsys, option, value):
    method = {"--ngram": ["--method", "lookup"], "--kappa": ["--method", "mirror"]}.get(option, ["--method", "sd"])
    one_line_error(capsys, ["generate", "--model", "/nonexistent/x.bin", "--prompt-ids", "1", *method,
                            option, value], f"{option} {value}")


@pytest.mark.parametrize("value", ["1e-310", "5e-324", "1e-7"])
def test_a_temperature_too_small_to_divide_by_is_refused(capsys, value):
    one_line_error(capsys, [*GEN, "--temperature", value], "--temperature")


@pytest.mark.parametrize("sampling", [[], ["--temperature", "0.9", "--seed", "3"]])
def test_huge_values_that_are_valid_give_a_correct_answer(capsys, sampling):
    argv = [*GEN, "--max-new-tokens", "5", "--json", *sampling]
    assert main(argv) == 0
    expected = json.loads(capsys.readouterr().out)["tokens"]
    huge = "1" + "0" * 30
    for extra in (["--max-new-tokens", huge], ["--method", "lookup", "--ngram", huge], ["--top-k", huge]):
        assert main([*argv, *extra]) == 0
        tokens = json.loads(capsys.readouterr().out)["tokens"]
        assert tokens[:5] == expected


def test_prompt_ids_out_of_range_name_the_option(capsys):
    one_line_error(capsys, ["generate", "--model", "tiny", "--prompt-ids", "1,300"], "--prompt-ids: token id 300")
    one_line_error(capsys, ["generate", "--model", "tiny", "--prompt-ids", "1," + "9" * 30], "--prompt-ids")
    one_line_error(capsys, ["generate", "--model", "tiny", "--prompt-ids=-1"], "--prompt-ids: token id -1")


def test_a_prompt_that_is_not_utf8_is_refused(capsys):
    one_line_error(capsys, ["generate", "--model", "tiny", "--prompt", "ab\udcffc"], "--prompt: not valid UTF-8")


def test_a_huge_prompt_is_refused_before_it_is_encoded(capsys):
    start = time.perf_counter()
    one_line_error(capsys, ["generate", "--model", "tiny", "--prompt", "ab " * 200_000], "sequence length")
    assert time.perf_counter() - start < 5


def test_trace_into_a_missing_directory_fails_before_the_run(capsys, root, monkeypatch):
    ran = []
    monkeypatch.setattr("refimpl.cli.generate", lambda *a, **k: ran.append(1))
    one_line_error(capsys, [*GEN, "--trace", str(root / "absent" / "t.jsonl")], "does not exist")
    one_line_error(capsys, [*GEN, "--trace", str(root)], "is a directory")
    assert not ran


# -- files that are not what they claim ----------------------------------------------------------

@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("option", ["--model", "--tokenizer", "--tokens", "--draft"])
def test_a_fifo_is_refused_not_waited_on(fifo, option):
    if option == "--tokens":
        args = ["oracle", "check", "--model", "tiny", "--prompt-ids", "1", "--tokens", str(fifo)]
    elif option == "--draft":
        args = [*GEN, "--method", "sd", "--draft", str(fifo)]
    else:
        args = ["generate", "--model", "tiny", "--prompt-ids", "1", option, str(fifo)]
    if option == "--model":
        args[2] = str(fifo)
    proc = run_cli(*args, timeout=30)
    assert proc.returncode == 2 and "FIFO" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/null", "directory"])
@pytest.mark.parametrize("option", ["--model", "--tokenizer", "--tokens"])
def test_devices_and_directories_are_refused(capsys, tmp_path, special, option):
    path = str(tmp_path) if special == "directory" else special
    if option == "--tokens":
        argv = ["oracle", "check", "--model", "tiny", "--prompt-ids", "1", "--tokens", path]
    else:
        argv = ["generate", "--model", "tiny", "--prompt-ids", "1", option, path]
    needle = "directory" if special == "directory" else "device"
    one_line_error(capsys, argv, needle)


def test_v1_header_with_a_huge_seq_len_allocates_nothing_big(tmp_path):
    config = ModelConfig(dim=8, hidden_dim=8, n_layers=1, n_heads=1, n_kv_heads=1, vocab_size=16, seq_len=1 << 22)
    save_llama2c(tmp_path / "m.bin", config, random_weights(config, 0), version=1)
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="seq_len=4194304"):
            load_model(tmp_path / "m.bin")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_a_tokenizer_with_more_pieces_than_the_vocabulary_is_refused(capsys, root):
    with pytest.raises(InputError, match="more than 300 pieces"):
        load_tokenizer(root / "big.bin", 300)
    one_line_error(capsys, ["generate", "--model", "tiny", "--tokenizer", str(root / "big.bin"), "--prompt", "ab"],
                   "more than 300 pieces")
    assert load_tokenizer(root / "big.bin").vocab_size == 302   # alone, it is a valid tokenizer


def test_a_tokenizer_with_fewer_pieces_than_the_vocabulary_is_refused(capsys, root, tmp_path):
    pieces = byte_vocabulary([b"a"])
    save_llama2c_tokenizer(tmp_path / "small.bin", pieces, [0.0] * len(pieces))
    one_line_error(capsys, ["generate", "--model", "tiny", "--tokenizer", str(tmp_path / "small.bin"),
                            "--prompt", "ab"], "260 pieces but the model's vocabulary is 300")


# -- the oracle ---------------------------------------------------------------------------------------

ORACLE = ["oracle", "check", "--model", "tiny", "--prompt-ids", "1,5"]


def test_oracle_refuses_a_token_file_of_another_prompt(capsys, tmp_path):
    assert main([*GEN, "--max-new-tokens", "6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (tmp_path / "same.json").write_text(json.dumps(out))
    assert main([*ORACLE, "--tokens", str(tmp_path / "same.json")]) == 0
    assert "equal" in capsys.readouterr().out
    (tmp_path / "other.json").write_text(json.dumps(dict(out, prompt_ids=[1, 6])))
    one_line_error(capsys, [*ORACLE, "--tokens", str(tmp_path / "other.json")], "prompt_ids [1,6] (2 ids) differ")


@pytest.mark.parametrize("content,needle", [("[1, 300]", "token id 300"), ("[-1]", "token id -1"),
                                            ("[" * 100_000, "nested too deeply"), ("\xff", "--tokens"),
                                            ("1\n" * (5 << 20), "larger than")],
                         ids=["id-past-vocab", "negative-id", "deep-nesting", "not-utf8", "10-MiB"])
def test_oracle_bad_token_files_exit_2_never_1(capsys, tmp_path, content, needle):
    (tmp_path / "t").write_bytes(content.encode("latin-1"))
    one_line_error(capsys, [*ORACLE, "--tokens", str(tmp_path / "t")], needle)


def test_an_unexpected_exception_exits_3_in_one_line(capsys, tmp_path, monkeypatch):
    (tmp_path / "t.json").write_text("[5]")

    def broken(*args, **kwargs):
        raise RuntimeError("planted\nsecond line")

    monkeypatch.setattr("refimpl.cli.check", broken)
    err = one_line_error(capsys, [*ORACLE, "--tokens", str(tmp_path / "t.json")], "RuntimeError: planted", 3)
    assert "internal error" in err


# -- argparse errors: one line, exit 2, every subcommand ------------------------------------------------

@pytest.mark.parametrize("argv,prog", [
    (["generate", "--model", "tiny", "--prompt-ids", "1", "--top-k", "abc"], "mirrorstream generate"),
    (["generate", "--model", "tiny"], "mirrorstream generate"),
    (["oracle", "check", "--model", "tiny", "--prompt-ids", "1", "--seed", "x"], "mirrorstream oracle check"),
    (["oracle"], "mirrorstream oracle"),
    (["simulate", "--gamma", "x"], "mirrorstream simulate"),
    (["oracle", "check", "--reference", "r", "--candidate", "c", "--near-tie", "x"], "mirrorstream oracle check"),
    (["hw", "calibrate"], "mirrorstream hw calibrate"),
    (["nonsense"], "mirrorstream"),
])
def test_a_bad_option_is_one_line_not_the_usage(capsys, argv, prog):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"{prog}: error: ") and err.count("\n") == 1, err


def test_a_real_argparse_error_from_the_console_script_is_one_line():
    proc = run_cli("generate", "--model", "tiny", "--prompt-ids", "1", "--gamma", "x")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--gamma" in proc.stderr
    assert "usage" not in proc.stderr


def test_checkpoint_with_a_lying_header_is_refused_by_size(tmp_path):
    good = tmp_path / "good.bin"
    save_llama2c(good, CONFIG, random_weights(CONFIG, 1), version=None)
    data = bytearray(good.read_bytes())
    data[0:28] = struct.pack("<7i", 4096, 11008, 32, 32, 32, 32000, 4096)   # Llama-2-7B's shape
    (tmp_path / "liar.bin").write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="truncated checkpoint"):
            load_model(tmp_path / "liar.bin")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# -- reference files (`oracle check --reference/--candidate`): found by the fuzzer -------------------

def _reference(temperature: float):
    from refimpl.model import Model
    from refimpl.oracle import reference
    from refimpl.sampling import SamplingSettings

    model = Model.from_dense(CONFIG, random_weights(CONFIG, 3))
    return reference(model, [1, 5], SamplingSettings(temperature=temperature, seed=1, ignore_eos=False), 8)


def test_a_candidate_running_past_the_reference_stop_is_described():
    from refimpl.oracle import compare

    ref = dict(_reference(0.0), stop_reason="eos")   # as if the last token were the stop token
    verdict = compare(ref, {"tokens": ref["tokens"] + [7]})
    assert verdict.status == "diverged" and verdict.expected is None and verdict.margin is None
    assert "expected the end, got 7" in verdict.describe()


def test_a_sampled_reference_token_outside_the_top5_is_no_crash():
    from refimpl.oracle import compare

    ref = _reference(1.0)
    ref["top5"][2] = [pair for pair in ref["top5"][2] if pair[0] != ref["tokens"][2]][:4] or [[299, 0.0]]
    wrong = ref["tokens"][:2] + [(ref["tokens"][2] + 1) % 300] + ref["tokens"][3:]
    verdict = compare(ref, {"tokens": wrong})
    assert verdict.status == "diverged" and verdict.index == 2 and verdict.margin is None
    assert "got" in verdict.describe()


@pytest.mark.parametrize("field,value", [("tokens", "x"), ("top5", None), ("id", [1]), ("logprobs", [1]),
                                         ("settings", {"temperature": "hot"}), ("prompt_ids", None)])
def test_malformed_reference_records_are_refused(tmp_path, field, value):
    from refimpl.oracle import check_files

    ref = _reference(0.0)
    (tmp_path / "cand.jsonl").write_text(json.dumps({"id": ref["id"], "tokens": ref["tokens"]}))
    (tmp_path / "ref.jsonl").write_text(json.dumps(dict(ref, **{field: value})))
    with pytest.raises(InputError, match=f"--reference .*ref.jsonl:1: .*{field}"):
        check_files(tmp_path / "ref.jsonl", tmp_path / "cand.jsonl")


def test_candidate_logprobs_too_large_for_a_float_are_refused(tmp_path):
    from refimpl.oracle import check_files

    ref = _reference(0.0)
    (tmp_path / "ref.jsonl").write_text(json.dumps(ref))
    (tmp_path / "cand.jsonl").write_text(json.dumps({"id": ref["id"], "tokens": ref["tokens"],
                                                     "logprobs": [10 ** 400]}))
    with pytest.raises(InputError, match="logprobs must be a list of numbers"):
        check_files(tmp_path / "ref.jsonl", tmp_path / "cand.jsonl")


def test_text_with_lone_surrogates_is_refused_by_both_tokenizers(root):
    from tests.refimpl.test_fuzz_readers import seed_files

    model_file = root / "spm.model"
    model_file.write_bytes(seed_files()["tokenizer.model"])
    for tokenizer in (load_tokenizer(root / "tiny" / "tokenizer.bin"), load_tokenizer(model_file)):
        with pytest.raises(InputError, match="not valid UTF-8"):
            tokenizer.encode("ab\udcff")
        assert tokenizer.decode(tokenizer.encode("ab")).strip() == "ab"


@pytest.mark.parametrize("option", ["--near-tie", "--logprob-tolerance"])
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_reference_check_tolerances_must_be_finite(capsys, tmp_path, option, value):
    one_line_error(capsys, ["oracle", "check", "--reference", str(tmp_path / "r"), "--candidate", str(tmp_path / "c"),
                            option, value], option)
