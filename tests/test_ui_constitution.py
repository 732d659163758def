"""The Constitution tab (ui/constitution.py), without a browser: Save clears the version note, a New
constitution button, and Raw YAML that an editor colours right."""

from __future__ import annotations

from ctxdistill import constitution as cmod
from ctxdistill.ui import constitution as tab
from ctxdistill.ui.common import AppContext

DRAFT = {"name": "plain", "principles": [{"id": "p1", "text": "Don't use jargon."}]}


def test_save_clears_the_version_note_and_a_refused_save_keeps_it(tmp_path, tiny_checkpoint):
    ctx = AppContext(home=tmp_path / "ws", model_spec=str(tiny_checkpoint))
    version, text, *_, note = tab.do_save(ctx, DRAFT, None, "first words", None)
    assert text.startswith("Saved as **v") and note == ""
    assert ctx.store.get_constitution(version)["message"] == "first words"
    *_, note = tab.do_save(ctx, {"name": "", "principles": []}, version, "kept", None)
    assert note == {"__type__": "update"}  # left as typed


def test_new_constitution_starts_an_empty_draft_outside_any_lineage(tmp_path):
    ctx = AppContext(home=tmp_path / "ws")
    draft, version, *_, note = tab.new_draft(ctx, DRAFT, 3, None)
    assert draft["name"] == "my-constitution" and [p["text"] for p in draft["principles"]] == [""]
    assert version is None and "new constitution" in note.lower()
    assert ctx.store.get_draft("")["content"]["name"] == "my-constitution"  # autosaved like every edit


def test_raw_yaml_puts_a_line_with_an_apostrophe_in_double_quotes():
    c = cmod.from_dict(DRAFT)
    text = cmod.dumps(c)
    assert 'text: "Don\'t use jargon."' in text
    assert cmod.parse(text, "yaml").principles[0].text == "Don't use jargon."
