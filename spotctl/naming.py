"""What spotctl names a tier's machines, and which tier a provider resource belongs to.

The fleet names and labels what it creates (:func:`resource_name_for`, ``TIER_LABEL_PREFIX``);
billing attributes what the provider bills back to a tier by the same rule
(:func:`tier_for_resource`). Both import it from here, so neither imports the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spotctl.config import Config

TIER_LABEL_PREFIX = "spotctl-tier="


def resource_name_for(tier: str) -> str:
    """The name spotctl gives a tier's VM (and its weights volume gets ``-weights``)."""
    return f"spotctl-{tier}"


def tier_for_resource(name: str | None, labels: list[str] | None, cfg: Config) -> str | None:
    """Which configured tier a provider resource belongs to.

    A label ``spotctl-tier=<tier>`` wins; else a name ``spotctl-<tier>`` or
    ``spotctl-<tier>-<suffix>`` (longest configured tier name first). Volumes holding a tier's
    weights (``spotctl-<tier>-weights``) are attributed to that tier too.
    """
    known = {t.name for t in cfg.tiers}
    for label in labels or []:
        if isinstance(label, str) and label.startswith(TIER_LABEL_PREFIX):
            tier = label[len(TIER_LABEL_PREFIX):]
            return tier if tier in known else None
    if not name or not name.startswith("spotctl-"):
        return None
    rest = name[len("spotctl-"):]
    for tier in sorted(known, key=len, reverse=True):
        if rest == tier or rest.startswith(tier + "-"):
            return tier
    return None
