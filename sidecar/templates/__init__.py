"""A faithful subset of Handlebars (handlebars.js 4.x) for Trengo ticket subjects.

RudderStack's Trengo destination renders ``Handlebars.compile(template.trim())`` over
``{event, properties: getStringValueOfJSON(properties), ...properties}`` and trims the result;
:func:`render_subject` does the same.  We do not use a third-party engine: pybars3, the only
Python port, is unmaintained and Python-2 era, and differs from handlebars.js 4.x in whitespace
control, escaping and prototype-safe lookups.  The lexer rules, parser actions and the
standalone/``~`` whitespace pass below are ports of handlebars.js (``compiler/parser.js``,
``helpers.js``, ``whitespace-control.js``); the blocks follow ``helpers/{if,each,with}.js`` and
``runtime.js`` (own-property lookups only, the ``depths`` stack behind ``../``).

Supported: ``{{path}}`` (escaped), ``{{{path}}}``/``{{& path}}`` (raw), paths (``a.b``, ``a/b``,
``this``, ``./a``, ``../a``, ``[any key]``, ``items.[0]``, ``.length`` of lists and strings),
``@index @key @first @last @root @../x``, literal names (``{{"a b"}}``), comments, ``\\{{``
escapes, ``~`` and standalone-line stripping, ``#if``/``#unless`` (``includeZero=``),
``#each``, ``#with``, ``{{else}}``/``{{^}}``, ``{{else if …}}`` chains and ``{{^if …}}`` blocks.
Everything else (helper calls, partials, sub-expressions, decorators, raw blocks, block
params, mustache sections such as ``{{#foo}}``) raises TemplateError at compile time, as does
a NUL character (a lexical error in handlebars.js too).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any, NamedTuple, NoReturn

__all__ = ["Template", "TemplateError", "compile_template", "js_string", "properties_string",
           "render_subject"]

# JavaScript's WhiteSpace + LineTerminator characters: its regex \s and what String#trim removes.
_WS = "\t\n\v\f\r \u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
_WS += "\u2028\u2029\u202f\u205f\u3000\ufeff"
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;",
                          "`": "&#x60;", "=": "&#x3D;"})
_MAX_DEPTH = 32
_BLOCKS = ("if", "unless", "each", "with")
_HELPERS = {*_BLOCKS, "log", "lookup", "helperMissing", "blockHelperMissing"}
_LA = r"(?=[=~}\s/.)|])"
# handlebars.l "mu" state rules, in order (first match wins, as in jison).
_MU_RULES = [
    ("SEXPR", r"[()]"), ("RAW", r"\{\{\{\{|\}\}\}\}"), ("PARTIAL", r"\{\{~?#?>"),
    ("OPEN_BLOCK", r"\{\{~?#\*?"), ("OPEN_END", r"\{\{~?/"),
    ("INVERSE", r"\{\{~?\^[\s]*~?\}\}|\{\{~?[\s]*else[\s]*~?\}\}"), ("OPEN_INVERSE", r"\{\{~?\^"),
    ("OPEN_CHAIN", r"\{\{~?[\s]*else(?![A-Za-z0-9_])"), ("OPEN_UNESCAPED", r"\{\{~?\{"),
    ("LONG_COMMENT", r"\{\{~?!--"), ("COMMENT", r"\{\{~?!(?s:.)*?\}\}"), ("OPEN", r"\{\{~?[&*]?"),
    ("EQUALS", "="), ("ID", r"\.\.|\." + _LA), ("SEP", r"[/.]"), ("WS", r"[\s]+"),
    ("CLOSE_UNESCAPED", r"\}~?\}\}"), ("CLOSE", r"~?\}\}"),
    ("STRING", r'"(?:\\"|[^"])*"|' + r"'(?:\\'|[^'])*'"),
    ("DATA", "@"), ("LITERAL", r"(?:true|false|undefined|null|-?[0-9]+(?:\.[0-9]+)?)(?=[~}\s)])"),
    ("BLOCK_PARAMS", r"as[\s]+\|"), ("ID", r'[^\s!"#%-,\./;->@\[-\^`\{-~]+' + _LA + r"|\[(?:\\\]|[^\]])*\]"),
    ("INVALID", r"(?s:.)"),
]
_MU = re.compile("|".join(f"(?P<K{i}>{p.replace(chr(92) + 's', _WS)})" for i, (_, p) in enumerate(_MU_RULES)))
_LONG_COMMENT = re.compile(r"(?s:.)*?--~?\}\}")
_UNSUPPORTED = {"SEXPR": "sub-expressions are", "RAW": "raw blocks are", "PARTIAL": "partials are",
                "BLOCK_PARAMS": "block parameters are"}
_LINE_TERMINATORS = "\n\r\u2028\u2029"


class TemplateError(ValueError):
    """A template that handlebars would reject, or that uses a feature outside our subset."""

    def __init__(self, message: str, source: str = "", offset: int = 0) -> None:
        self.offset = offset
        self.line = source.count("\n", 0, offset) + 1
        self.column = offset - source.rfind("\n", 0, offset)
        super().__init__(f"{message} (line {self.line}, column {self.column}, offset {offset})")


# ---------------------------------------------------------------- JavaScript value semantics
def _number(x: float) -> str:
    """Number.prototype.toString() (repr() already gives the shortest round-tripping digits)."""
    if math.isnan(x) or math.isinf(x):
        return "NaN" if math.isnan(x) else ("-Infinity" if x < 0 else "Infinity")
    if x == 0:
        return "0"
    _, ds, exp = Decimal(repr(abs(x))).normalize().as_tuple()
    digits, k = "".join(map(str, ds)), len(ds)
    n = int(exp) + k
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        out = "0." + "0" * -n + digits
    else:
        out = f"{digits[0]}{'.' if k > 1 else ''}{digits[1:]}e{'+' if n > 0 else '-'}{abs(n - 1)}"
    return "-" + out if x < 0 else out


def js_string(value: Any) -> str:
    """JavaScript's ``String(value)`` for JSON-like values (None is ``null``)."""
    return _js_string(value, 0)


def _js_string(value: Any, depth: int) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int | float):
        try:
            return _number(float(value))
        except OverflowError:
            return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, Mapping):
        return "[object Object]"
    if isinstance(value, list | tuple):
        return "" if depth > 200 else ",".join("" if v is None else _js_string(v, depth + 1) for v in value)
    return str(value)


def _is_index(key: str) -> bool:
    return key.isascii() and key.isdigit() and (key == "0" or key[0] != "0") and int(key) < 2**32 - 1


def _js_keys(obj: Mapping[str, Any]) -> list[str]:
    """Object.keys / for-in order: array-index keys ascending, then the rest in insertion order."""
    keys = [k for k in obj if isinstance(k, str)]
    return sorted((k for k in keys if _is_index(k)), key=int) + [k for k in keys if not _is_index(k)]


def properties_string(properties: Mapping[str, Any]) -> str:
    """RudderStack's getStringValueOfJSON: ``"{key}: {String(value)} "`` for each key."""
    return "".join(f"{k}: {js_string(properties[k])} " for k in _js_keys(properties))


def _prop(obj: Any, key: str) -> Any:
    """runtime.lookupProperty: own properties only (dict keys, list/string indices and length)."""
    if isinstance(obj, Mapping):
        return obj.get(key)
    if isinstance(obj, list | tuple):
        if key == "length":
            return float(len(obj))
        return obj[int(key)] if _is_index(key) and int(key) < len(obj) else None
    if isinstance(obj, str):  # JS strings index UTF-16 code units; a lone surrogate would encode as U+FFFD
        units = obj.encode("utf-16-le", "surrogatepass")
        if key == "length":
            return float(len(units) // 2)
        if _is_index(key) and int(key) < len(units) // 2:
            unit = int.from_bytes(units[2 * int(key):2 * int(key) + 2], "little")
            return "\ufffd" if 0xD800 <= unit < 0xE000 else chr(unit)
    return None


def _truthy(v: Any) -> bool:
    if isinstance(v, int | float):
        return v == v and v != 0
    return v is not None and v != ""


def _is_empty(v: Any) -> bool:
    """utils.isEmpty: falsy but not the number 0, or an empty array."""
    if isinstance(v, list | tuple):
        return not v
    return not _truthy(v) and not (isinstance(v, int | float) and not isinstance(v, bool) and v == 0)


def _to_number(v: Any) -> float:
    if not isinstance(v, str):
        return float(v)
    t = v.strip(_WS)
    if t[:2].lower() in ("0x", "0o", "0b") and t[2:].isascii() and t[2:].isalnum():
        try:
            return float(int(t, 0))
        except ValueError:
            return math.nan
        except OverflowError:
            return math.inf
    if t in ("Infinity", "+Infinity", "-Infinity"):
        return -math.inf if t[0] == "-" else math.inf
    try:
        return float(t or "0") if all(c in "0123456789+-.eE" for c in t) else math.nan
    except ValueError:
        return math.nan


def _loose_eq(a: Any, b: Any) -> bool:
    """JavaScript ``a == b`` (runtime.wrapProgram only pushes a new ``depths`` entry when ``!=``)."""
    a_obj, b_obj = isinstance(a, Mapping | list | tuple), isinstance(b, Mapping | list | tuple)
    if (a_obj and b_obj) or a is None or b is None:
        return a is b
    a, b = js_string(a) if a_obj else a, js_string(b) if b_obj else b
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    try:
        return _to_number(a) == _to_number(b)
    except OverflowError:
        return False


# ---------------------------------------------------------------- lexer
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


# ---------------------------------------------------------------- parser (handlebars.yy + helpers.js)
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
    def prepare(sig: _Sig, program: _Program, inv: _Inv | None, close_strip: tuple[bool, bool] | None,
                inverted: bool) -> _Block:  # helpers.prepareBlock
        if inv and inv.program.chained:
            inv.program.body[0].close_strip = close_strip
        inverse = inv.program if inv else None
        if inverted:
            return _Block(sig, inverse, program, inv and inv.strip, close_strip)
        return _Block(sig, program, inverse, inv and inv.strip, close_strip)


# ---------------------------------------------------------------- whitespace-control.js
def _prev_ws(body: list[Any], i: int | None, root: bool) -> bool:
    i = len(body) if i is None else i
    if i < 1:
        return root
    if not isinstance(prev := body[i - 1], _Content):
        return False
    tail = prev.original[len(prev.original.rstrip(_WS)):]
    return "\n" in tail or (i < 2 and root and tail == prev.original)


def _next_ws(body: list[Any], i: int | None, root: bool) -> bool:
    i = -1 if i is None else i
    if i + 1 >= len(body):
        return root
    if not isinstance(nxt := body[i + 1], _Content):
        return False
    head = nxt.original[:len(nxt.original) - len(nxt.original.lstrip(_WS))]
    return "\n" in head or (i + 2 >= len(body) and root and head == nxt.original)


def _omit_right(body: list[Any], i: int | None, multiple: bool = False) -> None:
    j = 0 if i is None else i + 1
    cur = body[j] if j < len(body) else None
    if not isinstance(cur, _Content) or (cur.right_stripped and not multiple):
        return
    value = cur.value.lstrip(_WS) if multiple else cur.value.lstrip(" \t")
    if not multiple:  # /^[ \t]*\r?\n?/
        value = value[value.startswith("\r"):]
        value = value[value.startswith("\n"):]
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
    strip = (open_strip[0], close_strip[1], _next_ws(program.body, None, False),
             _prev_ws((first or program).body, None, False), False)
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


# ---------------------------------------------------------------- rendering (pre-built closures)
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
        piece = node.value if isinstance(node, _Content) else None if isinstance(node, _Comment) else (
            _compile_block(node) if isinstance(node, _Block) else _compile_mustache(node))
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


# ---------------------------------------------------------------- public API
@dataclass(frozen=True)
class Template:
    """A compiled template: immutable, reusable and safe to render from many threads."""

    source: str
    _run: _Fn = field(repr=False, compare=False)

    def render(self, context: Mapping[str, Any]) -> str:
        return self._run(context, (context,), {"root": context})


def compile_template(source: str) -> Template:
    """Parse ``source`` once; raise TemplateError if handlebars would reject it or it is unsupported."""
    parser = _Parser(source)
    program = parser.program(0)
    if (tok := parser.toks[parser.i]).kind != "EOF":
        parser.fail(tok, f"{tok.text!r} without a matching open block")
    _ws_program(program, root=True)
    return Template(source, _compile(program))


def render_subject(template: Template, event: str, properties: Mapping[str, Any]) -> str:
    """RudderStack's Trengo subject: render over {event, properties: "k: v ...", ...properties}, trimmed."""
    context = {"event": event, "properties": properties_string(properties), **properties}
    return template.render(context).strip(_WS)
