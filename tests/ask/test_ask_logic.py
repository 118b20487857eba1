"""The dialog's logic without widgets: texts, buttons, the focus guard, answers."""

from __future__ import annotations

import pytest

from qsf_ask.logic import BUTTONS, DialogLogic
from qsf_ask.protocol import CHOICES, AskAnswer, AskRequest

RW = AskRequest("work", "green", "vault", b"/home/user/\xff\n odd", "rw", CHOICES)
RO = AskRequest("work", "blue", "vault", b"/srv", "ro", CHOICES)
DISP = AskRequest("disp42", "red", "vault", b"/srv", "rw",
                  ("allow-once", "deny-once", "deny-always", "block"))


def ready(logic: DialogLogic, at: float = 0.0) -> DialogLogic:
    logic.focus_in(at)
    return logic


def test_texts_are_exact_and_escaped() -> None:
    texts = DialogLogic(RW).texts()
    assert (texts.title, texts.client, texts.server) == ("Folder access request", "work", "vault")
    assert texts.folder == "/home/user/\\xff\\u000a odd"
    assert texts.label_colour == "#73d216"
    assert texts.access == "read and write"
    assert DialogLogic(RO).texts().access == "read only"
    assert "only once" in DialogLogic(DISP).texts().note


def test_allow_buttons_wait_for_one_second_of_focus() -> None:
    logic = DialogLogic(RW)
    assert not logic.sensitive("allow_once", 100.0)  # never focused
    assert logic.sensitive("deny_once", 0.0) and logic.sensitive("block", 0.0)
    logic.focus_in(10.0)
    assert not logic.sensitive("allow_once", 10.99)
    assert logic.press("allow_once", 10.5) is None  # ignored, not an answer
    assert logic.sensitive("allow_once", 11.0) and logic.sensitive("allow_always", 11.0)
    logic.focus_out()
    assert not logic.sensitive("allow_once", 50.0)
    logic.focus_in(60.0)
    logic.focus_in(60.9)  # a second focus-in does not restart the wait
    assert logic.sensitive("allow_once", 61.0)


@pytest.mark.parametrize(("button", "read_only", "expected"), [
    ("allow_once", False, AskAnswer("allow-once", "rw")),
    ("allow_once", True, AskAnswer("allow-once", "ro")),
    ("allow_always", False, AskAnswer("allow-always", "rw")),
    ("deny_once", False, AskAnswer("deny-once", "ro")),
    ("deny_always", False, AskAnswer("deny-always", "ro")),
    ("block", False, AskAnswer("block", "ro")),
])
def test_each_button_answers(button: str, read_only: bool, expected: AskAnswer) -> None:
    logic = ready(DialogLogic(RW))
    logic.set_read_only(read_only)
    assert logic.press(button, 5.0) == expected
    assert logic.press("deny_once", 6.0) is None  # one answer only
    assert logic.cancel() == expected


def test_read_only_request_cannot_be_upgraded() -> None:
    logic = ready(DialogLogic(RO))
    assert logic.read_only and logic.read_only_locked()
    assert logic.set_read_only(False) is True
    assert logic.press("allow_once", 5.0) == AskAnswer("allow-once", "ro")
    assert not DialogLogic(RW).read_only and not DialogLogic(RW).read_only_locked()


def test_disposable_has_no_allow_always() -> None:
    logic = ready(DialogLogic(DISP))
    assert [b for b in BUTTONS if logic.offered(b)] == [
        "block", "deny_always", "deny_once", "allow_once"]
    assert logic.press("allow_always", 5.0) is None


def test_cancel_denies_once() -> None:
    assert DialogLogic(RW).cancel() == AskAnswer("deny-once", "ro")


def test_folder_wraps_only_between_components_unless_one_is_long() -> None:
    from qsf_ask.logic import UNBROKEN_COMPONENT, folder_segments

    shown = "/home/user/annual-report/" + "x" * (UNBROKEN_COMPONENT + 1) + "/v1.2"
    pieces = folder_segments(shown)
    assert "".join(text for text, _ in pieces) == shown
    assert pieces[:4] == [("/", True), ("home", False), ("/", True), ("user", False)]
    assert ("annual-report", False) in pieces and ("x" * (UNBROKEN_COMPONENT + 1), True) in pieces
    assert folder_segments("/") == [("/", True)]
