"""URL / domain blocklist read from a text file (format in ``data/blocklist.txt``).

A line is a domain (blocks it and every subdomain) or a URL prefix starting with
``http://`` or ``https://``; ``#`` starts a comment. Lists of millions of domains (e.g. the
UT1 blacklists used by FineWeb/RefinedWeb) load into one set.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pipeline.errors import DatagenError
from pipeline.records import Document


def _host(url: str) -> str:
    try:
        host = urlsplit(url.strip()).hostname or ""
    except ValueError:
        return ""
    return host.lower().rstrip(".").removeprefix("www.")


class BlocklistFilter:
    family = "blocklist"

    def __init__(
        self,
        path: Path | None = None,
        domains: list[str] | None = None,
        prefixes: list[str] | None = None,
    ) -> None:
        self.domains: set[str] = {d.lower().removeprefix("www.") for d in domains or []}
        self.prefixes: list[str] = list(prefixes or [])
        if path is not None:
            self._load(path)
        self._prefix_tuple = tuple(p.lower() for p in self.prefixes)

    def _load(self, path: Path) -> None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise DatagenError(f"web.blocklist: {path}: no such file") from None
        except UnicodeDecodeError:
            raise DatagenError(f"web.blocklist: {path}: not UTF-8 text") from None
        for lineno, raw in enumerate(lines, 1):
            entry = raw.split("#", 1)[0].strip()
            if not entry:
                continue
            if entry.lower().startswith(("http://", "https://")):
                self.prefixes.append(entry)
            elif " " in entry or "/" in entry:
                raise DatagenError(
                    f"{path}:{lineno}: '{entry}' is neither a domain nor a "
                    "URL starting with http:// or https://"
                )
            else:
                self.domains.add(entry.lower().rstrip(".").removeprefix("www."))

    def __len__(self) -> int:
        return len(self.domains) + len(self.prefixes)

    def score(self, doc: Document) -> dict[str, float]:
        url = doc.url or ""
        host = _host(url)
        parts = host.split(".")
        by_domain = any(".".join(parts[i:]) in self.domains for i in range(len(parts)))
        by_prefix = bool(self._prefix_tuple) and url.lower().startswith(self._prefix_tuple)
        return {"domain": float(by_domain), "url_prefix": float(by_prefix)}

    def keep(self, s: dict[str, float]) -> str | None:
        if s["domain"] > 0:
            return "blocklist.domain"
        if s["url_prefix"] > 0:
            return "blocklist.url_prefix"
        return None
