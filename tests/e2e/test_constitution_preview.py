"""Open the app, edit a principle, save, see the version in history, preview a prompt, and see
two different answers and the highlighted divergence."""

import pytest

pytestmark = pytest.mark.e2e

FILLED = "document.querySelector('#principle-text textarea')?.value.length > 0"


def test_edit_save_history_and_preview(page):
    page.wait_for_function(FILLED)
    text = page.locator("#principle-text textarea")
    text.click()
    text.press("End")
    text.type(" Shout it!")  # typed, as a person would: the draft autosaves on input
    page.wait_for_function("document.querySelector('#rendered textarea').value.includes('Shout it!')")

    page.locator("#save-message textarea").fill("louder")
    page.locator("#save").click()
    page.wait_for_selector("#save-result >> text=Saved as v1")
    page.wait_for_function("document.querySelector('#history input').value === 'v1 · pirate · louder'")

    # reload: the edit is still there (autosaved draft, saved version)
    page.reload()
    page.wait_for_function(FILLED)
    assert "Shout it!" in page.locator("#principle-text textarea").input_value()

    page.get_by_role("tab", name="Preview").click()
    page.locator("#prompt textarea").fill("How do I boil an egg?")
    page.locator("#run-preview").click()
    page.wait_for_selector("#mean-kl >> text=Mean KL", timeout=120_000)
    prompted = page.locator("#prompted textarea").input_value()
    unprompted = page.locator("#unprompted textarea").input_value()
    assert prompted and unprompted and prompted != unprompted
    tokens = page.locator("#divergence .score-token")
    assert tokens.count() > 5  # the teacher's answer, token by token, highlighted by KL


def test_invalid_edit_is_refused_and_last_version_kept(page):
    page.wait_for_function(FILLED)
    page.locator("#add-principle").click()  # a new principle with empty text
    page.wait_for_selector("#c-status >> text=Not saveable")
    page.locator("#save").click()
    page.wait_for_selector("#save-result >> text=has no text")
    page.get_by_role("tab", name="Preview").click()
    page.locator("#run-preview").click()  # empty prompt
    page.wait_for_selector("text=Type a prompt")


RENDERED = "document.querySelector('#rendered textarea').value"


def load_example(page, name: str) -> None:
    """The draft is the workspace's (autosaved, kept across reloads): start from a shipped example."""
    page.get_by_text("Examples, import, export").click()
    page.locator("#example input").click()
    page.get_by_role("option", name=name, exact=True).click()
    page.locator("#load-example").click()
    page.wait_for_selector(f"#save-result >> text=Loaded example '{name}'")


def test_every_edit_reaches_the_draft(page):
    """Backspace, a paste (fill sends no key presses) and Delete all reach the draft, as typing does."""
    # after the test above the stored draft has a principle with no text, which Save rightly refuses
    load_example(page, "pirate")
    page.wait_for_function(FILLED)
    text = page.locator("#principle-text textarea")
    text.click()
    text.press("End")
    text.type(" Ahoy!")
    page.wait_for_function(f"{RENDERED}.includes('Ahoy!')")
    for _ in range(len(" Ahoy!")):
        text.press("Backspace")
    page.wait_for_function(f"!{RENDERED}.includes('Ahoy')")
    original = text.input_value()
    text.fill(original + " Pasted words.")
    page.wait_for_function(f"{RENDERED}.includes('Pasted words.')")
    page.locator("#save").click()
    page.wait_for_selector("#save-result >> text=Saved as")
    assert "no changes" not in page.locator("#save-result").inner_text()
    text.press("End")
    text.press("Shift+Home")
    text.press("Delete")
    page.wait_for_function(f"!{RENDERED}.includes('Pasted words.')")
    page.wait_for_selector("#principles >> text=Pasted words.", state="detached")
