"""Type stub of the compiled per-element look of ``IdentifierDictionary.add_header``
(``export/_header_look.c``)."""

from collections.abc import Callable, MutableMapping
from typing import Any

def look(
    items: MutableMapping[Any, Any],
    raw_type: type,
    element_type: type,
    plain: dict[str | None, dict[int, int]],
    converted_plain: dict[tuple[int, str], bool],
    done: dict[tuple[int, str | None, bytes, str], Any],
    charset_key: str,
    memo_max: int,
    pubs: list[Any],
    private: list[tuple[str, str]],
    converted: list[Any],
    slow: Callable[[Any, Any], None],
) -> None: ...
def element_of(items: MutableMapping[Any, Any], tag: int) -> Any: ...
