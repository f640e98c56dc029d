"""What a billing sample billed as: spot, on-demand, hibernated, storage or other. Pure.

``spend_by_capacity`` splits invoice-true spend by the capacity each resource billed as at each
sample (see :mod:`spotctl.accounting.series` for which sample's label a growth takes):

* ``storage``: volumes (weights, caches), whatever their state;
* ``hibernated``: VMs in a stopped state that bills storage only (Hyperstack ``HIBERNATED``,
  RunPod ``EXITED``, Vast ``stopped``);
* ``spot`` / ``on_demand``: every other VM state (running, booting, restoring: the machine's
  own rate), by the provider's spot flag, else by the capacity the fleet journal recorded for
  that resource;
* ``other``: account-level series and VMs whose capacity nobody recorded.

A VM in a running state (``ACTIVE``, ``RUNNING``) is *serving*: its time counts as capacity
time for utilisation.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

SPOT, ON_DEMAND, HIBERNATED, STORAGE, OTHER = "spot", "on_demand", "hibernated", "storage", "other"
CATEGORIES = (SPOT, ON_DEMAND, HIBERNATED, STORAGE, OTHER)

HIBERNATED_STATES = frozenset({"hibernated", "shelved", "shelved_offloaded", "exited",
                               "stopped"})
SERVING_STATES = frozenset({"active", "running"})
STORAGE_KINDS = frozenset({"volume", "disk", "storage"})


class Label(NamedTuple):
    """A named tuple, not a dataclass: window accounting keys dicts by (bucket, label) tens of
    thousands of times a month, and a tuple hashes in C."""

    category: str
    serving: bool = False


@lru_cache(maxsize=1024)
def classify(resource_kind: str, state: str | None, spot: bool | None,
             journal_capacity: str | None = None) -> Label:
    kind = (resource_kind or "").lower()
    if kind in STORAGE_KINDS:
        return Label(STORAGE)
    if kind != "vm":
        return Label(OTHER)
    st = (state or "").lower()
    if st in HIBERNATED_STATES:
        return Label(HIBERNATED)
    serving = st in SERVING_STATES
    if spot is None and journal_capacity is not None:
        spot = journal_capacity == "spot"
    if spot is None:
        return Label(OTHER, serving)
    return Label(SPOT if spot else ON_DEMAND, serving)
