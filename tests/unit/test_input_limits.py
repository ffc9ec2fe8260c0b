"""Hostile request bodies and days are refused where they are read, not halfway through a write (500)."""

from __future__ import annotations

import json
from datetime import date

import pytest

from referral_service.domain.days import DayOutOfRange, parse_day
from referral_service.fhir import jsonio
from referral_service.fhir.search_params import MAX_INSTANT, MIN_INSTANT, parse_date_range


def body(text: str) -> bytes:
    return text.encode("utf-8")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r'{"name": "\ud83d\ude00"}', "\U0001f600"),  # a surrogate pair is one character
        (r'{"name": "a\tb\nc\r"}', "a\tb\nc\r"),  # tab, LF and CR are allowed
        (r'{"name": "a\u0009\u000A\u000d"}', "a\t\n\r"),
        (r'{"name": "a\\u0000"}', "a\\u0000"),  # an escaped backslash, then the text u0000
        (r'{"name": "a\\\\b"}', "a\\\\b"),
        (r'{"name": "\\bin\\fonts"}', "\\bin\\fonts"),  # backslashes, not backspace or form feed
        (r'{"name": "\u738b\u82b3"}', "王芳"),
        ('{"name": "王\U0001f600"}', "王\U0001f600"),
    ],
)
def test_what_fhir_strings_may_hold_is_accepted(text: str, expected: str) -> None:
    assert jsonio.loads_body(body(text)) == {"name": expected}


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        (r'{"resourceType": "Patient", "name": [{"given": ["\ud800"]}]}', "Patient.name[0].given[0]", "lone"),
        (r'{"resourceType": "Patient", "name": [{"family": "x\udc00"}]}', "Patient.name[0].family", "lone"),
        (r'{"resourceType": "Patient", "a": "\ude00\ud83d"}', "Patient.a", "surrogate"),  # wrong order
        (r'{"resourceType": "Patient", "a": "\\\ud800"}', "Patient.a", "surrogate"),  # \\ then an escape
        (r'{"resourceType": "Patient", "gender": "fe\u0000male"}', "Patient.gender", "U+0000"),
        (r'{"resourceType": "Patient", "gender": "\u001F"}', "Patient.gender", "U+001F"),
        (r'{"resourceType": "Patient", "gender": "\b"}', "Patient.gender", "U+0008"),
        (r'{"resourceType": "Patient", "gender": "\f"}', "Patient.gender", "U+000C"),
        (r'{"resourceType": "Patient", "gen\u0000der": "x"}', "Patient", "element name"),
        (r'{"resourceType": "Bundle", "entry": [{"request": {"url": "Patient\ud800"}}]}',
         "Bundle.entry[0].request.url", "surrogate"),
        (r'["\u0000"]', "$[0]", "U+0000"),
    ],
)
def test_lone_surrogates_and_control_characters_are_refused_with_the_path(
    text: str, where: str, what: str
) -> None:
    with pytest.raises(jsonio.JsonError) as caught:
        jsonio.loads_body(body(text))
    assert caught.value.expression == where
    assert str(caught.value).startswith(f"{where}: ") and what in str(caught.value)
    str(caught.value).encode("utf-8")  # the message itself can be sent


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (body('{"n": ' + "1" * 5000 + "}"), "a number is too long"),  # int max str digits (ValueError)
        (body('{"a": ' + "[" * 101 + "]" * 101 + "}"), "nested more than 100 levels"),
        (body('{"a": ' + '{"b": ' * 150 + "1" + "}" * 150 + "}"), "nested more than 100 levels"),
        (body("[" * 100000 + "]" * 100000), "nested too deeply"),
        (b'{"a": "\xff"}', "not valid UTF-8"),
        (body('{"a": NaN}'), "NaN is not allowed"),
    ],
)
def test_bodies_that_would_fail_later_are_json_errors(raw: bytes, message: str) -> None:
    with pytest.raises(jsonio.JsonError, match=message) as caught:
        jsonio.loads_body(raw)
    assert caught.value.expression is None


def test_nesting_up_to_the_limit_and_long_numbers_below_it_are_fine() -> None:
    assert jsonio.loads_body(body('{"a": ' + "[" * 99 + "]" * 99 + "}"))
    assert jsonio.loads_body(body('{"n": ' + "9" * 4000 + "}"))["n"] == int("9" * 4000)
    assert jsonio.loads(body('{"n": ' + "1" * 5000 + ".5}"))["n"] > 0  # decimals have no digit limit
    with pytest.raises(jsonio.JsonError, match="too long"):  # the plain parser does not 500 either
        jsonio.loads(body('{"n": ' + "1" * 5000 + "}"))
    wide = {"resourceType": "Bundle", "entry": [{"resource": {"a": [{"b": [1]}]}} for _ in range(300)]}
    assert jsonio.loads_body(json.dumps(wide).encode()) == wide  # many brackets, little depth


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("9999-12-31T23:00:00-12:00", MAX_INSTANT, MAX_INSTANT),  # past UTC's last day: the end, not year 1
        ("0001-01-01T00:00:00+14:00", MIN_INSTANT, MIN_INSTANT),
    ],
)
def test_instants_beyond_the_calendar_stay_on_their_side(text: str, low: object, high: object) -> None:
    assert parse_date_range(text) == (low, high)


def test_days_people_type_are_kept_within_the_accepted_range() -> None:
    assert parse_day("1900-01-01") == date(1900, 1, 1)
    assert parse_day("2199-12-31") == date(2199, 12, 31)
    for text in ("0001-01-01", "1899-12-31", "2200-01-01", "9999-12-31"):
        with pytest.raises(DayOutOfRange):
            parse_day(text)
    with pytest.raises(ValueError, match="Invalid isoformat") as caught:
        parse_day("31/03/2026")
    assert not isinstance(caught.value, DayOutOfRange)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_constants_are_named_as_such(constant: str) -> None:
    with pytest.raises(jsonio.JsonError) as refused:
        jsonio.loads_body(f'{{"value": {constant}}}'.encode())
    assert str(refused.value) == f"{constant} is not allowed in JSON"
