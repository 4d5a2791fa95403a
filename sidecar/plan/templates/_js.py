"""JavaScript value semantics the templates need: ``String(x)``, ``Number#toString``, truthiness,
loose equality, own-property lookup and ``Object.keys`` order, over JSON-like Python values.

Values arrive as protobuf ``Struct`` values (every number a float, None for null), so these
functions cover str, bool, int/float, None, mappings and lists; anything else falls back to ``str``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

# JavaScript's WhiteSpace + LineTerminator characters: its regex \s and what String#trim removes.
_WS = "\t\n\v\f\r \u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
_WS += "\u2028\u2029\u202f\u205f\u3000\ufeff"


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
            unit = int.from_bytes(units[2 * int(key) : 2 * int(key) + 2], "little")
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
