"""The opt-in MovieLens download, over real HTTP from a server on 127.0.0.1."""
from __future__ import annotations

import functools
import http.server
import threading
import zipfile

import pytest

from recgoat.data import DataError, load_movielens
from tests.conftest import shared_dataset


@pytest.fixture
def http_dir(tmp_path):
    """Serve tmp_path/www over HTTP on 127.0.0.1; yields (folder, base url)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def make_zip(path, files: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"ml-100k/{name}", data)


def test_download_verifies_checksums_and_loads(http_dir, tmp_path):
    src = shared_dataset("ml100k-multimodal") / "ml-100k"
    www, url = http_dir
    make_zip(www / "ml-100k.zip", {n: (src / n).read_bytes() for n in ("u.data", "u.item", "README")})
    target = tmp_path / "data" / "ml-100k"
    d = load_movielens(target, download=True, url=f"{url}/ml-100k.zip")
    assert (d.n_users, d.n_items) == (943, 1682)
    assert sorted(p.name for p in target.iterdir()) == ["README", "u.data", "u.item"]


def test_tampered_archive_is_refused_and_nothing_is_written(http_dir, tmp_path):
    www, url = http_dir
    make_zip(www / "bad.zip", {"u.data": b"1\t1\t5\t0\n", "u.item": b"1|x|||" + b"|0" * 19 + b"\n"})
    target = tmp_path / "data" / "ml-100k"
    with pytest.raises(DataError, match=r"checksum mismatch for u\.data"):
        load_movielens(target, download=True, url=f"{url}/bad.zip")
    assert not (tmp_path / "data").exists()  # checked before anything is written


def test_unreachable_url_is_a_clear_error(http_dir, tmp_path):
    _, url = http_dir
    with pytest.raises(DataError, match=r"cannot download MovieLens-100K from .*/missing\.zip"):
        load_movielens(tmp_path / "x", download=True, url=f"{url}/missing.zip")
