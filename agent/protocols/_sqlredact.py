"""SQL text for spans: literal values redacted, plus what the statement does.

``redact`` replaces every literal value with ``?``: quoted strings ('...',
E'...', N'...', X'...', B'...', U&'...', MySQL "..." and _charset'...'),
PostgreSQL dollar-quoted strings ($$...$$, $tag$...$tag$) and numbers
(integers, decimals, exponents, 0x/0b/0o literals).  Identifiers (plain,
"quoted" in PostgreSQL, `quoted` in MySQL), keywords, operators, comments
and placeholders ($1, ?, :name) stay as they are, so the text keeps its
shape and a statement's redacted form is the same whatever values it was
sent with.  A list of placeholders after IN collapses to ``IN (?)`` and
repeated tuples of placeholders (multi-row VALUES) to the first one.
Text cut short by a capture still redacts: an unterminated literal becomes
``?`` up to the end.

``summarize`` reads the redacted text for the span's name and attributes:
the operation (first keyword, upper case: SELECT, INSERT, ...), the single
table it works on when one simple name follows FROM/INTO/UPDATE/TABLE, and
the number of statements when several were sent together (a batch, named
``BATCH <OP>`` or ``BATCH`` as OpenTelemetry's database conventions say).

Both are pure and memoised: applications send the same few statements over
and over, so most calls are a dictionary look-up.
"""

from __future__ import annotations

import re
from typing import NamedTuple

POSTGRESQL = "postgresql"
MYSQL = "mysql"

# Memoised results per dialect; cleared when full (cheaper than an LRU, and
# a working set larger than this is rare and only costs re-redaction).
CACHE_SIZE = 2048
# Statements looked at for a batch's summary; the rest only count.
MAX_SUMMARY_STATEMENTS = 64
# Characters of a statement tokenised to find its table.
MAX_SUMMARY_CHARS = 2048

# --- redaction ---------------------------------------------------------------

# Speed: ``re`` jumps from one candidate to the next in C only when a pattern
# starts with a character class, so each pattern is "a character that can
# start something", then branches that look back at which one it was.
# ``(?<![\w$].)`` says the character before it is not part of a word (so the
# 1 of t1 or the E of WHERE start nothing).  A number takes any letters stuck
# to it ("0x1F", "0B02", "12abc"): none of it is a name.
_NUMBER_TAIL = r"""
  | (?<=\d)(?<![\w$].) (?P<number> [\d_]* (?:\.\d*)? (?:[eE][+-]?\d+)? [\w$]* )
  | (?<=\.)(?<![\w$].) (?P<fraction> \d[\d_]* (?:[eE][+-]?\d+)? [\w$]* )
"""
_PG_PATTERN = re.compile(r"""
  [-/'"$EeBbXxNnUu0-9.]
  (?: (?<=-) (?P<comment> -[^\n]* )
    | (?<=/) (?P<block> \*.*?(?:\*/|\Z) )
    | (?<=') (?P<string> (?:[^']|'')*(?:'|\Z) )
    | (?<=[BbXxNn])(?<![\w$].) (?P<prefixed> '(?:[^']|'')*(?:'|\Z) )
    | (?<=[Uu])(?<![\w$].) (?P<unicode> &'(?:[^']|'')*(?:'|\Z) )
    | (?<=[Ee])(?<![\w$].) (?P<escaped> '(?:[^'\\]|''|\\.)*(?:'|\Z) )
    | (?<=\$) (?P<dollar> (?P<tag>(?:[^\W\d]\w*)?)\$ .*? (?:\$(?P=tag)\$|\Z) )
    | (?<=") (?P<ident> (?:[^"]|"")*(?:"|\Z) )
""" + _NUMBER_TAIL + ")", re.VERBOSE | re.DOTALL)
_MYSQL_QUOTED = r"""(?: '(?:[^'\\]|''|\\.)*(?:'|\Z) | "(?:[^"\\]|""|\\.)*(?:"|\Z) )"""
_MYSQL_PATTERN = re.compile(r"""
  [-/\#'"`BbXxNn_0-9.]
  (?: (?<=-) (?P<comment> -[^\n]* )
    | (?<=/) (?P<block> \*.*?(?:\*/|\Z) )
    | (?<=\#) (?P<hash> [^\n]* )
    | (?<=') (?P<string> (?:[^'\\]|''|\\.)*(?:'|\Z) )
    | (?<=") (?P<double> (?:[^"\\]|""|\\.)*(?:"|\Z) )
    | (?<=[BbXxNn])(?<![\w$].) (?P<prefixed> """ + _MYSQL_QUOTED + r""" )
    | (?<=_)(?<![\w$].) (?P<charset> [A-Za-z0-9]+ \s* """ + _MYSQL_QUOTED + r""" )
    | (?<=`) (?P<ident> (?:[^`]|``)*(?:`|\Z) )
""" + _NUMBER_TAIL + ")", re.VERBOSE | re.DOTALL)
_PATTERNS = {POSTGRESQL: _PG_PATTERN, MYSQL: _MYSQL_PATTERN}
_KEPT = frozenset(("comment", "block", "hash", "ident"))
_LIST = re.compile(r"\?\s*,\s*\?")
_IN_LIST = re.compile(r"([Ii](?<![\w$].)[Nn]\s*)\(\s*\?(?:\s*,\s*\?)+\s*\)")
# Repeats of a tuple of placeholders (multi-row VALUES); text cut short may end in part of one.
_TUPLE = r"\(\s*\?(?:\s*,\s*\?)*\s*\)"
_CUT_TUPLE = r"\s*,\s*\([\s?,]*\Z"
_TUPLES = re.compile(r"(" + _TUPLE + r")(?:(?:\s*,\s*" + _TUPLE + r")+(?:" + _CUT_TUPLE + r")?|"
                     + _CUT_TUPLE + r")")


def _replace(m: re.Match[str]) -> str:
    return m.group(0) if m.lastgroup in _KEPT else "?"


_redacted: dict[tuple[str, str], str] = {}


def redact(sql: str, dialect: str = POSTGRESQL) -> str:
    """``sql`` with every literal value replaced by ``?`` (see the module doc)."""
    key = (dialect, sql)
    out = _redacted.get(key)
    if out is None:
        pattern = _PATTERNS.get(dialect, _PG_PATTERN)
        out = pattern.sub(_replace, sql)
        if _LIST.search(out):  # cheap test first: the collapsing patterns are slower
            out = _TUPLES.sub(r"\1", _IN_LIST.sub(r"\1(?)", out))
        if len(_redacted) >= CACHE_SIZE:
            _redacted.clear()
        _redacted[key] = out
    return out


# --- what the statement does ------------------------------------------------------


class Summary(NamedTuple):
    operation: str | None      # db.operation.name
    collection: str | None     # db.collection.name (one simple table name only)
    batch_size: int | None     # db.operation.batch.size (2 or more statements), else None

    @property
    def text(self) -> str | None:
        """db.query.summary, also the span name: "<OPERATION> <collection>" or "<OPERATION>"."""
        if self.operation is None:
            return None
        return f"{self.operation} {self.collection}" if self.collection else self.operation


# Comments go (quoted identifiers are kept so a "--" inside one is not a comment).
_STRIP = re.compile(r"""("(?:[^"]|"")*"|`(?:[^`]|``)*`)|--[^\n]*|\#[^\n]*|/\*.*?(?:\*/|\Z)""",
                    re.DOTALL)
_TOKEN = re.compile(r"""[A-Za-z_\x80-\U0010ffff][\w$\x80-\U0010ffff]*|"(?:[^"]|"")*"|`(?:[^`]|``)*`|[^\s\w]""")
_FIRST_WORD = re.compile(r"[\s(]*([A-Za-z]+)")
# Words after the verb and before the table that are not its name.
_SKIP_BEFORE_NAME = frozenset((
    "ONLY", "LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "QUICK", "TEMPORARY", "TEMP",
    "UNLOGGED", "IF", "NOT", "EXISTS", "TABLE", "INTO", "FROM", "GLOBAL", "LOCAL",
))
# Statement verbs whose table follows the word TABLE (CREATE TABLE x, DROP TABLE IF EXISTS x).
_DDL = frozenset(("CREATE", "DROP", "ALTER", "TRUNCATE", "LOCK", "ANALYZE", "OPTIMIZE", "VACUUM"))
# Words that bring another table into a statement: then it has no single collection.
_MORE_TABLES = frozenset(("JOIN", "USING", "UNION", "INTERSECT", "EXCEPT"))


def _keep_identifier(m: re.Match[str]) -> str:
    return m.group(1) or " "


def _split_statements(text: str) -> list[str]:
    # Literals are gone by now, so a ";" outside a quoted identifier ends a statement.
    return [part for part in text.split(";") if part.strip()]


def _name_at(tokens: list[str], i: int) -> tuple[str | None, int]:
    """A possibly qualified table name starting at tokens[i], unquoted; and the index after it."""
    parts: list[str] = []
    n = len(tokens)
    while i < n:
        tok = tokens[i]
        if tok[0] in "\"`":
            parts.append(tok[1:-1] if len(tok) > 1 and tok[-1] == tok[0] else tok[1:])
        elif tok[0].isalpha() or tok[0] == "_" or ord(tok[0]) > 127:
            parts.append(tok)
        else:
            return None, i
        i += 1
        if i < n and tokens[i] == ".":
            i += 1
            continue
        break
    if not parts:
        return None, i
    return ".".join(parts), i


def _collection(tokens: list[str], upper: list[str], operation: str) -> str | None:
    """The one table a statement works on, or None when there is none or several."""
    if any(word in _MORE_TABLES for word in upper):
        return None
    froms = upper.count("FROM")
    if operation in ("SELECT", "WITH"):
        if froms != 1 or operation == "WITH":
            return None
        at = upper.index("FROM") + 1
    elif operation in ("INSERT", "REPLACE"):
        if froms or "INTO" not in upper:
            return None
        at = upper.index("INTO") + 1
    elif operation == "UPDATE":
        if froms:
            return None
        at = 1
    elif operation == "DELETE":
        if froms != 1:
            return None
        at = upper.index("FROM") + 1
    elif operation == "COPY":
        at = 1
    elif operation in _DDL:
        at = 1
        if operation not in ("TRUNCATE", "LOCK", "ANALYZE", "OPTIMIZE", "VACUUM"):
            if "TABLE" not in upper[:4]:
                return None
    else:
        return None
    while at < len(upper) and upper[at] in _SKIP_BEFORE_NAME:
        at += 1
    name, after = _name_at(tokens, at)
    if name is None or name.upper() in ("SELECT", "VALUES", "SET", "WHERE"):
        return None
    # "FROM a, b" and "FROM a x, b y" name several tables.
    for tok in tokens[after:after + 3]:
        if tok == ",":
            return None
        if tok in ("(", ")") or tok.upper() in ("WHERE", "SET", "VALUES", "ORDER", "GROUP"):
            break
    return name


def _one(statement: str) -> tuple[str | None, str | None]:
    m = _FIRST_WORD.match(statement)
    if m is None:
        return None, None
    operation = m.group(1).upper()
    tokens = _TOKEN.findall(statement, 0, MAX_SUMMARY_CHARS)
    upper = [t.upper() for t in tokens]
    try:
        collection = _collection(tokens, upper, operation)
    except (ValueError, IndexError):
        collection = None
    return operation, collection


_summaries: dict[str, Summary] = {}
_NO_SUMMARY = Summary(None, None, None)


def summarize(redacted: str) -> Summary:
    """Operation, single collection and batch size of (already redacted) SQL text."""
    found = _summaries.get(redacted)
    if found is not None:
        return found
    stripped = _STRIP.sub(_keep_identifier, redacted)
    statements = _split_statements(stripped)
    if not statements:
        found = _NO_SUMMARY
    elif len(statements) == 1:
        found = Summary(*_one(statements[0]), None)
    else:
        results = [_one(s) for s in statements[:MAX_SUMMARY_STATEMENTS]]
        operations = {op for op, _ in results}
        collections = {coll for _, coll in results}
        if len(operations) == 1 and None not in operations and len(statements) <= MAX_SUMMARY_STATEMENTS:
            operation = "BATCH " + operations.pop()
            collection = collections.pop() if len(collections) == 1 else None
        else:
            operation, collection = "BATCH", None
        found = Summary(operation, collection, len(statements))
    if len(_summaries) >= CACHE_SIZE:
        _summaries.clear()
    _summaries[redacted] = found
    return found


# --- span attributes ---------------------------------------------------------------

_described: dict[tuple[str, str], tuple[str | None, tuple[tuple[str, object], ...]]] = {}


def describe_query(sql: str, dialect: str) -> tuple[str | None, dict[str, object]]:
    """(span name or None, db.* attributes) for a statement's text, redacted."""
    key = (dialect, sql)
    found = _described.get(key)
    if found is None:
        redacted = redact(sql, dialect)
        summary = summarize(redacted)
        attrs: list[tuple[str, object]] = [("db.query.text", redacted)]
        if summary.operation is not None:
            attrs.append(("db.operation.name", summary.operation))
            attrs.append(("db.query.summary", summary.text))
        if summary.collection is not None:
            attrs.append(("db.collection.name", summary.collection))
        if summary.batch_size is not None:
            attrs.append(("db.operation.batch.size", summary.batch_size))
        found = (summary.text, tuple(attrs))
        if len(_described) >= CACHE_SIZE:
            _described.clear()
        _described[key] = found
    return found[0], dict(found[1])


# --- recognising SQL text ---------------------------------------------------------

# First keywords of statements applications send; used by protocol detection to
# tell query text from other bytes.
SQL_VERBS = frozenset((
    "SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "VALUES", "TABLE", "BEGIN", "START", "COMMIT",
    "ROLLBACK", "END", "ABORT", "SAVEPOINT", "RELEASE", "SET", "SHOW", "RESET", "CREATE", "DROP",
    "ALTER", "TRUNCATE", "GRANT", "REVOKE", "COPY", "EXPLAIN", "ANALYZE", "VACUUM", "LOCK", "CALL",
    "DO", "PREPARE", "EXECUTE", "DEALLOCATE", "DECLARE", "FETCH", "CLOSE", "MOVE", "LISTEN",
    "NOTIFY", "UNLISTEN", "DISCARD", "COMMENT", "REFRESH", "REINDEX", "CLUSTER", "CHECKPOINT",
    "MERGE", "USE", "REPLACE", "DESCRIBE", "DESC", "HANDLER", "LOAD", "OPTIMIZE", "REPAIR",
    "RENAME", "FLUSH", "KILL", "XA", "SECURITY", "IMPORT", "LOAD", "CHECKSUM",
))
_LEADING = re.compile(rb"(?:\s+|--[^\n]*\n|/\*.*?\*/|\()*", re.DOTALL)
_WORD = re.compile(rb"[A-Za-z]{2,12}(?![A-Za-z0-9_])")


def starts_like_sql(data: bytes | bytearray | memoryview, start: int = 0) -> bool:
    """Does the text at ``data[start:]`` begin (after blanks, comments, parentheses) with an SQL verb?"""
    raw = bytes(data[start:start + 512])
    pos = _LEADING.match(raw).end()
    m = _WORD.match(raw, pos)
    return m is not None and m.group(0).decode("ascii").upper() in SQL_VERBS
