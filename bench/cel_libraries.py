"""Which CEL library the server filters with: compile and per-evaluation cost of the two
maintained Python CEL implementations, on the expressions and frames a filter sees.

- ``common-expression-language`` (import ``cel``): Python bindings to the Rust ``cel`` crate.
- ``cel-python`` (import ``celpy``): a pure Python implementation (Lark parser).

Three figures per library and expression: ``compile``; ``evaluate`` (build the activation
from Python values, then run the program: what a one-off check costs); and the split the hub
uses, ``load`` (the activation built once per event) and ``evaluate_loaded`` (the program run
on it, once per distinct expression and topic). Both libraries must be installed (``pip
install common-expression-language cel-python``); the server itself needs only the chosen one.

    python -m bench.cel_libraries --rounds 5 --out bench/results/cel-libraries.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXPRESSIONS = [
    "data.score <= 2",
    'event == "created" && data.score <= 2 && data.gameId in ["1", "2", "42"]',
    'data.comment != null && data.comment.contains("refund") || data.version > 3',
]

DATA = {
    "id": "r_01KCBENCH",
    "gameId": "42",
    "userId": "7",
    "score": 2,
    "comment": "asked for a refund",
    "timestamp": "2026-12-07T20:00:00.000Z",
    "createdAt": "2026-12-07T20:00:00.000Z",
    "updatedAt": "2026-12-07T20:00:00.000Z",
    "version": 4,
}


def _per_call_us(call: Callable[[], Any], count: int, rounds: int) -> dict[str, float]:
    """Median and best of ``rounds`` timings of ``count`` calls, in microseconds per call."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(count):
            call()
        samples.append((time.perf_counter() - started) / count * 1e6)
    return {"median_us": round(statistics.median(samples), 3), "best_us": round(min(samples), 3)}


def _rust(expression: str, rounds: int) -> dict[str, Any]:
    import cel

    fields = ("gameId", "userId", "score", "comment", "version")

    def activation() -> dict[str, Any]:
        return {
            "event": "updated",
            "topic": "rating.global",
            "offset": 1234,
            "data": {name: DATA[name] for name in fields},
        }

    program = cel.compile(expression)
    assert isinstance(program.execute(activation()), bool)
    context = cel.Context()

    def load() -> None:
        for name, value in activation().items():
            context.add_variable(name, value)

    load()
    return {
        "compile": _per_call_us(lambda: cel.compile(expression), 200, rounds),
        "evaluate": _per_call_us(lambda: program.execute(activation()), 5000, rounds),
        "load": _per_call_us(load, 5000, rounds),
        "evaluate_loaded": _per_call_us(lambda: program.execute(context), 20000, rounds),
    }


def _python(expression: str, rounds: int) -> dict[str, Any]:
    import celpy
    from celpy import celtypes

    environment = celpy.Environment()
    fields = ("gameId", "userId", "score", "comment", "version")

    def activation() -> dict[str, Any]:
        return {
            "event": celtypes.StringType("updated"),
            "topic": celtypes.StringType("rating.global"),
            "offset": celtypes.IntType(1234),
            "data": celpy.json_to_cel({name: DATA[name] for name in fields}),
        }

    def compile_once() -> Any:
        return environment.program(environment.compile(expression))

    program = compile_once()
    assert bool(program.evaluate(activation())) in (True, False)
    loaded = activation()
    return {
        "compile": _per_call_us(compile_once, 20, rounds),
        "evaluate": _per_call_us(lambda: program.evaluate(activation()), 500, rounds),
        "load": _per_call_us(activation, 2000, rounds),
        "evaluate_loaded": _per_call_us(lambda: program.evaluate(loaded), 500, rounds),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from importlib.metadata import version

    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "note": "2 shared cores under other load: compare the libraries, not the absolutes",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "libraries": {
            "common-expression-language": version("common-expression-language"),
            "cel-python": version("cel-python"),
        },
        "expressions": {},
    }
    for expression in EXPRESSIONS:
        result["expressions"][expression] = {
            "common-expression-language": _rust(expression, args.rounds),
            "cel-python": _python(expression, args.rounds),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
