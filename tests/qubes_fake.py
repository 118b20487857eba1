"""A fake qsf_dom0.qubes.QubeDirectory driven by a table of expected calls.

    directory = ExpectedQubes([("guivm", "work", "sys-gui"), ("label", "work", "red")])
    ...                                 # code under test calls directory.guivm("work") ...
    directory.done()                    # every expected call happened, in order

A result that is an exception instance is raised instead of returned.
"""

from __future__ import annotations

from collections.abc import Iterable


class ExpectedQubes:
    def __init__(self, calls: Iterable[tuple[str, str, object]]) -> None:
        self.calls = list(calls)

    def _next(self, method: str, name: str) -> object:
        assert self.calls, f"unexpected call {method}({name!r})"
        expected_method, expected_name, result = self.calls.pop(0)
        assert (method, name) == (expected_method, expected_name), (
            f"called {method}({name!r}), expected {expected_method}({expected_name!r})")
        if isinstance(result, BaseException):
            raise result
        return result

    def guivm(self, name: str) -> str | None:
        result = self._next("guivm", name)
        assert result is None or isinstance(result, str)
        return result

    def label(self, name: str) -> str:
        result = self._next("label", name)
        assert isinstance(result, str)
        return result

    def done(self) -> None:
        assert not self.calls, f"expected calls not made: {self.calls}"
