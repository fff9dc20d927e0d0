"""Exceptions of the lab package; :mod:`agent.lab.topology` re-exports them.

Every message says what failed and what to do about it.
"""

from __future__ import annotations


class TopologyError(Exception):
    """Base class of every error the lab raises."""


class NotRootError(TopologyError):
    """Namespaces and veths need root."""


class InvalidNameError(TopologyError, ValueError):
    """A namespace or interface name is too long or has characters Linux refuses."""


class MissingFeatureError(TopologyError):
    """The running kernel lacks something the topology needs; the message names it."""


class TopologyBuildError(TopologyError):
    """A build step failed; the message names the step, namespace and interface."""


class TeardownError(TopologyError):
    """Something could not be removed; the message lists what is left."""


class NamespaceError(TopologyError):
    """A namespace operation failed (missing namespace, missing tool, setns error)."""


class NamespaceCallError(NamespaceError):
    """A callable run inside a namespace raised; the message carries its traceback."""
