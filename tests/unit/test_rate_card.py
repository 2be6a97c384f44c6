"""The rate card file: the default that ships, the operator's own, versions in force, and bad files."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from creditmeter.pricing import (
    RATE_CARD_ENV,
    PricingError,
    RateCard,
    RateCardError,
    clear_rate_card_cache,
    load_rate_card,
    parse_rate_card,
    price,
)

MINIMAL = """
[[versions]]
version = "{name}"
effective_at = {at}
[versions.operations.inference.rates]
input_tokens = "0.000002"
"""


def card(*versions: tuple[str, str], extra: str = "") -> str:
    return "".join(MINIMAL.format(name=n, at=at) for n, at in versions) + extra


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(RATE_CARD_ENV, raising=False)
    clear_rate_card_cache()
    yield
    clear_rate_card_cache()


def problems(text: str) -> list[str]:
    with pytest.raises(RateCardError) as caught:
        parse_rate_card(text, "/etc/creditmeter/rates.toml")
    err = caught.value
    assert err.code == "invalid_rate_card"
    assert "/etc/creditmeter/rates.toml" in err.detail
    return [f"{e['field']}: {e['message']}" for e in err.errors]


# --- the default card --------------------------------------------------------------------------


def test_the_default_card_ships_with_the_three_default_operations() -> None:
    rc = load_rate_card()
    assert [v.version for v in rc.versions] == ["2024-01", "2026-01"]
    for version in rc.versions:
        assert set(version.operations) == {"training", "inference", "data_processing"}


def test_the_default_card_prices_typical_events() -> None:
    rc = load_rate_card()
    noon = datetime(2026, 3, 2, 12, tzinfo=UTC)
    # 1,200 input tokens at 0.002/1k + 350 output tokens at 0.006/1k
    assert (
        rc.price("inference", {"input_tokens": "1200", "output_tokens": "350"}, noon).to_json()[
            "credits"
        ]
        == "0.0045"
    )
    # base 1 + one H100-hour at the 2026 rate (5.76)
    training = rc.price("training", {"gpu_seconds": "3600", "accelerator": "h100"}, noon)
    assert training.total_micros == 6_760_000
    # the same hour at 23:00 in 2025: the launch rate (7.2) and the launch off-peak discount (20%)
    night_2025 = datetime(2025, 6, 1, 23, tzinfo=UTC)
    launch = rc.price("training", {"gpu_seconds": "3600", "accelerator": "h100"}, night_2025)
    assert launch.version == "2024-01"
    assert launch.total_micros == 6_560_000  # (1 + 7.2) x 0.8


def test_a_newer_version_extends_an_older_one() -> None:
    old, new = load_rate_card().versions
    assert old.operations["training"].gpu_rates["h100"].text == "0.002"
    assert new.operations["training"].gpu_rates["h100"].text == "0.0016"
    assert new.operations["training"].gpu_rates["a100"].text == "0.0012"  # inherited
    assert new.off_peak is not None
    assert new.off_peak.multiplier.text == "0.7"
    assert new.off_peak.windows == ((22, 6),)  # inherited


def test_the_version_describes_itself_for_the_api() -> None:
    doc = load_rate_card().versions[-1].to_json()
    assert doc["version"] == "2026-01"
    assert doc["effective_at"] == "2026-01-01T00:00:00Z"
    assert doc["modifiers"] == {
        "off_peak": {"time_zone": "UTC", "windows": [[22, 6]], "multiplier": "0.7"},
        "cache_hit": {"multiplier": "0.5"},
    }
    assert doc["rounding"]["mode"] == "ROUND_HALF_EVEN"
    inference = doc["operations"]["inference"]
    assert inference["rates"] == {
        "input_tokens": "0.000002",
        "output_tokens": "0.000006",
        "gpu_seconds": {"l4": "0.0003", "a100": "0.0012", "h100": "0.0016"},
    }
    assert inference["units"]["input_tokens"] == "token"
    assert inference["off_peak"] is False
    assert doc["operations"]["training"]["cache_hit_multiplier"] == "1"
    assert doc["operations"]["training"]["instance_classes"] == {
        "standard": "1",
        "highmem": "1.25",
        "gpu-large": "2",
    }


# --- which file ----------------------------------------------------------------------------------


def test_an_explicit_path_wins_and_is_cached(tmp_path: Path) -> None:
    path = tmp_path / "rates.toml"
    path.write_text(card(("mine", "2026-01-01T00:00:00Z")))
    first = load_rate_card(str(path))
    assert first.versions[0].version == "mine"
    assert first.source == str(path)
    path.write_text(card(("changed", "2026-01-01T00:00:00Z")))
    assert load_rate_card(str(path)) is first
    clear_rate_card_cache()
    assert load_rate_card(str(path)).versions[0].version == "changed"


def test_the_environment_variable_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rates.toml"
    path.write_text(card(("from-env", "2026-01-01T00:00:00Z")))
    monkeypatch.setenv(RATE_CARD_ENV, str(path))
    assert load_rate_card().versions[0].version == "from-env"
    assert load_rate_card(None) is load_rate_card()


def test_a_missing_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RATE_CARD_ENV, str(tmp_path / "nope.toml"))
    with pytest.raises(RateCardError, match=r"nope\.toml \(named by CREDITMETER_RATE_CARD\)"):
        load_rate_card()


def test_invalid_toml_names_the_file() -> None:
    with pytest.raises(RateCardError, match=r"rate card x\.toml is not valid TOML"):
        parse_rate_card("[[versions]\n", "x.toml")
    with pytest.raises(RateCardError, match="not valid TOML"):
        parse_rate_card(b"\xff\xfe", "x.toml")


# --- versions in force --------------------------------------------------------------------------


@pytest.fixture
def two_versions() -> RateCard:
    return parse_rate_card(
        card(("late", "2026-06-01T00:00:00Z"), ("early", "2026-01-01T00:00:00+01:00")), "t"
    )


def test_versions_are_sorted_by_effective_at(two_versions: RateCard) -> None:
    assert [v.version for v in two_versions.versions] == ["early", "late"]
    assert two_versions.versions[0].effective_at == datetime(2025, 12, 31, 23, tzinfo=UTC)


def test_the_boundary_instant_belongs_to_the_new_version(two_versions: RateCard) -> None:
    boundary = datetime(2026, 6, 1, tzinfo=UTC)
    assert two_versions.version_at(boundary - timedelta(microseconds=1)).version == "early"
    assert two_versions.version_at(boundary).version == "late"
    assert two_versions.version_at(datetime(2030, 1, 1, tzinfo=UTC)).version == "late"


def test_before_the_first_version_nothing_is_in_force(two_versions: RateCard) -> None:
    with pytest.raises(PricingError) as caught:
        two_versions.version_at(datetime(2025, 12, 31, 22, 59, tzinfo=UTC))
    assert caught.value.code == "no_rate_card_version"
    assert caught.value.status_code == 422
    assert caught.value.errors[0]["field"] == "occurred_at"


def test_version_at_refuses_a_naive_time(two_versions: RateCard) -> None:
    with pytest.raises(PricingError) as caught:
        two_versions.version_at(datetime(2026, 3, 1))
    assert caught.value.code == "invalid_occurred_at"


def test_an_effective_at_may_be_a_string() -> None:
    rc = parse_rate_card(card(("s", '"2026-02-01T00:00:00Z"')), "t")
    assert rc.versions[0].effective_at == datetime(2026, 2, 1, tzinfo=UTC)


# --- bad files: every problem, naming the version and the key ---------------------------------


def test_a_float_rate_is_refused() -> None:
    text = card(("v1", "2026-01-01T00:00:00Z")).replace('"0.000002"', "0.000002")
    assert problems(text) == [
        "version 'v1': operations.inference.rates.input_tokens: "
        'write it as a quoted decimal string, e.g. "2e-06" (floats are inexact)'
    ]


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("", "versions: add at least one [[versions]] table"),
        (
            "currency = 'x'\n" + card(("v", "2026-01-01T00:00:00Z")),
            "currency: unknown top-level key",
        ),
        (
            card(("v", "2026-01-01T00:00:00")),
            "version 'v': effective_at: write an RFC 3339 instant",
        ),
        (card(("v", '"yesterday"')), "version 'v': effective_at: write an RFC 3339 instant"),
        (
            card(("v", "2026-01-01T00:00:00Z"), ("v", "2026-02-01T00:00:00Z")),
            "version 'v': this version name is used twice",
        ),
        (
            card(("a", "2026-01-01T00:00:00Z"), ("b", "2026-01-01T00:00:00Z")),
            "version 'b': effective_at: version 'a' starts then too",
        ),
        (
            card(("bad name", "2026-01-01T00:00:00Z")),
            "versions[0].version: give each version a name",
        ),
        (
            "[[versions]]\nversion = 'v'\neffective_at = 2026-01-01T00:00:00Z\n",
            "version 'v': operations: add at least one",
        ),
        (
            "[[versions]]\nversion = 'v'\neffective_at = 2026-01-01T00:00:00Z\nnotes = 'x'\n",
            "version 'v': notes: unknown key",
        ),
        (
            "[[versions]]\nversion = 'v'\neffective_at = 2026-01-01T00:00:00Z\ndescription = 5\n",
            "version 'v': description: write the description as a string",
        ),
        (
            "[[versions]]\nversion = 'v'\neffective_at = 2026-01-01T00:00:00Z\n"
            "[versions.operations]\ninference = 1\n",
            "version 'v': operations.inference: write the operation as a table",
        ),
    ],
)
def test_version_level_problems(toml: str, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(toml)), problems(toml)


BASE = card(("v", "2026-01-01T00:00:00Z"))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[versions.operations.inference]\nbsae = '1'\n", "operations.inference.bsae: unknown key"),
        (
            "[versions.operations.inference]\nbase = '-1'\n",
            "operations.inference.base: '-1' is not a decimal",
        ),
        (
            "[versions.operations.inference]\nminimum = true\n",
            "operations.inference.minimum: True is not a decimal",
        ),
        (
            "[versions.operations.inference]\nbase = '1.0000000000000000001'\n",
            "more than 18 decimal places",
        ),
        (
            "[versions.operations.inference]\noff_peak = 'no'\n",
            "operations.inference.off_peak: write true",
        ),
        (
            "[versions.operations.inference]\ncache_hit_multiplier = '1.5'\n",
            "larger than the most allowed here (1)",
        ),
        (
            "[versions.operations.inference]\ndefault_accelerator = 'h100'\n",
            "default_accelerator: name one of the configured classes: none",
        ),
        ("output_tokens = { credits = '1', per = 3 }\n", "1 / 3 is not an exact decimal"),
        ("output_tokens = { credits = '1', per = 0 }\n", "per is a whole number"),
        ("output_tokens = { rate = '1' }\n", 'write a rate as "0.000002"'),
        ("accelerator = '1'\n", "rates.accelerator: a dimension name"),
        ("Output = '1'\n", "rates.Output: a dimension name"),
        ("gpu_seconds = '1'\n", "rates.gpu_seconds: write this as a table"),
        (
            "[versions.operations.inference.rates.gpu_seconds]\n",
            "price at least one accelerator class",
        ),
        (
            "[versions.operations.inference.rates.gpu_seconds]\n'A 100' = '1'\n",
            "class names are lower-case",
        ),
        ("[versions.operations.inference.instance_classes]\nbig = '0'\n", "must be more than 0"),
        (
            "[versions.operations.inference.instance_classes]\nbig = '1001'\n",
            "larger than the most allowed",
        ),
        (
            "[versions.operations.Inference]\n",
            "operations.Inference: operation names are lower-case",
        ),
        ("[versions.off_peak]\nwindows = [[22, 6]]\n", "off_peak.multiplier: required"),
        (
            "[versions.off_peak]\nwindows = [[22, 6]]\nmultiplier = '0.8'\ntime_zone = 'Mars/Olympus'\n",
            "unknown time zone 'Mars/Olympus'",
        ),
        ("[versions.off_peak]\nwindows = [[6, 6]]\nmultiplier = '0.8'\n", "start != end"),
        ("[versions.off_peak]\nwindows = [[0, 25]]\nmultiplier = '0.8'\n", "start 0-23, end 0-24"),
        (
            "[versions.off_peak]\nwindows = []\nmultiplier = '0.8'\n",
            "off_peak.windows: write windows as",
        ),
        (
            "[versions.off_peak]\nwindows = [[1, 2]]\nmultiplier = '1.1'\n",
            "off_peak.multiplier: '1.1' is larger",
        ),
        (
            "[versions.off_peak]\nwindows = [[1, 2]]\nmultiplier = '0.8'\nhours = 1\n",
            "off_peak.hours: unknown key",
        ),
        (
            "[versions.cache_hit]\nmultiplier = 0.5\n",
            "cache_hit.multiplier: write it as a quoted decimal",
        ),
        ("[versions.cache_hit]\nfactor = '0.5'\n", "cache_hit.factor: unknown key"),
        ("output_tokens = { credits = 'x', per = 1000 }\n", "output_tokens.credits: 'x' is not"),
        ("[versions.operations.inference]\ndescription = 1\n", "inference.description: write"),
        ("[versions.off_peak]\ntime_zone = 5\n", "off_peak.time_zone: write an IANA time zone"),
    ],
)
def test_operation_and_modifier_problems(extra: str, expected: str) -> None:
    found = problems(BASE + extra)
    assert any(expected in p and p.startswith("version 'v': ") for p in found), found


def test_every_problem_in_a_file_is_reported_at_once() -> None:
    text = BASE + "[versions.operations.inference]\nbase = 1.5\nminimum = 'x'\nbsae = '1'\n"
    found = problems(text)
    assert len(found) == 3
    with pytest.raises(RateCardError, match=r"version 'v': operations\.inference\.base"):
        parse_rate_card(text, "f.toml")


def test_extends_must_name_an_earlier_version() -> None:
    text = BASE.replace('version = "v"', 'version = "v"\nextends = "later"')
    assert problems(text) == ["version 'v': extends: name a version defined earlier in this file"]


def test_integers_are_accepted_as_amounts() -> None:
    rc = parse_rate_card(BASE + "[versions.operations.inference]\nbase = 2\n", "t")
    assert rc.versions[0].operations["inference"].base.text == "2"


def test_an_operator_adds_operations_and_dimensions() -> None:
    text = BASE + "[versions.operations.image_generation.rates]\nimages = '0.04'\n"
    v = parse_rate_card(text, "t").versions[0]
    p = price(v, "image_generation", {"images": "3"}, datetime(2026, 2, 1, tzinfo=UTC))
    assert p.total_micros == 120_000
    assert v.to_json()["operations"]["image_generation"]["units"] == {"images": "unit"}
