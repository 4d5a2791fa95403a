"""The lexer: template text to tokens, a port of handlebars.js's ``handlebars.l``.

Outside ``{{`` everything is CONTENT (with the ``\\{{`` escapes of the "emu" state); inside, the
"mu" state rules below apply in order.  Features outside our subset (sub-expressions, raw blocks,
partials, block parameters, decorators) and lexical errors raise :class:`TemplateError` here.
"""

from __future__ import annotations

import re
from typing import NamedTuple, NoReturn

from ._js import _WS

_LA = r"(?=[=~}\s/.)|])"
# handlebars.l "mu" state rules, in order (first match wins, as in jison).
_MU_RULES = [
    ("SEXPR", r"[()]"),
    ("RAW", r"\{\{\{\{|\}\}\}\}"),
    ("PARTIAL", r"\{\{~?#?>"),
    ("OPEN_BLOCK", r"\{\{~?#\*?"),
    ("OPEN_END", r"\{\{~?/"),
    ("INVERSE", r"\{\{~?\^[\s]*~?\}\}|\{\{~?[\s]*else[\s]*~?\}\}"),
    ("OPEN_INVERSE", r"\{\{~?\^"),
    ("OPEN_CHAIN", r"\{\{~?[\s]*else(?![A-Za-z0-9_])"),
    ("OPEN_UNESCAPED", r"\{\{~?\{"),
    ("LONG_COMMENT", r"\{\{~?!--"),
    ("COMMENT", r"\{\{~?!(?s:.)*?\}\}"),
    ("OPEN", r"\{\{~?[&*]?"),
    ("EQUALS", "="),
    ("ID", r"\.\.|\." + _LA),
    ("SEP", r"[/.]"),
    ("WS", r"[\s]+"),
    ("CLOSE_UNESCAPED", r"\}~?\}\}"),
    ("CLOSE", r"~?\}\}"),
    ("STRING", r'"(?:\\"|[^"])*"|' + r"'(?:\\'|[^'])*'"),
    ("DATA", "@"),
    ("LITERAL", r"(?:true|false|undefined|null|-?[0-9]+(?:\.[0-9]+)?)(?=[~}\s)])"),
    ("BLOCK_PARAMS", r"as[\s]+\|"),
    ("ID", r'[^\s!"#%-,\./;->@\[-\^`\{-~]+' + _LA + r"|\[(?:\\\]|[^\]])*\]"),
    ("INVALID", r"(?s:.)"),
]
_MU = re.compile("|".join(f"(?P<K{i}>{p.replace(chr(92) + 's', _WS)})" for i, (_, p) in enumerate(_MU_RULES)))
_LONG_COMMENT = re.compile(r"(?s:.)*?--~?\}\}")
_UNSUPPORTED = {
    "SEXPR": "sub-expressions are",
    "RAW": "raw blocks are",
    "PARTIAL": "partials are",
    "BLOCK_PARAMS": "block parameters are",
}


class TemplateError(ValueError):
    """A template that handlebars would reject, or that uses a feature outside our subset."""

    def __init__(self, message: str, source: str = "", offset: int = 0) -> None:
        self.offset = offset
        self.line = source.count("\n", 0, offset) + 1
        self.column = offset - source.rfind("\n", 0, offset)
        super().__init__(f"{message} (line {self.line}, column {self.column}, offset {offset})")


class _Tok(NamedTuple):
    kind: str
    text: str
    pos: int


def _fail(source: str, offset: int, message: str) -> NoReturn:
    raise TemplateError(message, source, offset)


def _tokenize(src: str) -> list[_Tok]:
    if "\x00" in src:
        _fail(src, src.index("\x00"), "NUL character in template")
    toks: list[_Tok] = []
    pos = 0
    while (j := src.find("{{", pos)) >= 0:
        text, escaped = src[pos:j], src[pos:j].endswith("\\") and not src[pos:j].endswith("\\\\")
        text = text[:-1] if text.endswith("\\") else text  # `\{{` is literal, `\\{{` a literal `\`
        if text:
            toks.append(_Tok("CONTENT", text, pos))
        if escaped:  # "emu" state: at least 2 chars, up to the next {{, \{{ or \\{{
            ends = [k for k in (src.find(m, j + 2) for m in ("{{", "\\{{", "\\\\{{")) if k >= 0]
            pos = min(ends, default=len(src))
            toks.append(_Tok("CONTENT", src[j:pos], j))
        else:
            pos = _lex_tag(src, j, toks)
    if pos < len(src):
        toks.append(_Tok("CONTENT", src[pos:], pos))
    toks.append(_Tok("EOF", "", len(src)))
    return toks


def _lex_tag(src: str, start: int, toks: list[_Tok]) -> int:
    """Lex one ``{{…}}`` (the "mu" state); return the offset just after it."""
    if src.find("}}", start + 2) < 0:
        _fail(src, start, "unclosed '{{'")
    pos = start
    while pos < len(src):
        m = _MU.match(src, pos)
        assert m is not None and m.lastgroup is not None  # the INVALID rule matches any character
        kind, text = _MU_RULES[int(m.lastgroup[1:])][0], m.group()
        if kind == "LONG_COMMENT":
            if not (m := _LONG_COMMENT.match(src, pos)):
                _fail(src, pos, "unclosed '{{!--' comment")
            kind, text = "COMMENT", m.group()
        if kind in _UNSUPPORTED:
            _fail(src, pos, f"{_UNSUPPORTED[kind]} not supported")
        if "*" in text and kind in ("OPEN", "OPEN_BLOCK"):
            _fail(src, pos, "decorators are not supported")
        if kind == "INVALID":
            _fail(src, pos, f"unexpected {text!r} inside '{{{{'")
        if kind != "WS":
            toks.append(_Tok(kind, text, pos))
        pos = m.end()
        if kind in ("CLOSE", "CLOSE_UNESCAPED", "INVERSE", "COMMENT"):
            return pos
    _fail(src, start, "unclosed '{{'")
