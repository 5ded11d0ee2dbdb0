"""The bundled offline example (``warta --example``).

``examples/site/`` holds sample outlets (Indonesian and English) as static files with ``http://warta-example.invalid`` where
the server address goes. ``serve_example()`` serves them on loopback and yields a feeds file for them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from warta.pipeline.loopback import LoopbackServer, Route

SITE = Path(__file__).resolve().parents[1] / "examples" / "site"
EXAMPLE_PORT = 8737
CONTENT_TYPES = {".xml": "application/rss+xml; charset=utf-8", ".atom": "application/atom+xml; charset=utf-8",
                 ".html": "text/html; charset=utf-8", ".txt": "text/plain; charset=utf-8"}


def site_routes(base: str, site: Path = SITE) -> dict[str, Route]:
    routes = {}
    for f in sorted(site.rglob("*")):
        if f.is_file() and f.suffix in CONTENT_TYPES and f.name != "feeds.yaml":
            body = f.read_text(encoding="utf-8").replace("http://warta-example.invalid", base)
            routes["/" + f.relative_to(site).as_posix()] = Route(body, CONTENT_TYPES[f.suffix])
    return routes


@contextmanager
def serve_example(site: Path = SITE) -> Iterator[tuple[Path, dict]]:
    """Serve the sample outlets; yield (feeds file, setting overrides suited to a loopback demo)."""
    try:  # a fixed port keeps the example's URLs stable from run to run
        server = LoopbackServer(port=EXAMPLE_PORT)
    except OSError:
        server = LoopbackServer()
    with server:
        server.routes.update(site_routes(server.base, site))
        spec = yaml.safe_load((site / "feeds.yaml").read_text(encoding="utf-8"))
        for feed in spec["feeds"]:
            feed["url"] = feed["url"].replace("http://warta-example.invalid", server.base)
        with tempfile.TemporaryDirectory(prefix="warta-example-") as tmp:
            feeds_file = Path(tmp) / "feeds.yaml"
            feeds_file.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
            yield feeds_file, {"http.host_delay": 0.05}
