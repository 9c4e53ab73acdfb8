"""Selection rules on hand-made statistics with hand-computed outcomes."""

from __future__ import annotations

import numpy as np
import pytest

from pracset.errors import ConfigError, UnknownNameError
from pracset.selection import (EmptySelectionError, SelectionConfig, SelectionInputs, forgetting_scores, select)

# id:                 0  1  2  3  4  5  6  7  8  9
LABELS = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
FORGETTING = np.array([0, 2, 0, 1, 0, 0, 0, 3, 0, 0])
PRESENTED = np.array([5, 5, 5, 5, 5, 5, 5, 5, 5, 0])   # id 9 never presented
NEVER = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)  # id 2 never learned
MARGIN = np.array([3.0, -1, -2, 0.5, 2, 1, 0.2, -0.5, 4, np.nan])
CEP = np.array([0, 0, 0, 2, 0, 1, 0, 1, 0, 0])


def inputs(cep=CEP, forgetting=FORGETTING, never=NEVER):
    return SelectionInputs(labels=LABELS, forgetting_events=forgetting, presentations=PRESENTED,
                           never_learned=never, margin=MARGIN, cep_disagreements=cep)


def test_prac_is_cet_union_cep_with_reasons():
    result = select(inputs(), SelectionConfig())
    # CET (forgetting > 0, never-learned kept): 1, 2, 3, 7; CEP: 3, 5, 7
    np.testing.assert_array_equal(result.ids, [1, 2, 3, 5, 7])
    assert result.reasons.tolist() == ["", "cet", "cet", "both", "", "cep", "", "both", "", ""]
    assert result.counts == {"cet": 4, "cep": 3, "both": 2}
    assert result.scores[2] == np.inf and result.scores[3] == 1 + 2 and result.scores[5] == 1
    assert result.describe()["reasons"] == {"both": 2, "cep": 1, "cet": 2}


def test_threshold_and_never_learned_policies():
    assert select(inputs(), SelectionConfig(rule="cet", forgetting_threshold=1)).ids.tolist() == [1, 2, 7]
    assert select(inputs(), SelectionConfig(rule="cet", never_learned="drop")).ids.tolist() == [1, 3, 7]
    # Toneva's reference: a never-learned example counts its presentations (5 > threshold 4)
    assert select(inputs(), SelectionConfig(rule="cet", forgetting_threshold=4,
                                            never_learned="count-presentations")).ids.tolist() == [2]
    scores = forgetting_scores(inputs(), "count-presentations")
    assert scores[2] == 5 and scores[7] == 3


def test_cep_only_and_missing_probe():
    assert select(inputs(), SelectionConfig(rule="cep")).ids.tolist() == [3, 5, 7]
    with pytest.raises(ConfigError, match="pruning probe"):
        select(inputs(cep=None), SelectionConfig(rule="cep"))
    # PrAC without a probe is CET alone (round 0 of the official loop)
    assert select(inputs(cep=None), SelectionConfig()).ids.tolist() == [1, 2, 3, 7]


def test_empty_selection_is_an_error_that_says_why():
    nothing = np.zeros(10, dtype=int)
    with pytest.raises(EmptySelectionError, match="prac rule selected no examples: no example was forgotten"):
        select(inputs(cep=nothing, forgetting=nothing, never=np.zeros(10, dtype=bool)), SelectionConfig())
    with pytest.raises(EmptySelectionError, match="cep rule selected no examples"):
        select(inputs(cep=nothing), SelectionConfig(rule="cep"))


def test_random_has_the_prac_size_and_is_seeded():
    a = select(inputs(), SelectionConfig(rule="random", random_seed=1))
    b = select(inputs(), SelectionConfig(rule="random", random_seed=1))
    c = select(inputs(), SelectionConfig(rule="random", random_seed=2))
    assert a.size == 5 and np.array_equal(a.ids, b.ids) and not np.array_equal(a.ids, c.ids)
    # the kept ones are those with the highest draws
    assert a.scores[a.selected].min() > a.scores[~a.selected].max()
    assert select(inputs(), SelectionConfig(rule="random", size=3)).size == 3
    with pytest.raises(ConfigError, match="exceeds"):
        select(inputs(), SelectionConfig(rule="random", size=11))


def test_topk_forgetting_ranks_by_score_then_margin():
    result = select(inputs(), SelectionConfig(rule="topk-forgetting", size=4))
    # scores: id2 inf, id7 3, id1 2, id3 1, then the zeros ranked by margin: id 6 (0.2) before id 5 (1)
    assert result.ids.tolist() == [1, 2, 3, 7]
    assert select(inputs(), SelectionConfig(rule="topk-forgetting", size=5)).ids.tolist() == [1, 2, 3, 6, 7]


def test_class_balance_fills_and_trims_to_proportional_quotas():
    # prac picks 1, 2, 3, 7 of class 0 and 5, 7 of class 1 -> 5 kept: class 0 has 3 (1, 2, 3), class 1 has 2 (5, 7)
    # classes are 50/50 -> quotas 3 and 2 (largest remainder, tie to the lower class): unchanged
    result = select(inputs(), SelectionConfig(class_balance=True))
    assert result.ids.tolist() == [1, 2, 3, 5, 7]
    # With only CET (1, 2, 3, 7): quotas 2/2 -> class 0 keeps its two best (2: inf, 1: 2), class 1 adds
    # its best unselected one by score then margin: all zero -> lowest margin among 5, 6, 8, 9 is 6 (0.2)
    result = select(inputs(cep=None), SelectionConfig(class_balance=True))
    assert result.ids.tolist() == [1, 2, 6, 7]
    assert result.reasons[6] == "balance" and result.reasons[3] == ""


def test_unknown_rule_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid names: ccs, cep, cet, highest, lowest, prac, random, topk-forgetting"):
        select(inputs(), SelectionConfig(rule="forgetful"))
    with pytest.raises(ConfigError, match="never_learned"):
        SelectionConfig(never_learned="ignore")


def test_check_size_refuses_a_size_above_the_split_only_for_rules_that_read_it():
    from pracset.selection import check_size

    for rule in ("random", "topk-forgetting"):
        check_size(SelectionConfig(rule=rule, size=100), 100)
        with pytest.raises(ConfigError, match="size 101 exceeds the 100 training examples"):
            check_size(SelectionConfig(rule=rule, size=101), 100)
    check_size(SelectionConfig(rule="prac", size=101), 100)  # prac, cet and cep ignore size


def test_fraction_keeps_that_share_of_the_split_rounded():
    from pracset.errors import ConfigError

    n = 1_000
    inputs = SelectionInputs(labels=np.arange(n) % 10, forgetting_events=np.arange(n) % 7,
                             presentations=np.full(n, 5), never_learned=np.zeros(n, dtype=bool))
    assert select(inputs, SelectionConfig(rule="random", fraction=0.25)).size == 250
    kept = select(inputs, SelectionConfig(rule="topk-forgetting", fraction=0.0015))  # 1.5 -> 2 (round half even)
    assert kept.size == 2
    with pytest.raises(ConfigError, match="give size or fraction, not both"):
        SelectionConfig(rule="random", size=10, fraction=0.1)
    with pytest.raises(ConfigError, match=r"fraction must lie in \(0, 1\], got 1.5"):
        SelectionConfig(fraction=1.5)
