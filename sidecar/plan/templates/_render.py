"""Rendering: the whitespace-stripped parse tree to pre-built closures.

Each node becomes a function ``(context, depths, @data) -> text``; the blocks follow handlebars.js's
``helpers/{if,each,with}.js`` and ``runtime.js`` (own-property lookups only, the ``depths`` stack
behind ``../``, HTML escaping of ``{{…}}``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from ._js import _is_empty, _js_keys, _loose_eq, _prop, _truthy, js_string
from ._parser import _Block, _Comment, _Content, _Expr, _Mustache, _Program

_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;", "`": "&#x60;", "=": "&#x3D;"}
)

_Fn = Callable[[Any, tuple[Any, ...], dict[str, Any]], str]  # (context, depths, @data) -> text


def _noop(ctx: Any, depths: tuple[Any, ...], data: dict[str, Any]) -> str:
    return ""


def _eval(e: _Expr, ctx: Any, depths: tuple[Any, ...], data: dict[str, Any]) -> Any:
    if e.kind == "lit":
        return e.value
    if e.kind == "data":  # resolved with `&&`: stops at the first falsy value
        cur: Any = data
        for _ in range(e.depth):
            cur = cur.get("_parent") if isinstance(cur, dict) else None
        for part in e.parts:
            if not _truthy(cur):
                return cur
            cur = _prop(cur, part)
        return cur
    cur = ctx if e.depth == 0 else depths[e.depth] if e.depth < len(depths) else None
    for part in e.parts:
        if cur is None:
            return None
        cur = _prop(cur, part)
    return cur


_NULL_CONTEXT: Mapping[str, Any] = MappingProxyType({})  # container.nullContext: `this` of a null context


def _call(fn: _Fn, ctx: Any, depths: tuple[Any, ...], data: dict[str, Any]) -> str:
    """runtime.wrapProgram: a block body sees a new ``../`` level only when its context changed."""
    same = _loose_eq(ctx, depths[0]) or (ctx is _NULL_CONTEXT and depths[0] is None)
    return fn(ctx, depths if same else (ctx, *depths), data)


def _each(value: Any) -> list[tuple[Any, Any]]:
    if isinstance(value, Mapping):
        return [(k, value[k]) for k in _js_keys(value)]
    return list(enumerate(value)) if isinstance(value, list | tuple) else []


def _compile_block(b: _Block) -> _Fn:
    fn, inverse, sig = _compile(b.program), _compile(b.inverse), b.sig
    if sig.name == "unless":
        fn, inverse = inverse, fn

    def if_(ctx: Any, depths: tuple[Any, ...], data: dict[str, Any]) -> str:
        value = _eval(sig.param, ctx, depths, data)
        zero = sig.zero is not None and _truthy(_eval(sig.zero, ctx, depths, data))
        falsy = (not zero and not _truthy(value)) or _is_empty(value)
        return _call(inverse if falsy else fn, _NULL_CONTEXT if ctx is None else ctx, depths, data)

    def with_(ctx: Any, depths: tuple[Any, ...], data: dict[str, Any]) -> str:
        value = _eval(sig.param, ctx, depths, data)
        if _is_empty(value):
            return _call(inverse, _NULL_CONTEXT if ctx is None else ctx, depths, data)
        return _call(fn, value, depths, data)

    def each(ctx: Any, depths: tuple[Any, ...], data: dict[str, Any]) -> str:
        items = _each(_eval(sig.param, ctx, depths, data))
        if not items:
            return _call(inverse, _NULL_CONTEXT if ctx is None else ctx, depths, data)
        frame, out = {**data, "_parent": data}, []
        for i, (key, value) in enumerate(items):
            frame.update(key=key, index=i, first=i == 0, last=i == len(items) - 1)
            out.append(_call(fn, value, depths, frame))
        return "".join(out)

    return {"each": each, "with": with_}.get(sig.name, if_)


def _compile_mustache(m: _Mustache) -> _Fn:
    expr, escaped = m.expr, m.escaped

    def run(ctx: Any, depths: tuple[Any, ...], data: dict[str, Any]) -> str:
        value = _eval(expr, ctx, depths, data)
        text = "" if value is None else js_string(value)
        return text.translate(_ESCAPES) if escaped else text

    return run


def _compile(program: _Program | None) -> _Fn:
    items: list[str | _Fn] = []
    for node in program.body if program else ():
        piece = (
            node.value
            if isinstance(node, _Content)
            else None
            if isinstance(node, _Comment)
            else (_compile_block(node) if isinstance(node, _Block) else _compile_mustache(node))
        )
        if isinstance(piece, str) and items and isinstance(items[-1], str):
            items[-1] += piece
        elif piece:
            items.append(piece)
    if not items:
        return _noop
    if len(items) == 1 and isinstance(text := items[0], str):
        return lambda ctx, depths, data: text
    fns = [(lambda c, d, x, t=item: t) if isinstance(item, str) else item for item in items]
    return lambda ctx, depths, data: "".join([f(ctx, depths, data) for f in fns])
