"""Chinese personal names for synthetic residents: weighted surnames, given names by era and sex."""

from __future__ import annotations

import random
from bisect import bisect
from itertools import accumulate

# Common surnames with rough weights for rural Gansu (马 and 何 are frequent among Hui families).
SURNAMES: tuple[tuple[str, int], ...] = (
    ("王", 120), ("李", 110), ("张", 100), ("刘", 80), ("马", 70), ("杨", 60), ("陈", 50),
    ("赵", 45), ("何", 35), ("魏", 30), ("郭", 28), ("牛", 22), ("孙", 22), ("周", 20),
    ("徐", 18), ("吴", 18), ("朱", 16), ("胡", 16), ("高", 16), ("罗", 14), ("蒋", 10),
    ("田", 12), ("董", 12), ("苏", 10), ("丁", 10), ("包", 6), ("安", 8), ("雷", 8),
    ("冯", 10), ("贾", 8), ("汪", 10), ("任", 8), ("柴", 5), ("巩", 4), ("姚", 6), ("韩", 8),
)

# Given-name characters as (first, second) pools per era and sex. One-character names draw
# from the second pool. Eras: born before 1970, 1970-1994, 1995 and later.
_GIVEN: dict[tuple[int, str], tuple[str, str]] = {
    (0, "male"): ("建国志德福永有文学金玉长存生", "国华明林军民成山福祥财贵忠义平海生才仁"),
    (0, "female"): ("秀桂玉凤淑春兰金翠彩月", "英兰珍芳花梅琴霞莲娥香兰"),
    (1, "male"): ("海永建志小红晓军俊伟宏文鹏亮振", "军伟强勇平刚斌涛杰明辉峰鹏龙东波"),
    (1, "female"): ("丽晓小红海春彩雪燕秀艳", "娟霞燕丽红萍芳琴敏静梅莉艳花"),
    (2, "male"): ("子浩宇梓俊一博家嘉思天明晨睿泽", "轩涵然宇航博阳杰睿辰泽豪凯瑞鑫晨"),
    (2, "female"): ("欣子梓雨诗佳思若紫可梦语雅", "怡涵萱琪彤妍悦瑶琳雪婷欣璐馨"),
}

_SURNAME_CHARS = tuple(s for s, _ in SURNAMES)
_SURNAME_CUM = tuple(accumulate(w for _, w in SURNAMES))
_SINGLE_CHAR_SHARE = 0.15


def era_of(birth_year: int) -> int:
    """The naming era of a birth year: 0 before 1970, 1 until 1994, 2 from 1995."""
    if birth_year < 1970:
        return 0
    return 1 if birth_year < 1995 else 2


def surname(rng: random.Random) -> str:
    """A surname drawn by frequency."""
    return _SURNAME_CHARS[bisect(_SURNAME_CUM, rng.random() * _SURNAME_CUM[-1])]


def given_name(rng: random.Random, gender: str, birth_year: int) -> str:
    """A one- or two-character given name in the style of the birth year and sex."""
    first, second = _GIVEN[(era_of(birth_year), gender)]
    if rng.random() < _SINGLE_CHAR_SHARE:
        return rng.choice(second)
    return rng.choice(first) + rng.choice(second)
