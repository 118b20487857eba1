"""What dom0 needs to know about a qube to ask about it: its GUI domain and its label.

`QubeDirectory` is the interface; `AdminQubeDirectory` answers from qubesadmin
(imported only when first used, so that nothing else in qsf_dom0 needs it and the
tests and qsf_sim run without it). Tests use a fake driven by a table of expected
calls (tests/qubes_fake.py); qsf_sim has its own (qsf_sim.gui_domain).
"""

from __future__ import annotations

from typing import Any, Final, Protocol

ADMIN_QUBE: Final = "dom0"
DEFAULT_LABEL: Final = "black"


class QubeLookupError(Exception):
    """The qube's properties could not be read."""


class QubeDirectory(Protocol):
    def guivm(self, name: str) -> str | None:
        """The GUI domain that shows `name`'s windows; None means dom0."""
        ...

    def label(self, name: str) -> str:
        """The name of `name`'s label (red, orange, ... black)."""
        ...


class AdminQubeDirectory:
    """The real one, through the Qubes Admin API (dom0 only)."""

    def __init__(self) -> None:
        self._app: Any = None

    def _vm(self, name: str) -> Any:
        try:
            if self._app is None:
                import qubesadmin  # type: ignore[import-not-found]

                self._app = qubesadmin.Qubes()
            return self._app.domains[name]
        except Exception as error:  # qubesadmin raises many kinds; all mean "unknown"
            raise QubeLookupError(f"{name}: {error}") from error

    def guivm(self, name: str) -> str | None:
        try:
            value = getattr(self._vm(name), "guivm", None)
        except QubeLookupError:
            raise
        except Exception as error:
            raise QubeLookupError(f"{name}: guivm: {error}") from error
        text = str(value) if value else ""
        return text or None

    def label(self, name: str) -> str:
        try:
            return str(self._vm(name).label.name)
        except QubeLookupError:
            raise
        except Exception as error:
            raise QubeLookupError(f"{name}: label: {error}") from error
