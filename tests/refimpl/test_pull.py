"""`mirrorstream pull` and `mirrorstream models` against a local HTTP server on 127.0.0.1
(no other network): resume, sha256 verification, no half-written file under the final name."""
import hashlib
import http.server
import threading

import pytest

from mirrorstream.cli import main
from refimpl import pull as pull_module
from refimpl.checkpoints import models_dir, save_llama2c
from refimpl.errors import InputError
from refimpl.model import ModelConfig
from refimpl.pull import RemoteFile, pull
from refimpl.testing import random_weights


class Server:
    """Serves `files` {path: bytes} with Range support; `cut_after` drops the connection
    after that many body bytes of the next response (a failed download)."""

    def __init__(self, files):
        self.files, self.cut_after, self.requests = files, None, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.cut_after is not None:
                    payload, server.cut_after = payload[:server.cut_after], None
                    self.wfile.write(payload)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


CONFIG = ModelConfig(dim=16, hidden_dim=24, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=40, seq_len=16)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A known model "tiny" whose canonical files live on a local server."""
    save_llama2c(tmp_path / "tiny.bin", CONFIG, random_weights(CONFIG, 1))
    model = (tmp_path / "tiny.bin").read_bytes()
    vocab = b"vocabulary bytes " * 100
    files = {"/hub/tiny.bin": model, "/hub/tok40.bin": vocab}
    with Server(files) as server:
        known = (RemoteFile("tiny.bin", f"{server.url}/hub/tiny.bin", hashlib.sha256(model).hexdigest()),
                 RemoteFile("tok40.bin", f"{server.url}/hub/tok40.bin", hashlib.sha256(vocab).hexdigest()))
        monkeypatch.setitem(pull_module.KNOWN, "tiny", known)
        monkeypatch.setattr(pull_module, "CHUNK", 4096)
        yield server, tmp_path / "models", model


def test_pull_installs_verifies_and_skips_what_is_there(tiny, capsys):
    server, root, model = tiny
    result = pull("tiny", root)
    assert [what for _, what in result] == ["downloaded", "downloaded"]
    assert (root / "tiny" / "tiny.bin").read_bytes() == model
    assert "100.0%" in capsys.readouterr().err  # the progress bar
    assert [what for _, what in pull("tiny", root)] == ["already installed"] * 2
    assert len(server.requests) == 2


def test_an_interrupted_download_resumes_and_never_sits_under_the_final_name(tiny):
    server, root, model = tiny
    server.cut_after = 5000
    with pytest.raises(InputError, match="interrupted after 5000 .*run the same command again"):
        pull("tiny", root)
    assert not (root / "tiny" / "tiny.bin").exists()
    assert (root / "tiny" / "tiny.bin.partial").stat().st_size == 5000
    pull("tiny", root)
    assert server.requests[-2] == ("/hub/tiny.bin", "bytes=5000-")
    assert (root / "tiny" / "tiny.bin").read_bytes() == model
    assert not (root / "tiny" / "tiny.bin.partial").exists()


def test_a_sha256_mismatch_removes_the_download(tiny):
    server, root, model = tiny
    server.files["/hub/tiny.bin"] = model[:-1] + b"\x00"
    with pytest.raises(InputError, match="tiny.bin: sha256 mismatch: expected"):
        pull("tiny", root)
    assert not (root / "tiny" / "tiny.bin").exists() and not (root / "tiny" / "tiny.bin.partial").exists()


def test_offline_and_missing_files_say_what_to_do(tiny, monkeypatch):
    server, root, _ = tiny
    with pytest.raises(InputError, match="HTTP 404"):
        pull("tiny", root, mirror=server.url + "/elsewhere")
    with pytest.raises(InputError, match="unknown model; known: .*stories15M"):
        pull("gpt-5", root)
    dead = (RemoteFile("x.bin", "http://127.0.0.1:9/x.bin", "0" * 64),)  # discard port: nothing listens
    monkeypatch.setitem(pull_module.KNOWN, "dead", dead)
    with pytest.raises(InputError, match="cannot connect .*offline\\? download it by hand to .*--mirror"):
        pull("dead", root)


def test_cli_pull_from_a_mirror_of_the_real_files_then_models_lists_it(tmp_path, monkeypatch, capsys):
    """stories260K through a mirror with ../shared/checkpoints' layout, verified against the real sha256."""
    from conftest import checkpoint_file

    files = {f"/mirror/stories260K/{name}": checkpoint_file(f"stories260K/{name}").read_bytes()
             for name in ("stories260K.bin", "tok512.bin")}
    monkeypatch.setenv("MIRRORSTREAM_MODELS", str(tmp_path / "models"))
    with Server(files) as server:
        assert main(["pull", "stories260K", "--mirror", server.url + "/mirror"]) == 0
    assert "downloaded" in capsys.readouterr().out
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "stories260K\tstories260K.bin\t1.1 MB\ttokenizer: tok512.bin" in listing
    assert main(["generate", "--model", "stories260K", "--prompt", "Once", "--max-new-tokens", "4"]) == 0


def test_cli_errors_exit_2_in_one_line(tiny, monkeypatch, capsys):
    server, root, model = tiny
    monkeypatch.setenv("MIRRORSTREAM_MODELS", str(root))
    server.files["/hub/tiny.bin"] = b"wrong"
    assert main(["pull", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and err.count("\n") == 2  # the finished progress line, then the error


def test_default_models_directory_is_under_the_user_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("MIRRORSTREAM_MODELS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert models_dir() == tmp_path / "data" / "mirrorstream" / "models"
