"""A faithful subset of Handlebars (handlebars.js 4.x) for Trengo ticket subjects.

RudderStack's Trengo destination renders ``Handlebars.compile(template.trim())`` over
``{event, properties: getStringValueOfJSON(properties), ...properties}`` and trims the result;
:func:`render_subject` does the same.  We do not use a third-party engine: pybars3, the only
Python port, is unmaintained and Python-2 era, and differs from handlebars.js 4.x in whitespace
control, escaping and prototype-safe lookups.  The lexer rules, parser actions and the
standalone/``~`` whitespace pass in this package are ports of handlebars.js (``compiler/parser.js``,
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

Layout: ``_js`` (JavaScript value semantics), ``_lexer`` (tokens), ``_parser`` (parse tree and
compile-time errors), ``_whitespace`` (``~`` and standalone stripping), ``_render`` (tree to
render functions); this module is the public surface.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._js import _WS, _js_keys, js_string
from ._lexer import TemplateError
from ._parser import _Parser
from ._render import _compile, _Fn
from ._whitespace import _ws_program

__all__ = [
    "Template",
    "TemplateError",
    "compile_template",
    "js_string",
    "properties_string",
    "render_subject",
]


def properties_string(properties: Mapping[str, Any]) -> str:
    """RudderStack's getStringValueOfJSON: ``"{key}: {String(value)} "`` for each key."""
    return "".join(f"{k}: {js_string(properties[k])} " for k in _js_keys(properties))


@dataclass(frozen=True)
class Template:
    """A compiled template: immutable, reusable and safe to render from many threads."""

    source: str
    _run: _Fn = field(repr=False, compare=False)
    # Whether rendering may read the "properties" string: building it walks every property, which
    # for a wide event cost more than the rest of the call (issue 22), so it is built only then.
    uses_properties: bool = field(default=True, compare=False)

    def render(self, context: Mapping[str, Any]) -> str:
        return self._run(context, (context,), {"root": context})


def compile_template(source: str) -> Template:
    """Parse ``source`` once; raise TemplateError if handlebars would reject it or it is unsupported."""
    parser = _Parser(source)
    program = parser.program(0)
    if (tok := parser.toks[parser.i]).kind != "EOF":
        parser.fail(tok, f"{tok.text!r} without a matching open block")
    _ws_program(program, root=True)
    return Template(source, _compile(program), bool(_READS_PROPERTIES.search(source)))


# What may read the root's "properties": its name (also as [properties] or "properties"), or the
# whole root (this, ., @root, ../, an #each over it). Any doubt counts as a use: the string is built.
_READS_PROPERTIES = re.compile(r"properties|\bthis\b|@root|\.\.|(?<![\w\]])\.(?![\w\[])")


def render_subject(template: Template, event: str, properties: Mapping[str, Any]) -> str:
    """RudderStack's Trengo subject: render over {event, properties: "k: v ...", ...properties}, trimmed."""
    text = properties_string(properties) if template.uses_properties else ""
    context = {"event": event, "properties": text, **properties}
    return template.render(context).strip(_WS)
