"""Who pays each charge line: a claim's settlement components shared out over its items, to the fen.

DESIGN 5 settles a claim as a whole (deductible, caps and bands apply to sums), and DESIGN 9 has the
ExplanationOfBenefit show the payer of each component on the items too (`item.adjudication`). The
sharing is an allocation, not a second calculation, made exactly in whole fen:

- an item's `total` is its amount; class C items are wholly `out-of-list`; the claim's
  `class-b-self-pay` is shared over its class B items in proportion to their amounts; an item's
  `eligible` is what is left of it (so eligible sums to E = T - N - S);
- the funds, in their fixed order (basic, critical illness, medical assistance, safety net), are
  each shared over the items in proportion to the eligible amount that the funds before them left
  on each item: no item gets more from the funds than its eligible amount;
- `basic-deductible` is shared in proportion to the eligible amounts (it is part of what the
  patient bears of them); an item's `patient-pay` is its amount less what the funds pay on it.

Every share is whole fen; the largest remainders get the fen left over (lowest line first on a
tie), so each component's shares sum exactly to the claim's component.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Final

from referral_service.settlement.calculator import COMPONENT_CODES

FUNDS: Final[tuple[str, ...]] = (
    "basic-insurance", "critical-illness", "medical-assistance", "poverty-safety-net",
)
_FEN: Final = Decimal("0.01")


def _fen(amount: Decimal) -> int:
    fen = amount * 100
    if fen != fen.to_integral_value():
        raise ValueError(f"{amount} is not whole fen")
    return int(fen)


def share(total: int, weights: Sequence[int], caps: Sequence[int]) -> list[int]:
    """`total` fen split in proportion to `weights`, each share at most its cap, summing exactly to it.

    Largest remainder: each share is first the whole-fen part of its exact proportion (cut to its
    cap), then the fen left go one by one to the largest remainders with room under their caps.
    """
    if total < 0 or any(w < 0 for w in weights) or any(c < 0 for c in caps):
        raise ValueError("amounts to share must not be negative")
    if total > sum(caps):
        raise ValueError(f"{total} fen do not fit under the caps ({sum(caps)})")
    weight = sum(weights)
    if total == 0:
        return [0] * len(weights)
    if weight == 0:  # nothing to go by: in proportion to the room
        weights, weight = caps, sum(caps)
    shares = [min(total * w // weight, cap) for w, cap in zip(weights, caps, strict=True)]
    left = total - sum(shares)
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % weight), i))
    while left:
        for i in by_remainder:
            if left and shares[i] < caps[i]:
                shares[i] += 1
                left -= 1
    return shares


def allocate(
    items: Sequence[tuple[Decimal, str]], components: Mapping[str, Decimal]
) -> list[dict[str, Decimal]]:
    """The ten settlement components of each item (amount, charge class), summing to the claim's.

    `components` are the claim's (`SettlementResult.components`); their shares per item follow the
    rules in this module's docstring. Every item's funds and patient pay add up to its amount.
    """
    amounts = [_fen(amount) for amount, _ in items]
    b_amounts = [a if cls == "B" else 0 for a, (_, cls) in zip(amounts, items, strict=True)]
    out_of_list = [a if cls == "C" else 0 for a, (_, cls) in zip(amounts, items, strict=True)]
    self_pay = share(_fen(components["class-b-self-pay"]), b_amounts, b_amounts)
    eligible = [a - n - s for a, n, s in zip(amounts, out_of_list, self_pay, strict=True)]
    if sum(amounts) != _fen(components["total"]) or sum(eligible) != _fen(components["eligible"]):
        raise ValueError("the components are not those of these items")
    deductible = share(_fen(components["basic-deductible"]), eligible, eligible)
    room = list(eligible)
    funds: dict[str, list[int]] = {}
    for fund in FUNDS:
        funds[fund] = share(_fen(components[fund]), room, room)
        room = [r - f for r, f in zip(room, funds[fund], strict=True)]
    rows = []
    for i, amount in enumerate(amounts):
        paid = sum(funds[fund][i] for fund in FUNDS)
        fen = {
            "total": amount,
            "eligible": eligible[i],
            "basic-deductible": deductible[i],
            **{fund: funds[fund][i] for fund in FUNDS},
            "class-b-self-pay": self_pay[i],
            "out-of-list": out_of_list[i],
            "patient-pay": amount - paid,
        }
        rows.append({code: Decimal(fen[code]) * _FEN for code in COMPONENT_CODES})
    return rows
