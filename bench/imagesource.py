"""A local HTTP image source for benchmarks and tests: serves one file and counts downloads."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from pathlib import Path

__all__ = ["ImageSource", "make_image"]


def make_image(path: Path, size: int) -> str:
    """Writes ``size`` pseudo-random bytes to ``path``; returns "sha256:HEX"."""
    digest = hashlib.sha256()
    chunk = os.urandom(1 << 20)
    with path.open("wb") as fh:
        written = 0
        while written < size:
            piece = chunk[: min(len(chunk), size - written)]
            fh.write(piece)
            digest.update(piece)
            written += len(piece)
    return "sha256:" + digest.hexdigest()


class ImageSource:
    """Serves files of ``directory`` on 127.0.0.1; ``downloads`` counts completed GETs."""

    def __init__(self, directory: Path) -> None:
        source = self
        self.downloads = 0

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(directory), **kwargs)  # type: ignore[arg-type]

            def do_GET(self) -> None:
                super().do_GET()
                source.downloads += 1

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
