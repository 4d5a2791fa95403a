"""Whitespace control, a port of handlebars.js's ``compiler/whitespace-control.js``.

Runs once over the parse tree after parsing: ``~`` strips all whitespace on its side, and a
standalone block, ``{{else}}`` or comment line (only whitespace around it on its line) loses
that line's indentation and line break.  It edits ``_Content.value`` in place.
"""

from __future__ import annotations

from typing import Any

from ._js import _WS
from ._parser import _Block, _Comment, _Content, _Program


def _prev_ws(body: list[Any], i: int | None, root: bool) -> bool:
    i = len(body) if i is None else i
    if i < 1:
        return root
    if not isinstance(prev := body[i - 1], _Content):
        return False
    tail = prev.original[len(prev.original.rstrip(_WS)) :]
    return "\n" in tail or (i < 2 and root and tail == prev.original)


def _next_ws(body: list[Any], i: int | None, root: bool) -> bool:
    i = -1 if i is None else i
    if i + 1 >= len(body):
        return root
    if not isinstance(nxt := body[i + 1], _Content):
        return False
    head = nxt.original[: len(nxt.original) - len(nxt.original.lstrip(_WS))]
    return "\n" in head or (i + 2 >= len(body) and root and head == nxt.original)


def _omit_right(body: list[Any], i: int | None, multiple: bool = False) -> None:
    j = 0 if i is None else i + 1
    cur = body[j] if j < len(body) else None
    if not isinstance(cur, _Content) or (cur.right_stripped and not multiple):
        return
    value = cur.value.lstrip(_WS) if multiple else cur.value.lstrip(" \t")
    if not multiple:  # /^[ \t]*\r?\n?/
        value = value[value.startswith("\r") :]
        value = value[value.startswith("\n") :]
    cur.right_stripped, cur.value = value != cur.value, value


def _omit_left(body: list[Any], i: int | None, multiple: bool = False) -> bool:
    j = len(body) - 1 if i is None else i - 1
    cur = body[j] if j >= 0 else None
    if not isinstance(cur, _Content) or (cur.left_stripped and not multiple):
        return False
    value = cur.value.rstrip(_WS if multiple else " \t")
    cur.left_stripped, cur.value = value != cur.value, value
    return cur.left_stripped


def _ws_program(program: _Program, root: bool = False) -> None:
    body = program.body
    for i, node in enumerate(body):
        if isinstance(node, _Block):
            strip = _ws_block(node)
        elif isinstance(node, _Content):
            continue
        else:  # mustaches strip only on `~`; comments can also be standalone
            strip = (*node.strip, False, False, isinstance(node, _Comment))
        prev_ws, next_ws = _prev_ws(body, i, root), _next_ws(body, i, root)
        if strip[1]:
            _omit_right(body, i, True)
        if strip[0]:
            _omit_left(body, i, True)
        if strip[4] and prev_ws and next_ws:
            _omit_right(body, i)
            _omit_left(body, i)
        if strip[2] and prev_ws:
            _omit_right((node.program or node.inverse).body, None)
            _omit_left(body, i)
        if strip[3] and next_ws:
            _omit_right(body, i)
            _omit_left((node.inverse or node.program).body, None)


def _ws_block(block: _Block) -> tuple[bool, bool, bool, bool, bool]:
    for child in (block.program, block.inverse):
        if child:
            _ws_program(child)
    program = block.program or block.inverse
    assert program is not None
    inverse = block.inverse if block.program else None
    first = last = inverse
    if inverse and inverse.chained:
        first = inverse.body[0].program
        while last and last.chained:  # sic: handlebars stops at the first chained branch's own program
            last = last.body[-1].program
    open_strip, close_strip = block.sig.strip, block.close_strip or (False, False)
    strip = (
        open_strip[0],
        close_strip[1],
        _next_ws(program.body, None, False),
        _prev_ws((first or program).body, None, False),
        False,
    )
    if open_strip[1]:
        _omit_right(program.body, None, True)
    if inverse and first and last:
        inverse_strip = block.inverse_strip or (False, False)
        if inverse_strip[0]:
            _omit_left(program.body, None, True)
        if inverse_strip[1]:
            _omit_right(first.body, None, True)
        if close_strip[0]:
            _omit_left(last.body, None, True)
        if _prev_ws(program.body, None, False) and _next_ws(first.body, None, False):  # standalone {{else}}
            _omit_left(program.body, None)
            _omit_right(first.body, None)
    elif close_strip[0]:
        _omit_left(program.body, None, True)
    return strip
