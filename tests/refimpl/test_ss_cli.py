"""`generate --method ss|medusa` and `train-streams`/`train-heads` end to end on a tiny
checkpoint: ar's tokens, a trained file that loads, resume, and bad files or options as one
line with exit status 2."""
import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from mirrorstream.cli import main
from refimpl.checkpoints import load_model, save_llama2c
from refimpl.decoding.medusa import random_heads, save_heads
from refimpl.model import ModelConfig
from refimpl.streams import load_streams, model_identity, random_streams, save_streams
from refimpl.testing import random_weights

CONFIG = ModelConfig(dim=24, hidden_dim=40, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=30, seq_len=64,
                     shared_classifier=False)


@pytest.fixture
def files(tmp_path):
    """A tiny checkpoint, streams and heads trained for it, and a second model's streams."""
    model_path = tmp_path / "tiny.bin"
    save_llama2c(model_path, CONFIG, random_weights(CONFIG, 11))
    model = load_model(model_path)
    streams = random_streams(model, 3, 2, 4, scale=0.5)
    streams.identity = model_identity(model)
    save_streams(tmp_path / "ss.safetensors", streams)
    heads = random_heads(model, 2, 1)
    heads.identity = model_identity(model)
    save_heads(tmp_path / "heads.safetensors", heads)
    other_path = tmp_path / "other.bin"
    save_llama2c(other_path, CONFIG, random_weights(CONFIG, 12))
    other = random_streams(model, 3, 2, 4)
    other.identity = model_identity(load_model(other_path))
    save_streams(tmp_path / "other.safetensors", other)
    return tmp_path


def generate_json(capsys, *args):
    assert main(["generate", "--prompt-ids", "4,5,7", "--max-new-tokens", "30", "--threads", "1", "--json",
                 *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("extra", [["--method", "ss", "--streams", "{d}/ss.safetensors"],
                                   ["--method", "ss", "--streams", "{d}/ss.safetensors", "--tree-k", "2",
                                    "--schedule", "fused", "--prune-threshold", "0.05", "--temperature", "0.8"],
                                   ["--method", "medusa", "--heads", "{d}/heads.safetensors", "--tree-k", "2"]])
def test_generate_ss_and_medusa_give_ar_tokens(capsys, files, extra):
    extra = [e.format(d=files) for e in extra]
    sampling = ["--temperature", "0.8"] if "--temperature" in extra else []
    ar = generate_json(capsys, "--model", str(files / "tiny.bin"), *sampling)
    got = generate_json(capsys, "--model", str(files / "tiny.bin"), *extra)
    assert got["tokens"] == ar["tokens"]


def bad_files(d):
    save_file({"embeddings": np.zeros((3, 24), np.float32)}, str(d / "nometa.safetensors"))
    (d / "trunc.safetensors").write_bytes((d / "ss.safetensors").read_bytes()[:-30])
    (d / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    model = load_model(d / "tiny.bin")
    wide = random_streams(model, 3, 2, 0)
    wide.embeddings = np.zeros((3, 32), np.float32)
    wide.identity = model_identity(model)
    save_streams(d / "wide.safetensors", wide)


@pytest.mark.parametrize("args,needle", [
    (["--streams", "{d}/other.safetensors"], "another model"),
    (["--streams", "{d}/nometa.safetensors"], "metadata"),
    (["--streams", "{d}/trunc.safetensors"], "trunc.safetensors"),
    (["--streams", "{d}/junk.safetensors"], "junk.safetensors"),
    (["--streams", "{d}/wide.safetensors"], "hidden size 24"),
    (["--streams", "{d}/missing.safetensors"], "missing.safetensors"),
    (["--streams", "{d}/ss.safetensors", "--tree-k", "0"], "--tree-k 0"),
    (["--streams", "{d}/ss.safetensors", "--gamma", "9"], "--gamma 9"),
    (["--streams", "{d}/ss.safetensors", "--prune-threshold", "1.5"], "--prune-threshold 1.5"),
    ([], "no shipped streams"),
])
def test_bad_streams_and_options_are_one_line_exit_2(capsys, files, args, needle):
    bad_files(files)
    args = [a.format(d=files) for a in args]
    assert main(["generate", "--model", str(files / "tiny.bin"), "--prompt-ids", "4,5", "--method", "ss",
                 *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_train_streams_writes_a_loadable_file_and_resumes(capsys, files):
    out = files / "trained.safetensors"
    args = ["train-streams", "--model", str(files / "tiny.bin"), "--streams", "2", "--stream-layers", "1",
            "--steps", "4", "--sequences", "3", "--seq-len", "16", "--batch", "2", "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    streams = load_streams(out, load_model(files / "tiny.bin"))
    assert streams.gamma == 2 and streams.n_layers == 1
    assert main([*args[:-6], "--steps", "6", "--resume", "--threads", "1", "--out", str(out)]) == 0
    assert main(["train-heads", "--model", str(files / "tiny.bin"), "--heads", "2", "--steps", "3",
                 "--sequences", "2", "--seq-len", "16", "--threads", "1", "--out", str(files / "h2.safetensors")]) == 0
    assert generate_json(capsys, "--model", str(files / "tiny.bin"), "--method", "medusa",
                         "--heads", str(files / "h2.safetensors"))["tokens"]
    capsys.readouterr()
    assert main(["train-streams", "--model", str(files / "tiny.bin"), "--steps", "0", "--out", str(out)]) == 2
    assert "--steps 0" in capsys.readouterr().err


def test_trace_records_the_stream_rows_as_a_draft_pass_of_the_last_layers(capsys, files):
    from refimpl.trace import read_trace

    traces = {}
    for schedule in ("deferred", "fused"):
        traces[schedule] = path = files / f"{schedule}.jsonl"
        generate_json(capsys, "--model", str(files / "tiny.bin"), "--method", "ss", "--streams",
                      str(files / "ss.safetensors"), "--schedule", schedule, "--trace", str(path))
        header, records = read_trace(path)
        assert header.method == "ss" and header.params["stream_layers"] == 2 and header.params["gamma"] == 3
        assert header.params["schedule"] == schedule and header.draft["num_hidden_layers"] == 2
        steps = [r for r in records if not r.prefill]
        assert steps and all(r.draft_passes == 1 for r in steps)
        assert all(r.target_tokens == r.proposed + 1 for r in steps)
        if schedule == "deferred":       # the accepted node's 3 streams
            assert all(r.draft_tokens_per_pass == 3 for r in steps)
        else:                            # every node of the pass before carried its 3 streams (prefill: its last row)
            before = [1] + [r.target_tokens for r in steps[:-1]]
            assert [r.draft_tokens_per_pass for r in steps] == [3 * n for n in before]
    default = files / "default.jsonl"
    generate_json(capsys, "--model", str(files / "tiny.bin"), "--method", "ss", "--streams",
                  str(files / "ss.safetensors"), "--trace", str(default))
    assert read_trace(default)[0].params["schedule"] == "fused"


def test_streams_trained_for_a_cut_draft_drive_mirror_and_fit_only_that_draft(capsys, files):
    """train-streams --layers K writes streams for the target's first K layers: mirror with
    --draft-layers K --draft-streams gives ar's tokens with several draft tokens per pass;
    the same file for another cut, or the target's own streams for a cut, is one line, exit 2."""
    out = files / "cut.safetensors"
    assert main(["train-streams", "--model", str(files / "tiny.bin"), "--layers", "2", "--streams", "2",
                 "--stream-layers", "1", "--steps", "3", "--sequences", "2", "--seq-len", "16", "--batch", "2",
                 "--threads", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    model = str(files / "tiny.bin")
    ar = generate_json(capsys, "--model", model)["tokens"]
    trace = files / "mirror.jsonl"
    got = generate_json(capsys, "--model", model, "--method", "mirror", "--draft-layers", "2", "--draft-streams",
                        str(out), "--gamma", "3", "--kappa", "2", "--trace", str(trace))
    assert got["tokens"] == ar
    records = [json.loads(line) for line in trace.read_text().splitlines()[2:]]
    assert records and all(r["draft_tokens_per_pass"] in (0, 3) for r in records)
    assert any(r["draft_tokens_per_pass"] == 3 for r in records)
    for args, needle in ([["--draft-layers", "3", "--draft-streams", str(out)], "n_layers=2, this one has 3"],
                         [["--draft-layers", "2", "--draft-streams", str(files / "ss.safetensors")],
                          "the model has 2 layers"],
                         [["--draft", model, "--draft-streams", str(files / "other.safetensors")], "another model"]):
        assert main(["generate", "--model", model, "--prompt-ids", "4,5", "--method", "mirror", *args]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    assert main(["train-streams", "--model", model, "--layers", "1", "--out", str(out)]) == 2
    assert "--layers 1" in capsys.readouterr().err
