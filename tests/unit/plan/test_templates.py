"""Tests for sidecar.templates, the Handlebars subset used for Trengo ticket subjects.

Every expected string in CASES, ERRORS (the ones marked "handlebars rejects"), JS_STRINGS and the
RudderStack examples was VERIFIED against the real handlebars.js 4.7.x (npm ``handlebars``) and
Node 20's ``String()``, by running the same template/context through ``Handlebars.compile``;
the tests themselves do not need node.
"""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.plan.templates import (
    Template,
    TemplateError,
    compile_template,
    js_string,
    properties_string,
    render_subject,
)

# A context shaped like RudderStack's: protobuf Struct values, so every number is a float.
CTX: dict[str, Any] = {
    "event": "Order Completed", "a": {"b": {"c": "deep"}, "1": "one"}, "zero": 0.0, "negzero": -0.0,
    "n": None, "t": True, "f": False, "e": "", "s": "héllo", "int": 5000.0, "p": 0.1, "big": 1e21,
    "tiny": 1e-7, "html": "<a href='x'>&\"`=</a>", "x y": "spaced", "l": [{"x": 7.0}, "y", None, [1.0, None]],
    "nums": [1.0, 2.0], "empty": [], "od": {}, "o": {"b": 1.0, "2": 2.0, "a": 3.0, "1": 4.0},
    "k": {"constructor": "own"}, "nested": [[1.0, 2.0], [3.0]], "nulls": [None], "if": "IF",
}

# (template, context, expected) -- each expected output VERIFIED with handlebars.js 4.7.x.
CASES: list[tuple[str, dict[str, Any], str]] = [
    # escaping: handlebars' escape set; triple-stash and {{& }} are raw
    ("{{html}}", CTX, "&lt;a href&#x3D;&#x27;x&#x27;&gt;&amp;&quot;&#x60;&#x3D;&lt;/a&gt;"),
    ("{{{html}}}|{{& html}}|{{~{html}~}}", CTX, "|".join(["<a href='x'>&\"`=</a>"] * 3)),
    ("{{ event }}|{{event}}|{{  event  }}", CTX, "Order Completed|Order Completed|Order Completed"),
    # value rendering: null/missing -> "", false -> "false", 0 -> "0", numbers as JS, arrays joined
    ("[{{n}}][{{missing}}][{{f}}][{{t}}][{{zero}}][{{negzero}}][{{e}}]", CTX, "[][][false][true][0][0][]"),
    ("{{int}}|{{p}}|{{big}}|{{tiny}}|{{nums}}|{{l}}|{{a}}|{{od}}|{{empty}}", CTX,
     "5000|0.1|1e+21|1e-7|1,2|[object Object],y,,1,|[object Object]|[object Object]|"),
    # paths
    ("{{a.b.c}}|{{a/b/c}}|{{this.a.b.c}}|{{./a.b.c}}|{{a.[1]}}|{{[x y]}}|{{a.b.c.d}}|{{a.x.y}}", CTX,
     "deep|deep|deep|deep|one|spaced||"),
    ("{{l.[0].x}}|{{l.0.x}}|{{l.[1]}}|{{l.[9]}}|{{l.length}}|{{s.length}}|{{s.[1]}}|{{e.length}}", CTX,
     "7|7|y||4|5|é|0"),
    ('{{"x y"}}|{{\'x y\'}}|{{./if}}|{{this.if}}|{{if.x}}', {"x y": "lit", "if": "no"}, "lit|lit|no|no|"),
    ("{{k.constructor}}|{{a.constructor}}|{{a.toString}}|{{a.__proto__}}|{{nums.push}}", CTX, "own||||"),
    ("{{this}}|{{.}}|{{..}}|{{../a}}|{{@root.int}}|{{@index}}", CTX,
     "[object Object]|[object Object]|||5000|"),
    # comments, escaped mustaches, single braces
    ("a{{! comment }}b{{!-- has }} inside --}}c{{!--}}d", {}, "abcd"),
    ("\\{{a}} \\\\{{int}} {single} \\{{x}}{{int}}", CTX, "{{a}} \\5000 {single} {{x}}5000"),
    # whitespace control
    ("a  {{~int~}}  b|a {{~{int}~}} b|  {{~! c ~}}  x", CTX, "a5000b|a5000b|x"),
    ("x\n  {{#if t}}\n    yes\n  {{else}}\n    no\n  {{/if}}\ny", CTX, "x\n    yes\ny"),
    ("x\n  {{! standalone comment }}\ny\n  {{#each empty}}\n  z\n  {{/each}}\nw", CTX, "x\ny\nw"),
    ("x {{#if t}} y {{/if}} z", CTX, "x  y  z"),
    ("{{#if t~}}  \n  a  {{~/if}}.", CTX, "a."),
    ("{{#if n}}A{{else if t}}B  {{else}}C  {{~/if}}|", CTX, "B|"),  # sic: handlebars strips B's tail too
    # if / unless truthiness
    ("{{#if empty}}Y{{else}}N{{/if}}{{#if od}}Y{{else}}N{{/if}}{{#if zero}}Y{{else}}N{{/if}}"
     "{{#if zero includeZero=true}}Y{{else}}N{{/if}}{{#if e}}Y{{else}}N{{/if}}{{#if f}}Y{{else}}N{{/if}}"
     "{{#if s}}Y{{else}}N{{/if}}{{#if nums}}Y{{else}}N{{/if}}{{#if missing.x}}Y{{^}}N{{/if}}",
     CTX, "NYNYNNYYN"),
    ("{{#unless t}}A{{else}}B{{/unless}}{{#unless zero}}C{{/unless}}"
     "{{#unless zero includeZero=true}}D{{/unless}}", CTX, "BC"),
    ("{{#if n}}a{{else if f}}b{{else unless f}}c{{else}}d{{/if}}", CTX, "c"),
    ("{{^if t}}X{{else}}Y{{/if}}{{^each empty}}none{{/each}}{{^with n}}nothing{{/with}}", CTX,
     "Ynonenothing"),
    # each: arrays, objects (integer-like keys first, like Object.keys), @data, else, ../
    ("{{#each nums}}{{@index}}:{{this}}:{{@key}}:{{@first}}:{{@last}};{{/each}}", CTX,
     "0:1:0:true:false;1:2:1:false:true;"),
    ("{{#each o}}{{@key}}={{.}}@{{@index}}{{#if @last}}!{{/if}},{{/each}}", CTX, "1=4@0,2=2@1,b=1@2,a=3@3!,"),
    ("{{#each empty}}x{{else}}empty{{/each}}{{#each s}}x{{else}}not-iterable{{/each}}", CTX,
     "emptynot-iterable"),
    # a block only adds a ../ level when its context != (JS loose equality) the current one: 3 == [3]
    ("{{#each nested}}{{#each this}}{{@../index}}.{{@index}}={{.}}/{{../../int}} {{/each}}{{/each}}", CTX,
     "0.0=1/5000 0.1=2/5000 1.0=3/ "),
    ("{{#each nums}}{{#if t}}{{../int}}{{/if}}{{#if ../t}}!{{/if}}{{/each}}", CTX, "!!"),
    ("{{#each nulls}}[{{.}}]{{#if true}}[{{.}}]{{/if}}{{/each}}", CTX, "[][[object Object]]"),
    # with
    ("{{#with a}}{{b.c}}/{{../int}}/{{@root.event}}{{/with}}|{{#with zero}}[{{this}}]{{/with}}"
     "|{{#with e}}x{{else}}E{{/with}}|{{#with empty}}x{{else}}E{{/with}}", CTX,
     "deep/5000/Order Completed|[0]|E|E"),
    ("{{#with a}}{{#with b}}{{c}}{{../../int}}{{/with}}{{/with}}", CTX, "deep5000"),
    # literal parameters
    ("{{#if 'x'}}1{{/if}}{{#if 0}}2{{/if}}{{#if null}}3{{else}}4{{/if}}{{#with -1.5}}{{this}}{{/with}}", {},
     "14-1.5"),
]

# Templates that must not compile.  All but the last group are rejected by handlebars.js too (parse error,
# "doesn't match", "requires exactly one argument", "Missing helper", ...); the last group is valid
# Handlebars that is outside our subset, so we refuse it at config load rather than render it differently.
ERRORS = [
    "{{x", "a {{x}} {{", "{{#if x}}", "{{/if}}", "{{else}}", "{{#if x}}{{/each}}", "{{a/../b}}", "{{!-- x",
    "{{x}}}", "{{{x}}", "{{{x~}}}", "{{}}", "{{.a}}", "{{items.0}}", "{{'a'.x}}", "{{#if}}y{{/if}}",
    "{{#if x y}}y{{/if}}", "{{#each}}y{{/each}}", "{{#if x}}a{{else}}b{{else}}c{{/if}}", "{{foo bar}}",
    "{{if}}", "{{[each]}}", "{{if x}}", "{{> partial}}", "{{(sub)}}", "{{*decorator}}", "a\x00b",
    # valid Handlebars, but not supported here
    "{{x foo=1}}",
    "{{#foo}}x{{/foo}}", "{{^foo}}x{{/foo}}", "{{#> layout}}{{/layout}}", "{{{{raw}}}}x{{{{/raw}}}}",
    '{{#*inline "p"}}{{/inline}}', "{{#each l as |v|}}{{v}}{{/each}}", '{{lookup a "b"}}', '{{log "x"}}',
    "{{#if x}}" * 33 + "{{/if}}" * 33,
]

# String(x) in Node 20.
JS_STRINGS: list[tuple[Any, str]] = [
    (5000.0, "5000"), (-0.0, "0"), (0.0, "0"), (1e21, "1e+21"), (1e20, "100000000000000000000"),
    (1e-7, "1e-7"), (1e-6, "0.000001"), (0.1, "0.1"), (0.1 + 0.2, "0.30000000000000004"),
    (123456789012345680000.0, "123456789012345680000"), (2.5e-8, "2.5e-8"), (1.5e300, "1.5e+300"),
    (-1234.5, "-1234.5"), (5e-324, "5e-324"), (1.7976931348623157e308, "1.7976931348623157e+308"),
    (2.0**53, "9007199254740992"), (1 / 3, "0.3333333333333333"), (100.0, "100"), (123e-20, "1.23e-18"),
    (math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity"), (7, "7"), (10**22, "1e+22"),
    (None, "null"), (True, "true"), (False, "false"), ("x", "x"), ([1.0, None, [2.0, "a"]], "1,,2,a"),
    ({"a": 1.0}, "[object Object]"), ([], ""),
]


@pytest.mark.parametrize(("template", "event", "properties", "expected"), [
    # The examples from RudderStack's Trengo destination docs.
    ("{{ event }} from our store", "Product Purchased", {}, "Product Purchased from our store"),
    ("Product was of value:{{ revenue }}", "Order Completed", {"revenue": 2000.0},
     "Product was of value:2000"),
    ("Cart was checked out", "Checked Out", {}, "Cart was checked out"),
    ("{{properties}}", "e", {"a": 1.0, "b": "x"}, "a: 1 b: x"),
    ("{{event}}|{{properties}}", "e", {"event": "mine", "b": [1.0, None], "2": True, "1": None},
     "mine|1: null 2: true event: mine b: 1,"),
    ("{{{properties}}}", "e", {"properties": "a & b"}, "a & b"),
    ("  {{#if flag}}\n  yes {{event}}\n{{/if}}  ", "e", {"flag": True}, "yes e"),
])
def test_render_subject(template: str, event: str, properties: dict[str, Any], expected: str) -> None:
    assert render_subject(compile_template(template.strip()), event, properties) == expected


def test_render_subject_trims_javascript_whitespace_only() -> None:
    template = compile_template("{{event}}")
    assert render_subject(template, "\u00a0\ufeff\u2028 x \u3000\n", {}) == "x"
    assert render_subject(template, "\x1c x \x1c", {}) == "\x1c x \x1c"  # not whitespace in JS


def test_properties_string_uses_javascript_key_order() -> None:
    props = {"b": "x", "10": 1.0, "a": None, "2": [1.0, 2.0], "01": False}
    assert properties_string(props) == "2: 1,2 10: 1 b: x a: null 01: false "
    assert properties_string({}) == ""


@pytest.mark.parametrize(("template", "context", "expected"), CASES)
def test_matches_handlebars(template: str, context: dict[str, Any], expected: str) -> None:
    assert compile_template(template).render(context) == expected


@pytest.mark.parametrize("template", ERRORS)
def test_rejected_at_compile_time(template: str) -> None:
    with pytest.raises(TemplateError):
        compile_template(template)


def test_error_says_where_and_what() -> None:
    where = r"unclosed block \{\{#if\}\} \(line 2, column 3, offset 5\)"
    with pytest.raises(TemplateError, match=where) as err:
        compile_template("ab\n  {{#if x}}")
    assert (err.value.line, err.value.column, err.value.offset) == (2, 3, 5)
    with pytest.raises(TemplateError, match="if doesn't match each"):
        compile_template("{{#if x}}{{/each}}")
    with pytest.raises(TemplateError, match="unsupported block 'foo'"):
        compile_template("{{#foo}}{{/foo}}")


def test_nesting_limit() -> None:
    assert compile_template("{{#if t}}" * 32 + "ok" + "{{/if}}" * 32).render({"t": True}) == "ok"


@pytest.mark.parametrize(("value", "expected"), JS_STRINGS)
def test_js_string(value: Any, expected: str) -> None:
    assert js_string(value) == expected


def test_template_is_immutable_and_reusable_across_threads() -> None:
    template = compile_template("{{#each items}}{{name}}{{#unless @last}}, {{/unless}}{{/each}}")
    with pytest.raises(dataclasses.FrozenInstanceError):
        template.source = "x"  # type: ignore[misc]
    contexts = [{"items": [{"name": str(i)}, {"name": "x"}]} for i in range(200)]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(template.render, contexts)) == [f"{i}, x" for i in range(200)]
    assert isinstance(template, Template) and template.source.startswith("{{#each")


# ---------------------------------------------------------------- property tests
_keys = st.sampled_from(["a", "b", "event", "x y", "0", "1", "length", "constructor"])
_json = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=5) | st.integers(-(10**30), 10**30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=12,
)
_paths = st.sampled_from([
    "a", "a.b", "a/0/b", "this", ".", "..", "../a", "[x y]", "a.[0]", "a.length", "@index", "@key", "@first",
    "@root.a", "@../index", "event", "properties", '"x y"', "0.b",
])
_text = st.sampled_from(["", " ", "\n", "  \n", "\t\r\n", "x", "{x}", "<&>", "\u00a0"])


def _block(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    name = st.sampled_from(["if", "unless", "each", "with"])
    return st.builds(
        lambda n, p, z, body, alt, lt, rt: f"{{{{{lt}#{n} {p}{z}{rt}}}}}{body}{alt}{{{{{lt}/{n}{rt}}}}}",
        name, _paths, st.sampled_from(["", " includeZero=true"]), inner,
        st.sampled_from(["", "{{else}}-", "\n{{else}}\n", "{{^}}", "{{~else~}} "])
        | inner.map("{{else}}".__add__) | inner.map("{{else if a}}".__add__),
        st.sampled_from(["", "~"]), st.sampled_from(["", "~"]),
    )


_templates = st.recursive(
    _text
    | _paths.map("{{{{{}}}}}".format)
    | _paths.map("{{{{{{{}}}}}}}".format)
    | _paths.map("{{{{~{}~}}}}".format)
    | st.sampled_from(["{{! c }}", "{{!-- c --}}", "\\{{a}}"]),
    lambda inner: st.lists(inner, min_size=1, max_size=4).map("".join) | _block(inner),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(template=_templates, context=st.dictionaries(_keys, _json, max_size=5), event=st.text(max_size=5))
def test_render_never_raises(template: str, context: dict[str, Any], event: str) -> None:
    compiled = compile_template(template)  # the grammar only produces valid templates
    assert isinstance(compiled.render(context), str)
    assert isinstance(render_subject(compiled, event, context), str)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_js_string_round_trips_floats(x: float) -> None:
    text = js_string(x)
    assert float(text) == x  # shortest round-tripping digits, as in JS
    if x.is_integer() and abs(x) < 1e21:  # JS prints integral numbers below 1e21 as plain integers
        assert text.lstrip("-").isdigit()
