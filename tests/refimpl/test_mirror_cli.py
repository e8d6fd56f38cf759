"""`generate --method mirror` on stories15M: ar's tokens (greedy and sampled, with and without
--overlap), a trace that `simulate --trace` replays as mirror, and one-line errors."""
import json

import pytest

from conftest import checkpoint_file, checkpoints_dir
from mirrorstream.cli import main
from refimpl.trace import read_trace

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def models_env(monkeypatch):
    checkpoint_file("stories15M/stories15M.bin")
    monkeypatch.setenv("MIRRORSTREAM_MODELS", str(checkpoints_dir()))


def tokens_of(capsys, *args):
    assert main(["generate", "--model", "stories15M", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)["tokens"]


MIRROR = ["--method", "mirror", "--draft-layers", "2", "--gamma", "3", "--exit-layer", "3", "--kappa", "2"]


@pytest.mark.parametrize("sampling", [[], ["--temperature", "0.8", "--seed", "7"]])
def test_mirror_gives_the_tokens_of_ar_on_stories15m(capsys, tmp_path, sampling):
    prompt = ["--prompt", "Once upon a time", "--max-new-tokens", "40", *sampling]
    expected = tokens_of(capsys, *prompt)
    trace = tmp_path / "mirror.jsonl"
    assert tokens_of(capsys, *prompt, *MIRROR, "--trace", str(trace)) == expected
    header, records = read_trace(trace)
    assert header.method == "mirror" and header.params["exit_layer"] == 3 and header.params["kappa"] == 2
    steps = [r for r in records if not r.prefill]
    assert all(r.branches <= 2 * 4 and r.exit_hit is not None and r.wall_parts for r in steps[:-1])
    assert main(["simulate", "--trace", str(trace), "--methods", "ar,sd,mirror", "--tp", "1", "--draft-tp", "1"]) == 0
    assert "mirror" in capsys.readouterr().out


def test_overlap_gives_the_tokens_of_ar_on_stories15m(capsys):
    prompt = ["--prompt", "Lily", "--max-new-tokens", "30", "--threads", "2"]
    assert tokens_of(capsys, *prompt, *MIRROR, "--overlap") == tokens_of(capsys, *prompt)


def test_a_streaming_draft_gives_the_tokens_of_ar_in_fewer_draft_passes_on_stories15m(capsys, tmp_path):
    """stories15M as its own draft with its shipped streams (3 streams): 4 draft tokens per
    pass, so a gamma-4 rollout takes 1 pass instead of 4; the output is ar's."""
    from refimpl.streams import shipped
    from refimpl.checkpoints import load_model

    streams = str(shipped(load_model(checkpoint_file("stories15M/stories15M.bin")), "streams"))
    prompt = ["--prompt", "Tom and his dog", "--max-new-tokens", "40"]
    config = ["--method", "mirror", "--draft", "stories15M", "--gamma", "4", "--kappa", "2"]
    traces = {}
    for name, extra in (("plain", []), ("streams", ["--draft-streams", streams])):
        traces[name] = tmp_path / f"{name}.jsonl"
        assert tokens_of(capsys, *prompt, *config, *extra, "--trace", str(traces[name])) == tokens_of(capsys, *prompt)
    passes = {name: [r for r in read_trace(path)[1] if not r.prefill and r.draft_passes] for name, path in traces.items()}
    assert all(r.draft_passes == 4 and r.draft_tokens_per_pass == 1 for r in passes["plain"][:-1])
    assert all(r.draft_passes == 1 and r.draft_tokens_per_pass == 4 for r in passes["streams"][:-1])
    assert read_trace(traces["streams"])[0].params["draft_streams"] == streams


@pytest.mark.parametrize("args,needle", [
    (["--exit-layer", "0"], "--exit-layer 0"),
    (["--exit-layer", "6"], "--exit-layer 6"),
    (["--kappa", "0"], "--kappa 0"),
    (["--kappa", "32001"], "--kappa 32001"),
    (["--max-branches", "-2"], "--max-branches -2"),
    (["--overlap", "--threads", "1"], "--overlap needs at least 2 threads"),
    (["--draft", "stories260K"], "vocabulary"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, needle):
    base = ["generate", "--model", "stories15M", "--prompt", "x", "--method", "mirror"]
    draft = [] if "--draft" in args else ["--draft-layers", "2"]
    assert main([*base, *draft, *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_mirror_without_a_draft_is_one_line(capsys):
    assert main(["generate", "--model", "stories15M", "--prompt", "x", "--method", "mirror"]) == 2
    assert "--method mirror needs a draft" in capsys.readouterr().err
