"""`mirrorstream pull NAME`: download a known public checkpoint into the models directory,
and `mirrorstream models`: list what is installed there.

The models directory is $MIRRORSTREAM_MODELS, else `models` under the user's data
directory (refimpl.checkpoints.models_dir). Each file is fetched to `FILE.partial`
beside its final name, resumed from where it stopped with an HTTP Range request,
checked against its published sha256, and only then renamed: a failed or corrupt
download never sits under the final name. `--mirror URL` fetches every file from
URL/NAME/FILE instead (the layout of ../shared/checkpoints), for machines without a
route to the hub.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from refimpl.errors import InputError

TINYLLAMAS = "https://huggingface.co/karpathy/tinyllamas/resolve/main"
LLAMA2C = "https://github.com/karpathy/llama2.c/raw/master"
LLAMA_CPP = "https://github.com/ggml-org/llama.cpp/raw/master/models"
CHUNK = 1 << 20
TIMEOUT_S = 30


@dataclass(frozen=True)
class RemoteFile:
    name: str      # file name inside the model's folder
    url: str       # canonical location
    sha256: str
    size: int | None = None


# Canonical locations and sha256 from ../shared/checkpoints/README.md.
LLAMA2_TOKENIZER = RemoteFile("tokenizer.model", f"{LLAMA2C}/tokenizer.model",
                              "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347", 499_723)
LLAMA2_TOKENIZER_BIN = RemoteFile("tokenizer.bin", f"{LLAMA2C}/tokenizer.bin",
                                  "50a52ef822ee9e83de5ce9d0be0a025a773d019437f58b5ff9dcafb063ece361", 433_869)
KNOWN: dict[str, tuple[RemoteFile, ...]] = {
    "stories15M": (RemoteFile("stories15M.bin", f"{TINYLLAMAS}/stories15M.bin",
                              "cd590644d963867a2b6e5a1107f51fad663c41d79c149fbecbbb1f95fa81f49a", 60_816_028),
                   LLAMA2_TOKENIZER, LLAMA2_TOKENIZER_BIN),
    "stories42M": (RemoteFile("stories42M.bin", f"{TINYLLAMAS}/stories42M.bin",
                              "9f65a1000e17d0bc167dd6332e0ce5119a0222a3d920cead5bce413bfab2ee7b"),
                   LLAMA2_TOKENIZER, LLAMA2_TOKENIZER_BIN),
    "stories110M": (RemoteFile("stories110M.bin", f"{TINYLLAMAS}/stories110M.bin",
                               "515267168726a1ed1317a64a408492e6af3b67c1f71c5bd98c01d9d721803a24"),
                    LLAMA2_TOKENIZER, LLAMA2_TOKENIZER_BIN),
    "stories260K": (RemoteFile("stories260K.bin", f"{TINYLLAMAS}/stories260K/stories260K.bin",
                               "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696", 1_056_540),
                    RemoteFile("tok512.bin", f"{TINYLLAMAS}/stories260K/tok512.bin",
                               "037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312", 6_227)),
    "tokenizers": (RemoteFile("ggml-vocab-llama-spm.gguf", f"{LLAMA_CPP}/ggml-vocab-llama-spm.gguf",
                              "16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69", 723_869),
                   RemoteFile("ggml-vocab-gpt-2.gguf", f"{LLAMA_CPP}/ggml-vocab-gpt-2.gguf",
                              "cedc56ca6e2e89f63e781696d1fd76b4b1d49e6720dee86463e915f6e90016ac", 1_766_807)),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class Progress:
    """A one-line progress bar on a stream (redrawn at most 10 times a second)."""

    def __init__(self, label: str, total: int | None, stream=None):
        self.label, self.total, self.stream = label, total, stream or sys.stderr
        self.last = 0.0

    def show(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < 0.1:
            return
        self.last = now
        if self.total:
            filled = int(30 * done / self.total)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {100 * done / self.total:5.1f}%"
        else:
            bar = ""
        self.stream.write(f"\r{self.label} {bar} {done / 1e6:.1f}/{(self.total or done) / 1e6:.1f} MB")
        if final:
            self.stream.write("\n")
        self.stream.flush()


def download(url: str, final: Path, sha256: str, label: str, stream=None) -> str:
    """Fetch url to `final` through `final.partial` (resumed if present); returns "downloaded"."""
    partial = final.with_name(final.name + ".partial")
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is complete already
            response = None
        else:
            raise InputError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(f"{url}: cannot connect ({reason}); offline? download it by hand to {final}, "
                         f"or give --mirror URL of a server with the same files") from None
    if response is not None:
        with response:
            resumed = response.status == 206
            total = response.headers.get("Content-Length")
            total = int(total) + (have if resumed else 0) if total is not None else None
            progress = Progress(label, total, stream)
            done = have if resumed else 0
            try:
                with open(partial, "ab" if resumed else "wb") as f:
                    while True:
                        block = response.read(CHUNK)
                        if not block:
                            break
                        f.write(block)
                        done += len(block)
                        progress.show(done)
            except (OSError, urllib.error.URLError) as exc:
                raise InputError(f"{url}: download interrupted after {done} bytes ({exc}); run the same "
                                 f"command again to resume") from None
            progress.show(done, final=True)
            if total is not None and done < total:
                raise InputError(f"{url}: download interrupted after {done} of {total} bytes; run the same "
                                 f"command again to resume")
    got = sha256_of(partial)
    if got != sha256:
        partial.unlink()
        raise InputError(f"{url}: sha256 mismatch: expected {sha256}, got {got}; the download was removed")
    os.replace(partial, final)
    return "downloaded"


def pull(name: str, root: Path, mirror: str | None = None, stream=None) -> list[tuple[Path, str]]:
    """Install model `name` into root/name; [(file, "downloaded" | "already installed")]."""
    if name not in KNOWN:
        raise InputError(f"pull {name}: unknown model; known: {', '.join(KNOWN)}")
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for remote in KNOWN[name]:
        final = folder / remote.name
        if final.is_file() and sha256_of(final) == remote.sha256:
            done.append((final, "already installed"))
            continue
        if final.is_file():
            raise InputError(f"{final}: exists with another sha256 than {remote.url}'s {remote.sha256}; "
                             f"remove it to download again")
        url = f"{mirror.rstrip('/')}/{name}/{remote.name}" if mirror else remote.url
        done.append((final, download(url, final, remote.sha256, remote.name, stream)))
    return done


def register(subparsers) -> None:
    p = subparsers.add_parser("pull", help="download a known public checkpoint into the models directory",
                              description="Download NAME (" + ", ".join(KNOWN) + ") with resume and sha256 "
                                          "verification into $MIRRORSTREAM_MODELS, else the user's data directory.")
    p.add_argument("name", metavar="NAME", help="one of: " + ", ".join(KNOWN))
    p.add_argument("--mirror", metavar="URL", help="fetch URL/NAME/FILE instead of the canonical locations")
    p.set_defaults(func=run_pull)
    m = subparsers.add_parser("models", help="list the models installed in the models directory")
    m.set_defaults(func=run_models)


def run_pull(args) -> int:
    from refimpl.checkpoints import models_dir

    root = models_dir()
    for path, what in pull(args.name, root, args.mirror):
        print(f"{path}: {what}")
    return 0


def run_models(args) -> int:
    from refimpl.checkpoints import find_tokenizer, installed_models, models_dir

    root = models_dir()
    models = installed_models(root)
    print(f"models directory: {root}" + ("" if models else " (no models; `mirrorstream pull NAME` installs one)"))
    for name, path in models:
        files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        tokenizer = find_tokenizer(path)
        print(f"{name}\t{path.name}\t{size / 1e6:.1f} MB\ttokenizer: {tokenizer.name if tokenizer else 'none'}")
    return 0
