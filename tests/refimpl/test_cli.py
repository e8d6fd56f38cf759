"""`mirrorstream generate` end to end: streamed text, --json, threads, and one-line errors."""
import json
import os
import subprocess
import sys

import pytest

from conftest import checkpoint_file, checkpoints_dir
from mirrorstream.cli import main


@pytest.fixture(autouse=True)
def models_env(request, monkeypatch):
    if request.node.get_closest_marker("needs_no_checkpoint") is None:
        checkpoint_file("stories15M/stories15M.bin")
    monkeypatch.setenv("MIRRORSTREAM_MODELS", str(checkpoints_dir()))


def run_json(capsys, *args):
    assert main(["generate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_output_shape_and_greedy_story(capsys):
    out = run_json(capsys, "--model", "stories15M", "--prompt", "Once upon a time", "--max-new-tokens", "12")
    assert out["prompt_ids"][:1] == [1] and len(out["tokens"]) == 12
    assert out["text"].startswith(", there was")
    stats = out["stats"]
    assert stats["target_calls"] == 12 and stats["tokens_per_s"] > 0 and stats["weight_gb_per_s"] > 0


def test_sampling_is_reproducible_and_thread_independent(capsys):
    args = ["--model", "stories15M", "--prompt-ids", "1,9038", "--max-new-tokens", "20",
            "--temperature", "0.9", "--top-p", "0.95", "--seed", "42"]
    one = run_json(capsys, *args, "--threads", "1")["tokens"]
    two = run_json(capsys, *args, "--threads", "2")["tokens"]
    other_seed = run_json(capsys, *args[:-1], "43", "--threads", "1")["tokens"]
    assert one == two and one != other_seed


def test_streams_text_then_a_stats_line(capsys):
    assert main(["generate", "--model", "stories15M", "--prompt", "Lily", "--max-new-tokens", "8"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("Lily") and len(captured.out.split()) >= 4
    assert "tokens/s" in captured.err and "target passes" in captured.err


def test_stories260k_with_its_own_tokenizer(capsys):
    out = run_json(capsys, "--model", "stories260K", "--prompt", "Once", "--max-new-tokens", "10")
    assert len(out["tokens"]) == 10 and max(out["tokens"]) < 512


@pytest.mark.parametrize("args,needle", [
    (["--model", "stories15M", "--prompt", "x", "--temperature", "-1"], "--temperature"),
    (["--model", "stories15M", "--prompt", "x", "--top-p", "1.5"], "--top-p"),
    (["--model", "stories15M", "--prompt-ids", "1,32000"], "token id 32000"),
    (["--model", "stories15M", "--prompt-ids", "1,a"], "--prompt-ids"),
    (["--model", "stories15M", "--prompt-ids", ",".join(["1"] * 300)], "sequence length"),
    (["--model", "stories15M", "--prompt", "x", "--max-new-tokens", "-3"], "--max-new-tokens"),
    (["--model", "stories15M", "--prompt", "x", "--threads", "0"], "--threads"),
    (["--model", "/nonexistent/m.bin", "--prompt", "x"], "not found"),
    (["--model", "stories15M", "--tokenizer", str(checkpoints_dir() / "stories260K/tok512.bin"), "--prompt", "x"],
     "512 pieces"),
    (["--model", "stories260K", "--tokenizer", str(checkpoints_dir() / "stories15M/tokenizer.bin"), "--prompt", "x"],
     "more than 512 pieces"),
    (["--model", "stories260K", "--tokenizer", str(checkpoints_dir() / "stories15M/tokenizer.model"), "--prompt", "x"],
     "32000 pieces"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, needle):
    assert main(["generate", *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.needs_no_checkpoint
def test_console_script_exit_status_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00" * 100)
    proc = subprocess.run([sys.executable, "-m", "mirrorstream.cli", "generate", "--model", str(bad),
                           "--prompt-ids", "1"], capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and str(bad) in proc.stderr
