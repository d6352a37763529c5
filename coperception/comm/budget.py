"""Rate control: fit a message to a byte budget, verified by encoding.

A budget is bytes per sending agent per frame (one broadcast). Every strategy builds its message
as a function of one integer ``k`` -- the number of cells it sends, taken in its own priority
order -- and :func:`fit_prefix` finds the largest ``k`` whose **encoded** message fits. Nothing is
estimated: the size that is compared with the budget is ``len(wire.encode(message))``, the very
bytes that are sent. Sizes grow with ``k`` up to a few bytes of entropy-coder jitter, so a binary
search followed by a short upward scan lands on the largest fitting prefix (and it never returns
one that does not fit).

What happens when the budget is small (documented behaviour, tested):

* ``budget is None``: unlimited; the strategy sends everything it selected.
* ``budget < wire.min_message_bytes(sender)`` (the header + pose + CRC of an :class:`Empty`
  message): nothing at all can be sent; :func:`check_budget` raises
  :class:`~coperception.errors.BudgetError` naming the budget and the minimum, before any work.
* otherwise, if not even one cell fits, the agent sends an explicit :class:`Empty` message
  (announcing its pose) -- never a message over budget.
"""

from __future__ import annotations

from typing import Callable, Sequence

from coperception.comm.message import Message
from coperception.comm.wire import WireLimits, encode, min_message_bytes
from coperception.errors import BudgetError

#: After the binary search, how many larger prefixes are tried (entropy-coded sizes are not
#: strictly monotone in k: adding a cell can shorten the index stream by a byte or two).
_SCAN = 8


def check_budget(budget: int | None, sender_id: str) -> None:
    """Raise :class:`BudgetError` if ``budget`` cannot carry even an empty message from ``sender_id``."""
    if budget is None:
        return
    if int(budget) != budget or budget < 0:
        raise BudgetError(f"budget must be a non-negative integer number of bytes, got {budget!r}")
    smallest = min_message_bytes(sender_id)
    if budget < smallest:
        raise BudgetError(f"budget {budget} B per agent per frame is below the smallest message agent "
                          f"{sender_id!r} can send ({smallest} B: header, pose and CRC of an Empty payload); "
                          f"raise the budget to at least {smallest} B or disable communication")


def fit_prefix(build: Callable[[int], Message], max_k: int, budget: int | None,
               limits: WireLimits = WireLimits(), item_min_bytes: int = 0) -> tuple[Message, bytes, int]:
    """The message with the largest ``k`` in ``[0, max_k]`` whose encoding fits ``budget``.

    build: ``k -> Message``; ``build(0)`` must be the smallest message (an Empty payload or the
        strategy's fixed part) and must fit -- otherwise :class:`BudgetError`.
    item_min_bytes: a lower bound of what each item adds to the encoding (e.g. C x 2 bytes of fp16
        values per cell; 0 if unknown). It only narrows the search (fewer trial encodings); the
        answer is still decided by encoding.
    Returns ``(message, encoded bytes, k)``; ``len(bytes) <= budget`` always holds.
    """
    max_k = int(max_k)
    if max_k < 0:
        raise ValueError(f"max_k must be >= 0, got {max_k}")
    if budget is None:
        msg = build(max_k)
        return msg, encode(msg, limits), max_k
    cache: dict[int, tuple[Message, bytes]] = {}

    def size(k: int) -> int:
        if k not in cache:
            msg = build(k)
            cache[k] = (msg, encode(msg, limits))
        return len(cache[k][1])

    if size(0) > budget:
        msg = cache[0][0]
        raise BudgetError(f"budget {budget} B: the smallest message of agent {msg.sender_id!r} "
                          f"({msg.payload.kind.name}) is {size(0)} B")
    if item_min_bytes > 0:  # more items than this cannot fit whatever the entropy coder does
        max_k = min(max_k, (budget - size(0)) // int(item_min_bytes) + 1)
    if size(max_k) <= budget:
        return (*cache[max_k], max_k)
    lo, hi = 0, max_k  # size(lo) fits, size(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if size(mid) <= budget:
            lo = mid
        else:
            hi = mid
    for k in range(lo + 1, min(max_k, lo + _SCAN) + 1):
        if size(k) <= budget:
            lo = k
    return (*cache[lo], lo)


def fit_first(candidates: Sequence[Callable[[], Message]], budget: int | None,
              limits: WireLimits = WireLimits()) -> tuple[Message, bytes, int]:
    """The first candidate (most preferred first) whose encoding fits ``budget``.

    Returns ``(message, bytes, index)``. The last candidate should be the fallback (an Empty
    message); if none fits, :class:`BudgetError`.
    """
    sizes = []
    for i, make in enumerate(candidates):
        msg = make()
        data = encode(msg, limits)
        if budget is None or len(data) <= budget:
            return msg, data, i
        sizes.append(len(data))
    raise BudgetError(f"budget {budget} B: no candidate message fits (sizes {sizes} B)")
