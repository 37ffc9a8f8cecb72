"""How values, keys and arguments are quoted and escaped on the wire (server side).

The rules live in ``boutique.wire`` because the Python client needs them too and the
core package must not import the server; this module re-exports them under the server's
name. See ``boutique.wire`` for the full grammar: value form, argument form, text form,
the quoted form with its escapes (``\\" \\\\ \\n \\r \\t \\xHH``) and reply framing.
It must never grow rules of its own: one grammar, one place.
"""

from __future__ import annotations

from boutique.wire import (
    BLANKS,
    WireError,
    arg_needs_quoting,
    is_terminator,
    parse_pair,
    parse_value,
    quote,
    render_arg,
    render_pair,
    render_text,
    render_value,
    split_args,
    value_needs_quoting,
)

__all__ = [
    "BLANKS",
    "WireError",
    "arg_needs_quoting",
    "is_terminator",
    "parse_pair",
    "parse_value",
    "quote",
    "render_arg",
    "render_pair",
    "render_text",
    "render_value",
    "split_args",
    "value_needs_quoting",
]
