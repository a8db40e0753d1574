"""benchmark.laws: sizes, ladders, the paths between teacher and student, and each law's score of a path."""

from __future__ import annotations

import math

import pytest

from benchmark import laws, registry

PYTHIA = "12B,6.9B,2.8B,1.4B,410M,160M"


# ----------------------------------------------------------------------------------------------------------------
# sizes, ladders, paths
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, billions", [("1.5B", 1.5), ("760M", 0.76), ("6.9b", 6.9), ("160M", 0.16), ("12B", 12.0), (" 70 m", 0.07)]
)
def test_parse_size(text, billions):
    assert laws.parse_size(text) == pytest.approx(billions)


@pytest.mark.parametrize("text", ["abc", "12", "0B", "-1B", "1.5X"])
def test_parse_size_rejects_non_sizes(text):
    with pytest.raises(laws.PlannerError, match="not a model size"):
        laws.parse_size(text)


def test_gpt2_paths_from_the_teacher_to_120m_are_the_four_registered_entries():
    ladder = laws.family_ladder("gpt2", "120M")
    paths = laws.enumerate_paths(ladder)
    assert paths == [
        ("1.5B", "120M"),
        ("1.5B", "760M", "120M"),
        ("1.5B", "340M", "120M"),
        ("1.5B", "760M", "340M", "120M"),
    ]
    assert all(ladder.registered(p) for p in paths)
    assert len(laws.enumerate_paths(laws.family_ladder("gpt2", "760M"))) == 1
    assert len(laws.enumerate_paths(laws.family_ladder("opt", "1.3B"))) == 4


def test_pythia_ladder_has_two_to_the_four_paths():
    ladder = laws.size_ladder(PYTHIA, "160M")
    paths = laws.enumerate_paths(ladder)
    assert len(paths) == 2**4 == len(set(paths))
    assert all(p[0] == "12B" and p[-1] == "160M" for p in paths)
    assert ("12B", "6.9B", "2.8B", "1.4B", "410M", "160M") in paths
    # the ladder may come in any order; sizes are sorted largest first
    assert laws.size_ladder("160M,12B,1.4B", "160M").labels == ("12B", "1.4B", "160M")


def test_capacity_gap_hop_count():
    # ceil(ln(12.5) / ln 2.5) = ceil(2.76) = 3 with the nominal sizes; 13x with the checkpoints' parameter counts
    gpt2 = laws.family_ladder("gpt2", "120M")
    assert laws.optimal_hops(1.5, 0.12) == 3
    assert laws.optimal_hops(gpt2.params("1.5B"), gpt2.params("120M")) == 3
    assert math.log(13 / 1.3) / math.log(2.5) == pytest.approx(2.513, abs=1e-3)
    assert laws.optimal_hops(13, 1.3) == 3
    assert laws.optimal_hops(12, 0.16) == 5  # Pythia 12B -> 160M: 75x
    assert laws.optimal_hops(2.5, 1.0) == 1 and laws.optimal_hops(6.25, 1.0) == 2  # exact powers of 2.5
    with pytest.raises(laws.PlannerError, match="not smaller"):
        laws.optimal_hops(1.0, 1.0)


# ----------------------------------------------------------------------------------------------------------------
# each law's score of a path
# ----------------------------------------------------------------------------------------------------------------


def scores(law: str, ladder: laws.Ladder, quality: laws.Quality) -> dict[str, float | None]:
    return {
        ladder.key(p): laws.LAWS[law].score(laws.PathView(ladder, p, quality))[0] for p in laws.enumerate_paths(ladder)
    }


def test_size_laws_on_a_constructed_ladder():
    # 100B > 40B > 16B > 6.4B: every hop of the full path is exactly 2.5x (capacity gap 0)
    ladder, none, ln = laws.size_ladder("100B,40B,16B,6.4B", "6.4B"), laws.Quality.none(), math.log
    assert scores("capacity-gap", ladder, none) == pytest.approx(
        {
            "100B>6.4B": abs(ln(100 / 6.4) - ln(2.5)),
            "100B>40B>6.4B": abs(ln(40 / 6.4) - ln(2.5)),  # 2.5x then 6.25x
            "100B>16B>6.4B": abs(ln(100 / 16) - ln(2.5)),  # 6.25x then 2.5x: the same score
            "100B>40B>16B>6.4B": 0.0,
        }
    )
    assert scores("error-accumulation", ladder, none) == {
        "100B>6.4B": 0.0,
        "100B>40B>6.4B": 1.0,
        "100B>16B>6.4B": 1.0,
        "100B>40B>16B>6.4B": 2.0,
    }
    # the geometric midpoint of 100B and 6.4B is 25.3B, equally far (in log) from 40B and 16B: 40 * 16 = 100 * 6.4
    mid = (ln(100) + ln(6.4)) / 2
    assert scores("geometric-midpoint", ladder, none) == pytest.approx(
        {
            "100B>6.4B": ln(100 / 6.4) / 2,
            "100B>40B>6.4B": abs(ln(40) - mid),
            "100B>16B>6.4B": abs(ln(16) - mid),
            "100B>40B>16B>6.4B": abs(ln(40) - mid),
        }
    )


def test_quality_laws_on_the_published_gpt2_numbers():
    ladder, published = laws.family_ladder("gpt2", "120M"), laws.Quality.published()
    # TAKD: the midpoint of the teacher (27.60) and the one-step student (24.60) is 26.10 ROUGE-L
    assert scores("takd-quality", ladder, published) == pytest.approx(
        {
            "gpt2/1.5B>120M": 1.5,  # no TA: the teacher's own distance
            "gpt2/1.5B>760M>120M": 0.3,  # 760M at 26.40
            "gpt2/1.5B>340M>120M": 0.7,  # 340M at 25.40
            "gpt2/1.5B>760M>340M>120M": 0.2,  # 340M through 760M at 26.30 (nearer than 760M's 0.30)
        }
    )
    # the paper's reading: perplexity of the student's own teacher (Table 3)
    assert scores("ta-quality", ladder, published) == {
        "gpt2/1.5B>120M": 21.94,
        "gpt2/1.5B>760M>120M": 15.40,
        "gpt2/1.5B>340M>120M": 24.77,
        "gpt2/1.5B>760M>340M>120M": 17.55,
    }
    assert scores("error-accumulation", ladder, published) == {
        k: float(len(registry.ENTRIES[k].tas)) for k in scores("error-accumulation", ladder, published)
    }


def test_quality_laws_without_quality_say_what_they_need():
    ladder = laws.size_ladder(PYTHIA, "160M")
    for path in laws.enumerate_paths(ladder):
        view = laws.PathView(ladder, path, laws.Quality.none())
        for law in ("takd-quality", "ta-quality"):
            score, note = laws.LAWS[law].score(view)
            assert score is None and note.startswith("needs quality")
