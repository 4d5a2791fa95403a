"""The parser: tokens to a parse tree, a port of handlebars.js's ``handlebars.yy`` and ``helpers.js``.

Builds the tree (``_Program`` of ``_Content``/``_Comment``/``_Mustache``/``_Block`` nodes) and raises
:class:`TemplateError` for anything handlebars.js would reject or that is outside our subset:
helper calls, unknown blocks, mismatched or unclosed blocks, nesting deeper than ``_MAX_DEPTH``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

from ._js import js_string
from ._lexer import _fail, _Tok, _tokenize

_MAX_DEPTH = 32
_BLOCKS = ("if", "unless", "each", "with")
_HELPERS = {*_BLOCKS, "log", "lookup", "helperMissing", "blockHelperMissing"}
_LINE_TERMINATORS = "\n\r\u2028\u2029"


class _Expr(NamedTuple):
    kind: str  # "ctx" (context path), "data" (@path) or "lit"
    depth: int
    parts: tuple[str, ...]
    value: Any
    original: str


class _Sig(NamedTuple):  # an opening block tag: {{#name param includeZero=…}}
    name: str
    param: _Expr
    zero: _Expr | None
    strip: tuple[bool, bool]


@dataclass
class _Content:
    original: str
    value: str
    left_stripped: bool = False
    right_stripped: bool = False


@dataclass
class _Comment:
    strip: tuple[bool, bool]


@dataclass
class _Mustache:
    expr: _Expr
    escaped: bool
    strip: tuple[bool, bool]


@dataclass
class _Program:
    body: list[Any]
    chained: bool = False


@dataclass
class _Block:
    sig: _Sig
    program: _Program | None
    inverse: _Program | None
    inverse_strip: tuple[bool, bool] | None
    close_strip: tuple[bool, bool] | None


class _Inv(NamedTuple):  # {{else}} program, or an {{else if …}} chain wrapped in a chained program
    strip: tuple[bool, bool]
    program: _Program


def _strip(open_text: str, close_text: str) -> tuple[bool, bool]:
    return open_text[2:3] == "~", close_text[-3:-2] == "~"


def _segment(token: str) -> str:  # helpers.id: `[a b]` names the key "a b"
    if token[:1] == "[" and token[-1:] == "]" and not any(c in _LINE_TERMINATORS for c in token):
        return token[1:-1]
    return token


class _Parser:
    def __init__(self, src: str) -> None:
        self.src, self.toks, self.i = src, _tokenize(src), 0

    def fail(self, tok: _Tok, message: str) -> NoReturn:
        _fail(self.src, tok.pos, message)

    def next(self) -> _Tok:
        self.i += 1
        return self.toks[self.i - 1]

    def expect(self, kind: str, what: str) -> _Tok:
        tok = self.next()
        if tok.kind != kind:
            self.fail(tok, f"expected {what}, found {tok.text or 'end of template'!r}")
        return tok

    def program(self, depth: int) -> _Program:
        body: list[Any] = []
        while (tok := self.toks[self.i]).kind not in ("EOF", "INVERSE", "OPEN_CHAIN", "OPEN_END"):
            self.i += 1
            if tok.kind == "CONTENT":
                body.append(_Content(tok.text, tok.text))
            elif tok.kind == "COMMENT":
                body.append(_Comment(_strip(tok.text, tok.text)))
            elif tok.kind in ("OPEN", "OPEN_UNESCAPED"):
                body.append(self.mustache(tok))
            elif tok.kind in ("OPEN_BLOCK", "OPEN_INVERSE"):
                body.append(self.block(tok, depth))
            else:
                self.fail(tok, f"unexpected {tok.text!r}")
        return _Program(body)

    def path(self, tok: _Tok, data: bool) -> _Expr:
        segments, original, depth = [(tok.text, "")], "@" if data else "", 0
        parts: list[str] = []
        while self.toks[self.i].kind == "SEP":
            sep = self.next().text
            segments.append((self.expect("ID", "a name after " + repr(sep)).text, sep))
        for token, sep in segments:  # helpers.preparePath
            part = _segment(token)
            original += sep + part
            if part == token and part in ("..", ".", "this"):
                if parts:
                    self.fail(tok, f"invalid path: {original}")
                depth += part == ".."
            else:
                parts.append(part)
        return _Expr("data" if data else "ctx", depth, tuple(parts), None, original)

    def expr(self, as_name: bool = False) -> _Expr:
        tok = self.next()
        if tok.kind in ("ID", "DATA"):
            data = tok.kind == "DATA"
            return self.path(self.expect("ID", "a name after '@'") if data else tok, data)
        if tok.kind == "STRING":
            value: Any = tok.text[1:-1].replace("\\" + tok.text[0], tok.text[0])
        elif tok.kind == "LITERAL":
            value = {"true": True, "false": False, "null": None, "undefined": None}.get(tok.text, tok.text)
            value = float(value) if isinstance(value, str) else value
        else:
            self.fail(tok, f"expected a name, found {tok.text or 'end of template'!r}")
        original = tok.text if tok.text == "undefined" else js_string(value)
        if as_name:  # compiler.transformLiteralToPath: {{"a b"}} looks up the key "a b"
            return _Expr("ctx", 0, (original,), None, original)
        return _Expr("lit", 0, (), value, original)

    def signature(self, close_kind: str) -> tuple[_Expr, list[_Expr], dict[str, _Expr], _Tok]:
        name, params, hash_ = self.expr(as_name=True), [], {}
        while (tok := self.toks[self.i]).kind in ("ID", "DATA", "STRING", "LITERAL"):
            if tok.kind == "ID" and self.toks[self.i + 1].kind == "EQUALS":
                self.i += 2
                hash_[_segment(tok.text)] = self.expr()
            elif hash_:
                self.fail(tok, "positional argument after a hash argument")
            else:
                params.append(self.expr())
        close = self.expect(close_kind, "'}}}'" if close_kind == "CLOSE_UNESCAPED" else "'}}'")
        return name, params, hash_, close

    def mustache(self, tok: _Tok) -> _Mustache:
        kind = "CLOSE_UNESCAPED" if tok.kind == "OPEN_UNESCAPED" else "CLOSE"
        name, params, hash_, close = self.signature(kind)
        if params or hash_:
            self.fail(tok, f"helper calls are not supported: {name.original!r} with arguments")
        if name.kind == "ctx" and name.parts == (name.original,) and name.original in _HELPERS:
            self.fail(tok, f"{name.original!r} is a helper, not a value; use a block like {{{{#if x}}}}")
        flag = tok.text[3:4] or tok.text[2:3]
        return _Mustache(name, flag not in ("{", "&"), _strip(tok.text, close.text))

    def open_sig(self, tok: _Tok, depth: int) -> _Sig:
        if depth >= _MAX_DEPTH:
            self.fail(tok, f"blocks nested deeper than {_MAX_DEPTH}")
        name, params, hash_, close = self.signature("CLOSE")
        if name.kind != "ctx" or name.parts != (name.original,) or name.original not in _BLOCKS:
            self.fail(tok, f"unsupported block {name.original!r} (supported: {', '.join(_BLOCKS)})")
        if len(params) != 1:
            self.fail(tok, f"#{name.original} requires exactly one argument")
        zero = hash_.get("includeZero") if name.original in ("if", "unless") else None
        return _Sig(name.original, params[0], zero, _strip(tok.text, close.text))

    def block(self, tok: _Tok, depth: int) -> _Block:
        inverted = tok.kind == "OPEN_INVERSE"
        sig = self.open_sig(tok, depth)
        program = self.program(depth + 1)
        inv = self.else_part(depth, chain=not inverted)
        end = self.toks[self.i]
        if end.kind == "EOF":
            self.fail(tok, f"unclosed block {{{{#{sig.name}}}}}")
        end = self.expect("OPEN_END", f"{{{{/{sig.name}}}}}")
        close_name, close = self.expr(as_name=True), self.expect("CLOSE", "'}}'")
        if close_name.original != sig.name:
            self.fail(end, f"{sig.name} doesn't match {close_name.original}")
        return self.prepare(sig, program, inv, _strip(end.text, close.text), inverted)

    def else_part(self, depth: int, chain: bool) -> _Inv | None:
        tok = self.toks[self.i]
        if tok.kind == "INVERSE":
            self.i += 1
            return _Inv(_strip(tok.text, tok.text), self.program(depth + 1))
        if tok.kind != "OPEN_CHAIN" or not chain:
            return None
        self.i += 1
        sig = self.open_sig(tok, depth + 1)
        program = self.program(depth + 2)
        inv = self.else_part(depth + 1, True)
        block = self.prepare(sig, program, inv, inv.strip if inv else None, False)
        return _Inv(sig.strip, _Program([block], chained=True))

    @staticmethod
    def prepare(
        sig: _Sig, program: _Program, inv: _Inv | None, close_strip: tuple[bool, bool] | None, inverted: bool
    ) -> _Block:  # helpers.prepareBlock
        if inv and inv.program.chained:
            inv.program.body[0].close_strip = close_strip
        inverse = inv.program if inv else None
        if inverted:
            return _Block(sig, inverse, program, inv and inv.strip, close_strip)
        return _Block(sig, program, inverse, inv and inv.strip, close_strip)
