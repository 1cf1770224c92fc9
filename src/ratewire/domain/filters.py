"""Server-side event filters: CEL expressions over a ``rating_update`` frame (docs/protocol.md,
"Filters"). Pure code, no I/O.

An expression sees ``event``, ``topic``, ``offset`` and ``data`` (the rating's ``score``,
``gameId``, ``userId``, ``comment``, ``version``) and must give a bool. It is compiled once, by
:func:`compile_filter`, which refuses with :class:`BadFilter` what is wrong: too long, a syntax
error, an unknown field, a wrong type, or too costly. Evaluation uses the bindings to the Rust
``cel`` crate (``common-expression-language``): bench/cel_libraries.py measured them 4-11x
faster than the pure Python ``cel-python`` at compiling and several hundred times faster at
evaluating a loaded frame.

That library has no static type checker, so checking at compile time is done here in three
steps: the names the expression reads (every ``data.X`` must be a declared field, every free
variable a declared root), then evaluation against probe frames of every event kind, in which
an unknown field or an operator applied to the wrong type raises (CEL never coerces); a result
that is not a bool is refused too. A type error hidden in a branch no probe reaches is not
caught: at delivery any evaluation error means "no match" (a filter fails closed).

Cost: an expression is at most :data:`MAX_FILTER_CHARS` long and holds at most one
comprehension macro (``all``, ``exists``, ``exists_one``, ``map``, ``filter``), over at most
:data:`MAX_COMPREHENSION_ITEMS` items (the fields are scalars: a comprehension can only range
over a literal in the expression; two could nest, which is quadratic), so its evaluation is
bounded by its length times a 2,000-character comment. ``matches()`` is refused: the library
compiles its regular expression on every evaluation, and a six-character pattern
(``\\w{200}``) measured 0.8 s an event here; ``contains``, ``startsWith`` and ``endsWith``
cover what filters need.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import cel

#: The longest expression accepted (characters).
MAX_FILTER_CHARS: Final = 1024
#: Comprehension macros an expression may hold (more could nest: quadratic or worse).
MAX_COMPREHENSIONS: Final = 1
#: Items a comprehension may range over (counted as the expression's commas, an upper bound):
#: 32 ``contains`` over a 2,000-character comment cost well under a millisecond.
MAX_COMPREHENSION_ITEMS: Final = 32

#: The frame's top-level names and their CEL types.
ROOTS: Final = {"event": "string", "topic": "string", "offset": "int", "data": "map"}
#: The rating fields under ``data`` and their CEL types (``comment`` may also be null).
DATA_FIELDS: Final = {
    "score": "int",
    "gameId": "string",
    "userId": "string",
    "comment": "string or null",
    "version": "int",
}

_COMPREHENSION = re.compile(r"\.\s*(all|exists_one|exists|map|filter)\s*\(")
_MATCHES = re.compile(r"\bmatches\s*\(")
_DATA_FIELD = re.compile(r"\bdata\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")


@functools.cache
def _cel() -> ModuleType:
    """The CEL library, imported on first use: its package imports its own command line
    (typer, rich, prompt_toolkit), which a server that never sees a filter need not load."""
    import cel

    return cel


class BadFilter(ValueError):
    """A filter expression was refused; ``message`` says what is wrong (sent to the client as
    a ``bad_filter`` error)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FilterInput:
    """One frame's values as a filter reads them, reused across events and expressions.

    The hub loads it once per event (:meth:`load`) and places it once per topic
    (:meth:`place`), then tests every distinct expression against it: converting the rating
    to CEL values is most of an evaluation's cost, and this pays it once per event."""

    __slots__ = ("_context",)

    def __init__(self) -> None:
        self._context = _cel().Context()

    def load(self, event: str, data: Mapping[str, Any]) -> None:
        """Set the event kind and the rating (``data`` as in the frame; other keys ignored)."""
        context = self._context
        context.add_variable("event", event)
        context.add_variable(
            "data",
            {
                "score": data.get("score"),
                "gameId": data.get("gameId"),
                "userId": data.get("userId"),
                "comment": data.get("comment"),
                "version": data.get("version"),
            },
        )

    def place(self, topic: str, offset: int) -> None:
        """Set the topic the frame is for and its offset there."""
        self._context.add_variable("topic", topic)
        self._context.add_variable("offset", offset)


class EventFilter:
    """A compiled filter. Compare and group filters by :attr:`source` (the expression)."""

    __slots__ = ("_program", "source")

    def __init__(self, source: str, program: cel.Program) -> None:
        #: The expression as the client gave it.
        self.source = source
        self._program = program

    def __repr__(self) -> str:
        return f"EventFilter({self.source!r})"

    def test(self, frame: FilterInput) -> bool:
        """Whether the frame loaded in ``frame`` passes (an evaluation error: it does not)."""
        try:
            return self._program.execute(frame._context) is True
        except Exception:  # fail closed: null comment, overflow, bad regex...
            return False

    def matches(self, event: str, topic: str, offset: int, data: Mapping[str, Any]) -> bool:
        """Whether the frame ``{"event":event,"topic":topic,"offset":offset,"data":data}``
        passes. For one-off checks; a loop over many filters reuses a :class:`FilterInput`."""
        frame = FilterInput()
        frame.load(event, data)
        frame.place(topic, offset)
        return self.test(frame)


def compile_filter(expression: str) -> EventFilter:
    """Compile and check ``expression``; :class:`BadFilter` names what is wrong.

    Compiled filters are kept (the last 1,024 distinct expressions): a thousand subscribers
    with one expression compile it once, and get the same :class:`EventFilter`."""
    if not isinstance(expression, str) or not expression.strip():
        raise BadFilter("filter must be a non-empty CEL expression")
    return _compile(expression)


@functools.lru_cache(maxsize=1024)
def _compile(expression: str) -> EventFilter:
    if len(expression) > MAX_FILTER_CHARS:
        raise BadFilter(
            f"filter too long: {len(expression)} characters, at most {MAX_FILTER_CHARS}"
        )
    code = _code_only(expression)
    macros = _COMPREHENSION.findall(code)
    if len(macros) > MAX_COMPREHENSIONS:
        raise BadFilter(
            f"filter too costly: {len(macros)} comprehensions ({', '.join(macros)}); at most "
            f"{MAX_COMPREHENSIONS} (the fields are scalars: use `in [...]` for membership)"
        )
    if macros and code.count(",") > MAX_COMPREHENSION_ITEMS:
        raise BadFilter(
            f"filter too costly: with a comprehension, its lists may hold at most "
            f"{MAX_COMPREHENSION_ITEMS} items in all (counted by commas: {code.count(',')})"
        )
    if _MATCHES.search(code):  # and again on the compiled program, below
        raise BadFilter(
            "filter too costly: matches() is not available (its regular expression would be "
            "compiled for every event); use contains(), startsWith() or endsWith()"
        )
    for name in _DATA_FIELD.findall(code):
        if name not in DATA_FIELDS:
            raise BadFilter(f"unknown field data.{name}; fields are {_field_list()}")
    try:
        program = _cel().compile(expression)
    except Exception as exc:  # the library raises ValueError, or worse
        raise BadFilter(f"filter syntax error: {_parse_error(exc)}") from None
    if "matches" in program.functions():
        raise BadFilter(
            "filter too costly: matches() is not available (its regular expression would be "
            "compiled for every event); use contains(), startsWith() or endsWith()"
        )
    if not macros:
        # Comprehension variables are free names too; without one, every name is a root.
        for name in program.variables():
            if name not in ROOTS:
                raise BadFilter(f"unknown field {name}; fields are {_field_list()}")
    compiled = EventFilter(expression, program)
    for probe in _probes():
        _check_on(compiled, program, probe)
    return compiled


def subscription_filter(expression: str | None, topic: str) -> EventFilter | None:
    """The filter of a subscription to ``topic`` (None without ``expression``), for every
    transport; :class:`BadFilter` if refused. On ``rating.game.*`` it is tested against each
    game's own frame (``topic`` and ``offset`` are that game's)."""
    if expression is None:
        return None
    return compile_filter(expression)


def _check_on(compiled: EventFilter, program: cel.Program, frame: FilterInput) -> None:
    try:
        result = program.execute(frame._context)
    except KeyError as exc:
        raise BadFilter(f"unknown field {exc.args[0]}; fields are {_field_list()}") from None
    except TypeError as exc:
        raise BadFilter(
            f"wrong type in filter: {_first_sentence(exc)} (CEL does not convert: compare "
            "score, version and offset with integers, the others with strings)"
        ) from None
    except RuntimeError as exc:
        raise BadFilter(f"unknown field or function in filter: {_first_sentence(exc)}") from None
    except Exception as exc:  # division by zero, overflow, a bad regex...
        raise BadFilter(f"filter fails on a valid frame: {_first_sentence(exc)}") from None
    if not isinstance(result, bool):
        kind = "null" if result is None else type(result).__name__
        raise BadFilter(f"wrong type: filter must give a bool, {compiled.source!r} gives {kind}")


def _probe(event: str, topic: str, offset: int, score: int, comment: str) -> FilterInput:
    frame = FilterInput()
    frame.load(
        event,
        {"score": score, "gameId": "42", "userId": "7", "comment": comment, "version": 2},
    )
    frame.place(topic, offset)
    return frame


@functools.cache
def _probes() -> tuple[FilterInput, ...]:
    """One frame per event kind, with every field set and of its declared type, each
    branch's values different, so that a type error is reached in as many branches as
    cheaply possible."""
    return (
        _probe("created", "rating.global", 1, 1, "probe"),
        _probe("updated", "rating.game.42", 7, 5, ""),
        _probe("deleted", "rating.user.7", 3, 3, "a comment"),
    )


def _code_only(expression: str) -> str:
    """``expression`` with its string literals emptied and its comments blanked, scanned left
    to right as CEL's lexer does (a quote inside a comment, or ``//`` inside a string, is
    not what it seems): the text the checks above look for names and calls in."""
    out: list[str] = []
    at, end = 0, len(expression)
    while at < end:
        char = expression[at]
        if expression.startswith("//", at):
            newline = expression.find("\n", at)
            at = end if newline < 0 else newline
            out.append(" ")
            continue
        if char not in "'\"":
            out.append(char)
            at += 1
            continue
        prefix = re.search(r"[A-Za-z_]*$", expression[:at])
        raw = prefix is not None and prefix.group().lower() in ("r", "rb", "br")
        quote = char * 3 if expression.startswith(char * 3, at) else char
        at += len(quote)
        while at < end and not expression.startswith(quote, at):
            if expression[at] == "\\" and not raw:
                at += 1
            elif len(quote) == 1 and expression[at] == "\n":
                break  # unterminated: the parser refuses it
            at += 1
        at += len(quote)
        out.append('""')
    return "".join(out)


def _field_list() -> str:
    return ", ".join(
        [*(name for name in ROOTS if name != "data"), *(f"data.{n}" for n in DATA_FIELDS)]
    )


def _first_sentence(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0].rstrip(".")


def _parse_error(exc: BaseException) -> str:
    """The library's message without the echo of the input: ``line:column: what``."""
    text = str(exc)
    marker = text.find("<input>:")
    if marker >= 0:
        text = text[marker + len("<input>:") :]
    return text.strip().splitlines()[0] if text.strip() else "cannot be parsed"
