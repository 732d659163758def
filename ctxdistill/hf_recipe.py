"""Reading the Hugging Face constitutional-AI recipe's JSON into our constitution's parts.

    {"constitutions": [{"critic": ..., "revision": ...}, ...], "system_chat": [[{"role", "content"}, ...]]}

Each {"critic", "revision"} pair becomes a principle p1..pn with those strings as its critique and
revision requests and a statement derived from the critic (`statement_from_critic`); the few-shot
`system_chat` conversations are flattened, in order, into the examples. This module knows only the
recipe's format: constitution.py builds (and validates) the Constitution from what it returns.
"""

from __future__ import annotations

import re

# the verbs a critic uses ("did the assistant say anything …"), as the rule's verb
_VERB = {
    "said": "say",
    "says": "say",
    "say": "say",
    "include": "include",
    "included": "include",
    "includes": "include",
    "provide": "provide",
    "provided": "provide",
    "provides": "provide",
    "contain": "contain",
    "contained": "contain",
    "contains": "contain",
}


def is_recipe(obj) -> bool:
    return isinstance(obj, dict) and "constitutions" in obj and "principles" not in obj


def statement_from_critic(critic: str) -> str:
    """A short principle statement derived from a critique request.

    Looks at the first sentence only and tries, in order:
      "... the assistant's last response is/was/may be X"  -> "The assistant's response must not be X."
      "... whether it is (in any way) X"                    -> same
      "... the assistant('s response) said/included/provided anything X"
                                                           -> "The assistant must not say/include/provide anything X."
    Anything else becomes "The assistant's response should hold up to this
    critique: <first sentence>", which still reads as a rule to the teacher.
    """
    text = " ".join(critic.replace("\u2019", "'").split())
    m = re.match(r"(.+?[.?!])(\s|$)", text)
    sentence = (m.group(1) if m else text).strip()
    body = sentence.rstrip(".?!").strip()
    m = re.search(
        r"(?:response|\bit)\s+(?:is|was|may be|might be|could be)\s+"
        r"(?:in (?:any|some) way\s+|at all\s+)?(?P<what>.+)",
        body,
        re.I,
    )
    if m and "assistant" in body.lower():
        return f"The assistant's response must not be {m['what']}."
    m = re.search(
        r"(?P<who>assistant(?:'s (?:\w+ )?response)?)\s+(?P<verb>\w+)\s+"
        r"(?P<what>(?:anything|any)\b.+)",
        body,
        re.I,
    )
    if m and m["verb"].lower() in _VERB:
        who = "The assistant's response" if "response" in m["who"].lower() else "The assistant"
        return f"{who} must not {_VERB[m['verb'].lower()]} {m['what']}."
    return f"The assistant's response should hold up to this critique: {sentence}"


def read(obj) -> tuple[list[dict], list[dict], list[str]]:
    """(principles as keyword dicts, example messages, errors) of a recipe file's JSON."""
    if not isinstance(obj, dict) or not isinstance(obj.get("constitutions"), list):
        need = "A constitutional-AI recipe file needs a 'constitutions' list of "
        return [], [], [need + '{"critic": ..., "revision": ...} pairs.']
    errors, principles = [], []
    for i, pair in enumerate(obj["constitutions"], 1):
        if not isinstance(pair, dict) or not all(isinstance(pair.get(k), str) for k in ("critic", "revision")):
            errors.append(f"Entry {i} of 'constitutions' must have text fields 'critic' and 'revision'.")
            continue
        principles.append(
            {
                "id": f"p{i}",
                "text": statement_from_critic(pair["critic"]),
                "critique": pair["critic"],
                "revision": pair["revision"],
            }
        )
    chats = obj.get("system_chat") or []
    if chats and isinstance(chats[0], dict):  # a single conversation, not a list of them
        chats = [chats]
    examples = []
    for k, chat in enumerate(chats, 1):
        for m in chat if isinstance(chat, list) else [None]:
            if isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str):
                examples.append({"role": m["role"], "content": m["content"]})
            else:
                errors.append(
                    f'Conversation {k} of \'system_chat\' must be a list of {{"role": ..., "content": ...}} messages.'
                )
                break
    return principles, examples, errors
