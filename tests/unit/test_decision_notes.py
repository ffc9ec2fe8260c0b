"""The workflow's notes on a decision come back as (zh, en) pairs for the web pages."""

from __future__ import annotations

from referral_service.services.visits import NoteLine, _note_lines


def test_a_chinese_note_followed_by_its_english_one_is_one_line_in_both_languages() -> None:
    zh, en = "本县未登记县级医院：无法提出上转目标医院", "no county hospital is registered for this county"
    lines = _note_lines([zh, en])
    assert lines == [NoteLine(zh, en)]
    assert lines[0].text("zh") == "本县未登记县级医院：无法提出上转目标医院"
    assert lines[0].text("en") == "no county hospital is registered for this county"


def test_an_english_note_of_an_older_decision_stands_for_both_languages() -> None:
    old = "no township clinic found for the patient: no down-referral (down-referral-no-clinic)"
    assert _note_lines([old]) == [NoteLine(old, old)]
    pairs = _note_lines(
        [
            "本县（白水县）未登记县级医院：建议转往县外的青山县人民医院（青山县）",
            "no county hospital is registered in the clinic's county (白水县): proposed 青山县人民医院",
            "old english note",
            "乙",
            "b",
        ]
    )
    assert [(n.text("zh"), n.text("en")) for n in pairs] == [
        (  # the English note names Chinese places: still the partner of the note before it
            "本县（白水县）未登记县级医院：建议转往县外的青山县人民医院（青山县）",
            "no county hospital is registered in the clinic's county (白水县): proposed 青山县人民医院",
        ),
        ("old english note", "old english note"),
        ("乙", "b"),
    ]
