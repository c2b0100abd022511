"""PII masking: e-mail addresses and IPv4/IPv6 addresses become placeholders.

Candidates are found with regexes and IPs are confirmed with :mod:`ipaddress` (so version
numbers like ``1.2.3`` or times like ``10:30:00`` stay). A modifier (``pipeline.steps``), never
a filter: ``mask`` returns the new text and counts; ``modify`` masks a document in place and
keeps the counts on it as scores (``pii.emails``, ``pii.ipv4``, ``pii.ipv6``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from pipeline.records import Document

# RFC 5322 "dot-atom" local part @ domain with a 2+ letter TLD (as datatrove's PIIFormatter)
EMAIL = re.compile(
    # the look-behind excludes every local-part character, so a match can only start where a
    # run of them starts (no quadratic rescans of long '////' or '====' runs)
    r"(?<![\w.!#$%&'*+/=?^`{|}~-])"
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\b"
)
# a sentence-final "." may follow an address ("... is 192.168.1.1."), a fifth number may not
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


def _valid_ip(s: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(s).version == version
    except ValueError:
        return False


class PIIMasker:
    family = "pii"

    def __init__(
        self, email_placeholder: str = "<EMAIL>", ip_placeholder: str = "<IP_ADDRESS>"
    ) -> None:
        self.email_placeholder = email_placeholder
        self.ip_placeholder = ip_placeholder

    def mask(self, text: str) -> tuple[str, dict[str, int]]:
        counts = {"emails": 0, "ipv4": 0, "ipv6": 0}

        def email(_: re.Match[str]) -> str:
            counts["emails"] += 1
            return self.email_placeholder

        def ip(version: int, key: str) -> Callable[[re.Match[str]], str]:
            def sub(m: re.Match[str]) -> str:
                s = m.group(0)
                if version == 6 and not any(ch.isalnum() for ch in s):
                    return s
                if _valid_ip(s, version):
                    counts[key] += 1
                    return self.ip_placeholder
                return s

            return sub

        if "@" in text:
            text = EMAIL.sub(email, text)
        text = IPV4.sub(ip(4, "ipv4"), text)
        if "::" in text or text.count(":") >= 7:
            text = IPV6.sub(ip(6, "ipv6"), text)
        return text, counts

    def modify(self, doc: Document) -> dict[str, int]:
        doc.text, counts = self.mask(doc.text)
        doc.scores.update({f"{self.family}.{k}": float(v) for k, v in counts.items()})
        return counts
