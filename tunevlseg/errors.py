"""Walking an exception's chain: the error a library raised is often a wrapper of the one that
says what happened (Optuna's StorageInternalError around psycopg2's, Hugging Face's around an
OSError), so classifying or reporting an error means looking through the chain."""

from __future__ import annotations

from collections.abc import Iterator


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then what it was raised from (or during), innermost last.

    Follows ``__cause__``, else ``__context__`` unless suppressed (``raise ... from None``);
    a cycle ends the walk.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
