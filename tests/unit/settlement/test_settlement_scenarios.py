"""Settlement scenarios under the default policy, every expected number worked out by hand.

Default policy (DESIGN.md section 5): inpatient deductible township 200 / county 500 / city 1,000 /
province 3,000, ratio 0.90 / 0.80 / 0.70 / 0.60, yearly cap 150,000, none at village; outpatient
ratio village 0.65 / township 0.60 / county 0.50 / city 0 / province 0, cap 500; unreferred
out-of-county penalty 0.20; critical illness threshold 5,000 (poor 2,500), bands over the amount
above it 0-50,000 at 0.60, 50,000-100,000 at 0.70, above at 0.80 (poor +0.05), cap 300,000 (poor
none); assistance 0.70 cap 30,000; safety net ceiling 3,000 and target ratio 0.85; class B 0.10.

Notation in the comments: y = cumulative R1 - threshold; F(x) as in DESIGN; "basic exhausted" =
inpatient_basic_paid 150,000 before the claim, so B1 = 0 and R1 = E, which isolates later steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import NamedTuple

import pytest

from referral_service.settlement import (
    COMPONENT_CODES,
    ClaimInput,
    Policy,
    SettlementResult,
    YearAccumulators,
    settle,
)

EXHAUSTED = "150000"  # inpatient basic cap already reached this year


@dataclass(frozen=True)
class Case:
    """One hand-computed scenario; amounts are strings so they become exact Decimals."""

    id: str
    kind: str
    level: str
    items: str
    expect: dict[str, str]
    poor: bool = False
    ooc: bool = False
    borne: str = "0"
    acc: dict[str, str] = field(default_factory=dict)


def x(
    *, T: str, E: str, ded: str, S: str, N: str, B1: str, B2: str, B3: str, B4: str, P: str
) -> dict[str, str]:
    """Expected settlement components, named as in DESIGN (ded = basic-deductible)."""
    return {
        "total": T,
        "eligible": E,
        "basic-deductible": ded,
        "class-b-self-pay": S,
        "out-of-list": N,
        "basic-insurance": B1,
        "critical-illness": B2,
        "medical-assistance": B3,
        "poverty-safety-net": B4,
        "patient-pay": P,
    }


# fmt: off
CASES = [
    # ---- inpatient, each level, referred or in county, not poor --------------------------
    # T=E=10000, d=200, B1=round(9800*0.90)=8820, R1=1180 < 5000 so B2=0, P=1180.
    Case("ip-township", "inpatient", "township", "A:10000",
         x(T="10000", E="10000", ded="200", S="0", N="0", B1="8820", B2="0", B3="0", B4="0",
           P="1180")),
    # d=500, B1=round(19500*0.80)=15600, R1=4400 < 5000, P=4400.
    Case("ip-county", "inpatient", "county", "A:20000",
         x(T="20000", E="20000", ded="500", S="0", N="0", B1="15600", B2="0", B3="0", B4="0",
           P="4400")),
    # d=1000, B1=round(19000*0.70)=13300, R1=6700, y=1700, F=0.60*1700=1020, P=6700-1020=5680.
    Case("ip-city", "inpatient", "city", "A:20000",
         x(T="20000", E="20000", ded="1000", S="0", N="0", B1="13300", B2="1020", B3="0",
           B4="0", P="5680")),
    # d=3000, B1=round(47000*0.60)=28200, R1=21800, y=16800, F=10080, P=11720.
    Case("ip-province", "inpatient", "province", "A:50000",
         x(T="50000", E="50000", ded="3000", S="0", N="0", B1="28200", B2="10080", B3="0",
           B4="0", P="11720")),
    # Worked example, not poor: E=27000, B1=21200, R1=5800, y=800, F=480, P=5800-480+3000=8320.
    Case("ip-worked-example-not-poor", "inpatient", "county", "A:27000 C:3000",
         x(T="30000", E="27000", ded="500", S="0", N="3000", B1="21200", B2="480", B3="0",
           B4="0", P="8320")),
    # Worked example of DESIGN (registered poor): 21200 / 2145 / 2558.50 / 1096.50 / P 3000.
    Case("ip-worked-example-poor", "inpatient", "county", "A:27000 C:3000",
         x(T="30000", E="27000", ded="500", S="0", N="3000", B1="21200", B2="2145",
           B3="2558.50", B4="1096.50", P="3000"), poor=True),
    # T=15000, N=2000, S=round(5000*0.10)=500, E=12500, B1=round(12000*0.80)=9600, R1=2900
    # < 5000, P=R1+S+N=2900+500+2000=5400.
    Case("ip-county-class-mix", "inpatient", "county", "A:8000 B:5000 C:2000",
         x(T="15000", E="12500", ded="500", S="500", N="2000", B1="9600", B2="0", B3="0",
           B4="0", P="5400")),
    # Poor: T=10000, N=3000, S=200, E=6800, B1=round(6600*0.90)=5940, R1=860 < 2500, B3=602,
    # R3=258, target=min(3000, 1500)=1500, B4=min(258, 258+200+3000-1500)=258, P=200+3000.
    # The safety net pays only eligible amounts: P stays above the target.
    Case("ip-township-poor-class-mix", "inpatient", "township", "A:5000 B:2000 C:3000",
         x(T="10000", E="6800", ded="200", S="200", N="3000", B1="5940", B2="0", B3="602",
           B4="258", P="3200"), poor=True),
    # d=200 > E=150: ded=min(200,150)=150, B1=round(0*0.9)=0, R1=150, P=150+100=250.
    Case("ip-deductible-above-eligible", "inpatient", "township", "A:150 C:100",
         x(T="250", E="150", ded="150", S="0", N="100", B1="0", B2="0", B3="0", B4="0",
           P="250")),
    # Poor, d=500 > E=300: ded=300, B1=0, R1=300, B3=210, R3=90, target=min(3000, 45)=45,
    # B4=min(90, 90-45)=45, P=45.
    Case("ip-deductible-above-eligible-poor", "inpatient", "county", "A:300",
         x(T="300", E="300", ded="300", S="0", N="0", B1="0", B2="0", B3="210", B4="45",
           P="45"), poor=True),
    # Up-referral (上转补差): county after 200 borne at township in the episode: d=300,
    # B1=round(9700*0.80)=7760, R1=2240, P=2240.
    Case("ip-up-referral-pays-difference", "inpatient", "county", "A:10000",
         x(T="10000", E="10000", ded="300", S="0", N="0", B1="7760", B2="0", B3="0", B4="0",
           P="2240"), borne="200"),
    # Down-referral: township after 500 borne at county: d=max(0, 200-500)=0, B1=9000, P=1000.
    Case("ip-down-referral-no-deductible", "inpatient", "township", "A:10000",
         x(T="10000", E="10000", ded="0", S="0", N="0", B1="9000", B2="0", B3="0", B4="0",
           P="1000"), borne="500"),
    # Province after county (500 borne): d=2500, B1=round(7500*0.60)=4500, R1=5500, y=500,
    # F=300, P=5200.
    Case("ip-province-after-county", "inpatient", "province", "A:10000",
         x(T="10000", E="10000", ded="2500", S="0", N="0", B1="4500", B2="300", B3="0",
           B4="0", P="5200"), borne="500"),
    # Unreferred city: r=0.70-0.20=0.50, B1=round(19000*0.50)=9500, R1=10500, y=5500,
    # F=3300, P=7200.
    Case("ip-unreferred-city", "inpatient", "city", "A:20000",
         x(T="20000", E="20000", ded="1000", S="0", N="0", B1="9500", B2="3300", B3="0",
           B4="0", P="7200"), ooc=True),
    # Poor, unreferred city: B1=9500, R1=10500, y=8000, F=0.65*8000=5200, R2=5300,
    # B3=3710 (assistance still applies), R3=1590, no safety net: B4=0, P=1590.
    Case("ip-unreferred-city-poor", "inpatient", "city", "A:20000",
         x(T="20000", E="20000", ded="1000", S="0", N="0", B1="9500", B2="5200", B3="3710",
           B4="0", P="1590"), poor=True, ooc=True),
    # Poor, unreferred province, assistance used up: r=0.40, B1=round(7000*0.40)=2800,
    # R1=7200, y=4700, F=3055, R2=4145, B3=0, B4=0 (unreferred), P=4145.
    Case("ip-unreferred-province-poor-no-safety-net", "inpatient", "province", "A:10000",
         x(T="10000", E="10000", ded="3000", S="0", N="0", B1="2800", B2="3055", B3="0",
           B4="0", P="4145"), poor=True, ooc=True, acc={"assistance_paid": "30000"}),
    # Same but referred: r=0.60, B1=4200, R1=5800, y=3300, F=2145, R2=3655, B3=0, R3=3655,
    # target=min(3000, 1500)=1500, B4=min(3655, 3655-1500)=2155, P=1500.
    Case("ip-province-poor-safety-net", "inpatient", "province", "A:10000",
         x(T="10000", E="10000", ded="3000", S="0", N="0", B1="4200", B2="2145", B3="0",
           B4="2155", P="1500"), poor=True, acc={"assistance_paid": "30000"}),
    # Empty claim: everything 0; ded=min(500, 0)=0.
    Case("ip-empty", "inpatient", "county", "",
         x(T="0", E="0", ded="0", S="0", N="0", B1="0", B2="0", B3="0", B4="0", P="0")),
    # ---- outpatient: no deductible, B2 = B3 = B4 = 0 -------------------------------------
    # B1=round(100*0.65)=65, P=35.
    Case("op-village", "outpatient", "village", "A:100",
         x(T="100", E="100", ded="0", S="0", N="0", B1="65", B2="0", B3="0", B4="0", P="35")),
    # T=350, N=50, S=10, E=290, B1=round(290*0.60)=174, P=350-174=176.
    Case("op-township-class-mix", "outpatient", "township", "A:200 B:100 C:50",
         x(T="350", E="290", ded="0", S="10", N="50", B1="174", B2="0", B3="0", B4="0",
           P="176")),
    # B1=round(300*0.50)=150, P=150.
    Case("op-county", "outpatient", "county", "A:300",
         x(T="300", E="300", ded="0", S="0", N="0", B1="150", B2="0", B3="0", B4="0",
           P="150")),
    # City and province: outpatient ratio 0.
    Case("op-city", "outpatient", "city", "A:300",
         x(T="300", E="300", ded="0", S="0", N="0", B1="0", B2="0", B3="0", B4="0", P="300")),
    Case("op-province", "outpatient", "province", "A:300",
         x(T="300", E="300", ded="0", S="0", N="0", B1="0", B2="0", B3="0", B4="0", P="300")),
    # Poor and unreferred out of county at a county hospital: r=0.50-0.20=0.30, B1=300,
    # P=700; poverty preferences do not apply to outpatient care.
    Case("op-unreferred-county-poor", "outpatient", "county", "A:1000",
         x(T="1000", E="1000", ded="0", S="0", N="0", B1="300", B2="0", B3="0", B4="0",
           P="700"), poor=True, ooc=True),
    # Unreferred city: r=max(0, 0-0.20)=0.
    Case("op-unreferred-city-not-below-zero", "outpatient", "city", "A:300",
         x(T="300", E="300", ded="0", S="0", N="0", B1="0", B2="0", B3="0", B4="0",
           P="300"), ooc=True),
    # Cap: 400 paid, B1=min(600, 500-400)=100, P=900.
    Case("op-cap-partial", "outpatient", "township", "A:1000",
         x(T="1000", E="1000", ded="0", S="0", N="0", B1="100", B2="0", B3="0", B4="0",
           P="900"), acc={"outpatient_basic_paid": "400"}),
    # Cap reached: B1=min(600, max(0, 500-500))=0.
    Case("op-cap-reached", "outpatient", "township", "A:1000",
         x(T="1000", E="1000", ded="0", S="0", N="0", B1="0", B2="0", B3="0", B4="0",
           P="1000"), acc={"outpatient_basic_paid": "500"}),
    # Own pot: the exhausted inpatient cap does not touch outpatient: B1=60, P=40.
    Case("op-own-pot", "outpatient", "township", "A:100",
         x(T="100", E="100", ded="0", S="0", N="0", B1="60", B2="0", B3="0", B4="0", P="40"),
         acc={"inpatient_basic_paid": EXHAUSTED}),
    # ---- critical illness band edges (basic exhausted, so R1 = E) ------------------------
    # Exactly at the threshold: y=0, B2=0, P=5000 (ded=min(500, 5000)=500 still counted).
    Case("ci-at-threshold", "inpatient", "county", "A:5000",
         x(T="5000", E="5000", ded="500", S="0", N="0", B1="0", B2="0", B3="0", B4="0",
           P="5000"), acc={"inpatient_basic_paid": EXHAUSTED}),
    # One fen above: y=0.01, F=0.006, round half up 0.01, P=5000.00.
    Case("ci-one-fen-above-threshold", "inpatient", "county", "A:5000.01",
         x(T="5000.01", E="5000.01", ded="500", S="0", N="0", B1="0", B2="0.01", B3="0",
           B4="0", P="5000.00"), acc={"inpatient_basic_paid": EXHAUSTED}),
    # From the threshold exactly to the first edge: y 0 -> 50000, F=30000, P=20000.
    Case("ci-up-to-first-edge", "inpatient", "county", "A:50000",
         x(T="50000", E="50000", ded="500", S="0", N="0", B1="0", B2="30000", B3="0",
           B4="0", P="20000"),
         acc={"inpatient_basic_paid": EXHAUSTED, "critical_illness_cumulative_r1": "5000"}),
    # Straddling the first edge: y 45000 -> 55000: F=27000 -> 30000+0.70*5000=33500,
    # B2=6500, P=3500.
    Case("ci-straddle-first-edge", "inpatient", "county", "A:10000",
         x(T="10000", E="10000", ded="500", S="0", N="0", B1="0", B2="6500", B3="0",
           B4="0", P="3500"),
         acc={"inpatient_basic_paid": EXHAUSTED, "critical_illness_cumulative_r1": "50000"}),
    # From the second edge exactly: y 100000 -> 101000 at 0.80: B2=800, P=200.
    Case("ci-from-second-edge", "inpatient", "county", "A:1000",
         x(T="1000", E="1000", ded="500", S="0", N="0", B1="0", B2="800", B3="0", B4="0",
           P="200"),
         acc={"inpatient_basic_paid": EXHAUSTED, "critical_illness_cumulative_r1": "105000"}),
    # Half a yuan below the first edge: y 0 -> 49999.50, all in the first band:
    # F=0.60*49999.50=29999.70, P=49999.50-29999.70=19999.80.
    Case("ci-just-below-first-edge", "inpatient", "county", "A:49999.50",
         x(T="49999.50", E="49999.50", ded="500", S="0", N="0", B1="0", B2="29999.70", B3="0",
           B4="0", P="19999.80"),
         acc={"inpatient_basic_paid": EXHAUSTED, "critical_illness_cumulative_r1": "5000"}),
    # Poor, starting half a yuan below the second edge: y 99999.50 -> 100000.50:
    # F(before)=32500+0.75*49999.50=69999.625, F(after)=70000+0.85*0.50=70000.425,
    # B2=round(0.80)=0.80, R2=0.20, B3=round(0.14)=0.14, R3=0.06,
    # target=min(3000, round(0.15))=0.15, B4=max(0, 0.06-0.15)=0, P=0.06; ded=min(500, 1)=1.
    Case("ci-poor-just-below-second-edge", "inpatient", "county", "A:1",
         x(T="1", E="1", ded="1", S="0", N="0", B1="0", B2="0.80", B3="0.14", B4="0",
           P="0.06"), poor=True,
         acc={"inpatient_basic_paid": EXHAUSTED, "critical_illness_cumulative_r1": "102499.50"}),
    # Across both edges in one claim: y 0 -> 115000: 30000+35000+0.80*15000=77000, P=43000.
    Case("ci-straddle-both-edges", "inpatient", "county", "A:120000",
         x(T="120000", E="120000", ded="500", S="0", N="0", B1="0", B2="77000", B3="0",
           B4="0", P="43000"), acc={"inpatient_basic_paid": EXHAUSTED}),
    # Poor, straddling the second edge: threshold 2500, y 97500 -> 102500:
    # F(before)=0.65*50000+0.75*47500=68125, F(after)=32500+37500+0.85*2500=72125, B2=4000,
    # R2=1000, B3=700, R3=300, target=min(3000, 750)=750, B4=max(0, 300-750)=0, P=300.
    Case("ci-poor-straddle-second-edge", "inpatient", "county", "A:5000",
         x(T="5000", E="5000", ded="500", S="0", N="0", B1="0", B2="4000", B3="700",
           B4="0", P="300"), poor=True,
         acc={"inpatient_basic_paid": EXHAUSTED, "critical_illness_cumulative_r1": "100000"}),
    # Poor, crossing the poor threshold: 2000 -> 3000, F=0.65*500=325, R2=675,
    # B3=round(472.5)=472.50, R3=202.50, target=min(3000, 150)=150, B4=52.50, P=150.
    Case("ci-poor-crossing-threshold", "inpatient", "county", "A:1000",
         x(T="1000", E="1000", ded="500", S="0", N="0", B1="0", B2="325", B3="472.50",
           B4="52.50", P="150"), poor=True,
         acc={"inpatient_basic_paid": EXHAUSTED, "critical_illness_cumulative_r1": "2000"}),
    # Not poor, cap nearly reached: y 195000 -> 205000: F=141000 -> 149000, raw 8000,
    # room 300000-299000=1000, B2=1000, P=9000.
    Case("ci-cap-partial", "inpatient", "county", "A:10000",
         x(T="10000", E="10000", ded="500", S="0", N="0", B1="0", B2="1000", B3="0", B4="0",
           P="9000"),
         acc={"inpatient_basic_paid": EXHAUSTED, "critical_illness_cumulative_r1": "200000",
              "critical_illness_paid": "299000"}),
    # Not poor, cap reached: B2=0, P=10000.
    Case("ci-cap-reached", "inpatient", "county", "A:10000",
         x(T="10000", E="10000", ded="500", S="0", N="0", B1="0", B2="0", B3="0", B4="0",
           P="10000"),
         acc={"inpatient_basic_paid": EXHAUSTED, "critical_illness_cumulative_r1": "200000",
              "critical_illness_paid": "300000"}),
    # Poor: no cap even beyond 300000 paid: y 197500 -> 207500: F=152875 -> 161375, B2=8500,
    # R2=1500, B3=1050, R3=450, target=min(3000, 1500)=1500, B4=0, P=450.
    Case("ci-poor-no-cap", "inpatient", "county", "A:10000",
         x(T="10000", E="10000", ded="500", S="0", N="0", B1="0", B2="8500", B3="1050",
           B4="0", P="450"), poor=True,
         acc={"inpatient_basic_paid": EXHAUSTED, "critical_illness_cumulative_r1": "200000",
              "critical_illness_paid": "350000"}),
    # ---- yearly caps of basic insurance and assistance -----------------------------------
    # Basic cap: raw round(9500*0.80)=7600, room 150000-149000=1000, B1=1000, R1=9000,
    # y=9000-5000=4000, F=0.60*4000=2400, B2=2400, P=9000-2400=6600.
    Case("basic-cap-partial", "inpatient", "county", "A:10000",
         x(T="10000", E="10000", ded="500", S="0", N="0", B1="1000", B2="2400", B3="0",
           B4="0", P="6600"), acc={"inpatient_basic_paid": "149000"}),
    # Assistance cap: B1=7600, R1=2400 < 2500, B3=min(1680, 500)=500, R3=1900,
    # target=min(3000, 1500)=1500, B4=min(1900, 1900-1500)=400, P=1500.
    Case("assistance-cap-partial", "inpatient", "county", "A:10000",
         x(T="10000", E="10000", ded="500", S="0", N="0", B1="7600", B2="0", B3="500",
           B4="400", P="1500"), poor=True, acc={"assistance_paid": "29500"}),
    # ---- rounding: ROUND_HALF_UP where DESIGN says, and only there -----------------------
    # B1=round(0.065)=0.07 (half-even would give 0.06), P=0.03.
    Case("round-outpatient-b1-half-up", "outpatient", "village", "A:0.10",
         x(T="0.10", E="0.10", ded="0", S="0", N="0", B1="0.07", B2="0", B3="0", B4="0",
           P="0.03")),
    # S=round(0.005)=0.01 (half-even 0.00), E=0.04, B1=round(0.024)=0.02, P=0.03.
    Case("round-class-b-half-up", "outpatient", "township", "B:0.05",
         x(T="0.05", E="0.04", ded="0", S="0.01", N="0", B1="0.02", B2="0", B3="0", B4="0",
           P="0.03")),
    # S rounded once per claim: round(0.10*0.10)=0.01, not 0.01+0.01; E=0.09,
    # B1=round(0.045)=0.05, P=0.05.
    Case("round-class-b-once-per-claim", "outpatient", "county", "B:0.05 B:0.05",
         x(T="0.10", E="0.09", ded="0", S="0.01", N="0", B1="0.05", B2="0", B3="0", B4="0",
           P="0.05")),
    # B1=round(0.05*0.90)=round(0.045)=0.05, R1=200.00 < 5000, P=200.00.
    Case("round-inpatient-b1-half-up", "inpatient", "township", "A:200.05",
         x(T="200.05", E="200.05", ded="200", S="0", N="0", B1="0.05", B2="0", B3="0",
           B4="0", P="200.00")),
    # B2 rounds the difference: F(5000.02)-F(5000.01)=0.012-0.006=0.006 -> 0.01, while
    # round(F(after))-round(F(before)) would be 0.01-0.01=0. ded=min(500, 0.01)=0.01.
    Case("round-b2-on-difference", "inpatient", "county", "A:0.01",
         x(T="0.01", E="0.01", ded="0.01", S="0", N="0", B1="0", B2="0.01", B3="0", B4="0",
           P="0.00"),
         acc={"inpatient_basic_paid": EXHAUSTED, "critical_illness_cumulative_r1": "5000.01"}),
    # B3=round(100.15*0.70)=round(70.105)=70.11 (half-even 70.10), R3=30.04,
    # target=round(100.15*0.15)=round(15.0225)=15.02, B4=min(30.04, 30.04-15.02)=15.02,
    # P=15.02.
    Case("round-b3-half-up", "inpatient", "county", "A:100.15",
         x(T="100.15", E="100.15", ded="100.15", S="0", N="0", B1="0", B2="0", B3="70.11",
           B4="15.02", P="15.02"), poor=True, acc={"inpatient_basic_paid": EXHAUSTED}),
    # target=round(1000.30*0.15)=round(150.045)=150.05 (half-even 150.04), R3=1000.30,
    # B4=1000.30-150.05=850.25, P=150.05.
    Case("round-safety-net-target-half-up", "inpatient", "county", "A:1000.30",
         x(T="1000.30", E="1000.30", ded="500", S="0", N="0", B1="0", B2="0", B3="0",
           B4="850.25", P="150.05"), poor=True,
         acc={"inpatient_basic_paid": EXHAUSTED, "assistance_paid": "30000"}),
    # Trailing zeros are still whole fen: 10.000 accepted; B1=round(6.5)=6.50, P=3.50.
    Case("amount-with-trailing-zeros", "outpatient", "village", "A:10.000",
         x(T="10", E="10", ded="0", S="0", N="0", B1="6.50", B2="0", B3="0", B4="0",
           P="3.50")),
]
# fmt: on


def test_enough_scenarios() -> None:
    assert len(CASES) >= 30
    assert len({case.id for case in CASES}) == len(CASES)


class Settled(NamedTuple):
    """One scenario settled: the case, the accumulators before, the result and the expected components."""

    case: Case
    before: YearAccumulators
    result: SettlementResult
    expected: dict[str, Decimal]


@pytest.fixture(params=CASES, ids=[case.id for case in CASES])
def settled(
    request: pytest.FixtureRequest,
    policy: Policy,
    make_claim: Callable[..., ClaimInput],
    make_accumulators: Callable[..., YearAccumulators],
) -> Settled:
    case: Case = request.param
    claim = make_claim(case.kind, case.level, case.items, poor=case.poor, ooc=case.ooc, borne=case.borne)
    before = make_accumulators(**case.acc)
    expected = {code: Decimal(value) for code, value in case.expect.items()}
    return Settled(case, before, settle(policy, claim, before), expected)


def test_scenario(settled: Settled) -> None:
    result, expected = settled.result, settled.expected
    assert list(result.components) == list(COMPONENT_CODES)
    assert dict(result.components) == expected
    for amount in result.components.values():
        assert amount.as_tuple().exponent == -2  # every component is reported to the fen
    paid = [
        result.components[c]
        for c in (
            "basic-insurance",
            "critical-illness",
            "medical-assistance",
            "poverty-safety-net",
            "patient-pay",
        )
    ]
    assert sum(paid) == result.components["total"]
    assert result.deductible_borne == expected["basic-deductible"]


def test_scenario_accumulators_move_by_the_payments(settled: Settled) -> None:
    case, before, result, exp = settled
    deltas, after = result.accumulator_deltas, result.accumulators_after
    if case.kind == "inpatient":
        r1 = exp["eligible"] - exp["basic-insurance"]
        assert deltas == YearAccumulators(
            inpatient_basic_paid=exp["basic-insurance"],
            critical_illness_cumulative_r1=r1,
            critical_illness_paid=exp["critical-illness"],
            assistance_paid=exp["medical-assistance"],
        )
        assert result.episode_deductible_borne_after == Decimal(case.borne) + exp["basic-deductible"]
    else:
        # outpatient: its own pot only; no critical illness, no episode deductible
        assert deltas == YearAccumulators(outpatient_basic_paid=exp["basic-insurance"])
        assert result.episode_deductible_borne_after == Decimal(case.borne)
    assert after == YearAccumulators(
        inpatient_basic_paid=before.inpatient_basic_paid + deltas.inpatient_basic_paid,
        outpatient_basic_paid=before.outpatient_basic_paid + deltas.outpatient_basic_paid,
        critical_illness_cumulative_r1=before.critical_illness_cumulative_r1
        + deltas.critical_illness_cumulative_r1,
        critical_illness_paid=before.critical_illness_paid + deltas.critical_illness_paid,
        assistance_paid=before.assistance_paid + deltas.assistance_paid,
    )
