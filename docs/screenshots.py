"""Screenshots of the built site with headless Chromium (Debian package ``chromium``), for checking how
pages render: the home page, a tutorial, the API reference of CoOp and the results gallery.

    apt-get install chromium          # once
    python docs/screenshots.py [--out site_screenshots] [--network]

Builds the site with ``mkdocs build --strict`` into a temporary folder (or takes ``--site``), serves it
on a local port and writes one PNG per page. Exits 2 with a message when Chromium is not installed.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = {
    "home": "",
    "tutorial_coop": "tutorials/coop_export_new_classes/",
    "api_coop": "api/methods/#lightning_prompts.methods.coop.CoOp",
    "gallery": "gallery/",
}


SCROLLED = """<!doctype html><html><body style="margin:0">
<iframe id="page" style="position:fixed;top:0;left:0;width:100%;height:100%;border:0"></iframe>
<script>
var frame = document.getElementById("page"), anchor = decodeURIComponent(location.hash.slice(1));
frame.onload = function () {
  var target = frame.contentDocument.getElementById(anchor);
  if (target) frame.contentWindow.scrollTo(0, target.getBoundingClientRect().top - 60);
};
frame.src = "/" + location.search.slice(1);
</script></body></html>
"""


# by default every request but the local server's fails at once: offline, Chromium would otherwise wait
# for the CDN (MathJax) and font requests to time out (pages then render with fallback fonts and formulas
# as TeX); --network lets them through
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass


def chromium() -> str | None:
    return next(
        (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="site_screenshots")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1600)
    parser.add_argument("--site", default=None, help="an already built site (default: build one)")
    parser.add_argument("--network", action="store_true", help="let the pages fetch MathJax and fonts from their CDNs")
    args = parser.parse_args()
    browser = chromium()
    if browser is None:
        print("screenshots: Chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        site = args.site or scratch
        if args.site is None:
            build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", site]
            subprocess.run(build, cwd=ROOT, check=True)
        (Path(site) / "_scrolled.html").write_text(SCROLLED)
        handler = functools.partial(QuietHandler, directory=site)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            # one Chromium per page, all at once: each spends most of its few seconds starting up
            shots = []
            for name, page in PAGES.items():
                target = out / f"{name}.png"
                page, _, anchor = page.partition("#")
                # headless Chromium paints a blank viewport when it scrolls to a fragment itself: scroll inside
                # a frame instead
                path = f"_scrolled.html?{page}#{anchor}" if anchor else page
                url = f"http://127.0.0.1:{server.server_port}/{path}"
                profile = Path(scratch) / f"profile_{name}"  # concurrent Chromiums need a profile each
                command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--window-size={args.width},{args.height}", "--virtual-time-budget=5000",
                           f"--user-data-dir={profile}", f"--screenshot={target}", url]  # fmt: skip
                if not args.network:
                    command.insert(1, OFFLINE)
                shots.append((target, subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
            for target, shot in shots:
                _, errors = shot.communicate(timeout=120)
                if shot.returncode != 0:
                    raise subprocess.CalledProcessError(shot.returncode, shot.args, stderr=errors)
                print(target)
        finally:
            server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
