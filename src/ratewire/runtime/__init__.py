"""One ratewire instance, one job a module: ``assembly`` builds the parts from settings,
``delivery`` is the ordered path a committed event takes, ``housekeeping`` the background
retention, ``lifecycle`` starts, serves and stops it, ``workers`` runs several on one host,
``banner`` tells a person where to go once it listens."""

from ratewire.runtime.lifecycle import Runtime

__all__ = ["Runtime"]
