"""A fake teacher for the critique/revision, instruction-reversal and preference stages: the
transport for fault injection and resume tests (what the stages do with a real model is
tests/test_e2e_teacher.py). It answers a rubric prompt with JSON ratings derived from the
hash of the rated text (so a rewrite scores differently from its draft, reproducibly), a
reversal prompt with a question made of the text's own words, and anything else with a real
OpenStax module (RealTextOpenAI)."""

from __future__ import annotations

import hashlib
import json
import re

from run_testdata import RealTextOpenAI

QUOTED = re.compile(r'"""\n(.*?)\n"""', re.DOTALL)


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


class RecipeOpenAI(RealTextOpenAI):
    def completion(self, body: dict, key: str, fault: str) -> dict:
        self.seed = body.get("seed")  # preference samples differ by their seed parameter
        return super().completion(body, key, fault)

    def _text(self, messages: list[dict[str, str]]) -> str:  # type: ignore[override]
        user = messages[-1]["content"]
        quoted = QUOTED.findall(user)
        if user.startswith("Critique the draft"):
            h = _h(quoted[-1])
            ratings = {
                c: 1 + (h >> (3 * i)) % 5
                for i, c in enumerate(("correctness", "clarity", "pedagogy", "required_words"))
            }
            return json.dumps({"critique": "Explain the example step by step.", **ratings})
        if user.startswith("Rewrite the draft"):  # the draft's paragraphs, last first
            return "\n\n".join(reversed(quoted[-1].split("\n\n")))
        if user.startswith("Rate how well the response"):
            return json.dumps({"rationale": "Covers the request.", "score": 1 + _h(quoted[-1]) % 4})
        if "Write the one instruction" in user:
            words = re.findall(r"[A-Za-z]{5,}", quoted[0])
            if _h(quoted[0]) % 4 == 0:  # an instruction the text does not answer
                return "Describe the migration routes of arctic terns across the Pacific."
            return "Explain " + " ".join(words[:6]) + "?"
        seed = getattr(self, "seed", None)
        if seed is not None:
            return self.modules[_h(f"{seed}{user}") % len(self.modules)]
        return super()._text(messages)
