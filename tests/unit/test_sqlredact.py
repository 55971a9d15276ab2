"""SQL literal redaction and statement summaries (shared by the PostgreSQL and MySQL handlers)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.protocols._sqlredact import MYSQL, POSTGRESQL, describe_query, redact, starts_like_sql, \
    summarize


@pytest.mark.parametrize("sql, expected", [
    ("SELECT * FROM users WHERE name = 'bob' AND age > 42",
     "SELECT * FROM users WHERE name = ? AND age > ?"),
    ("SELECT 'it''s', 'a' 'b'", "SELECT ?, ? ?"),
    ("SELECT E'it\\'s', e'\\\\' , 1", "SELECT ?, ? , ?"),
    # Standard strings: a backslash is just a character.
    ("SELECT 'C:\\' AS path, 7", "SELECT ? AS path, ?"),
    ("SELECT $$ a 'quoted' $body$ $$, $fn$ x $$ y $fn$ || 'z'", "SELECT ?, ? || ?"),
    ("SELECT X'1F', B'0101', N'nat', U&'d\\0061t' FROM t", "SELECT ?, ?, ?, ? FROM t"),
    ("SELECT 1.5e-3, .5, 1_000, 0x1F, 0b101, 0o17, -7", "SELECT ?, ?, ?, ?, ?, ?, -?"),
    ("SELECT DATE '2020-01-01' + interval '1 day'", "SELECT DATE ? + interval ?"),
    # Identifiers, parameters and quoted identifiers stay.
    ("SELECT t1.col2, \"it's\", \"Tab 3\".x FROM tab3 t1 WHERE id = $1 AND x = $12",
     "SELECT t1.col2, \"it's\", \"Tab 3\".x FROM tab3 t1 WHERE id = $1 AND x = $12"),
    ("SELECT a$1 FROM t", "SELECT a$1 FROM t"),
    # Comments stay, and a quote inside one starts no string.
    ("SELECT 1 -- don't\nFROM t /* it's 'x' */ WHERE a = 'b'",
     "SELECT ? -- don't\nFROM t /* it's 'x' */ WHERE a = ?"),
    ("SELECT * FROM t WHERE id IN (1, 2, 3) OR id in ('a','b')",
     "SELECT * FROM t WHERE id IN (?) OR id in (?)"),
    ("SELECT * FROM t WHERE id IN ($1, $2)", "SELECT * FROM t WHERE id IN ($1, $2)"),
    ("INSERT INTO t VALUES (1, 'a'), (2, 'b'),(3,'c')", "INSERT INTO t VALUES (?, ?)"),
    ("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c", "INSERT INTO t VALUES (?, ?)"),
    ("INSERT INTO t VALUES (1, 'a'), (2, 'b'),(", "INSERT INTO t VALUES (?, ?)"),
    ("SELECT f(1), 2, g(3, 4)", "SELECT f(?), ?, g(?, ?)"),
    # Text cut short by a capture.
    ("SELECT 'abc", "SELECT ?"),
    ("SELECT $$abc", "SELECT ?"),
    ("SELECT 'Zoë', 'ünï' FROM t", "SELECT ?, ? FROM t"),
    ("", ""),
])
def test_postgresql_literals(sql, expected):
    assert redact(sql, POSTGRESQL) == expected


@pytest.mark.parametrize("sql, expected", [
    ("SELECT * FROM users WHERE name = \"bob\" AND pw = 'x\\'y' AND n = 3",
     "SELECT * FROM users WHERE name = ? AND pw = ? AND n = ?"),
    ("SELECT `col 1`, `it's` FROM `t`", "SELECT `col 1`, `it's` FROM `t`"),
    ("SELECT _utf8mb4'x', _latin1 'y', X'1F', 0x1F, b'01', 0b01", "SELECT ?, ?, ?, ?, ?, ?"),
    ("SELECT 1 # it's a comment\nFROM t", "SELECT ? # it's a comment\nFROM t"),
    ("SELECT /*+ MAX_EXECUTION_TIME(1000) */ a FROM t WHERE b = ?",
     "SELECT /*+ MAX_EXECUTION_TIME(1000) */ a FROM t WHERE b = ?"),
    ("SELECT 'a\\\\', 'b' FROM t", "SELECT ?, ? FROM t"),
    ("SET NAMES utf8mb4", "SET NAMES utf8mb4"),
])
def test_mysql_literals(sql, expected):
    assert redact(sql, MYSQL) == expected


@pytest.mark.parametrize("sql, operation, collection, batch", [
    ("SELECT a FROM users WHERE x = ?", "SELECT", "users", None),
    ("select a from Users u where x = ?", "SELECT", "Users", None),
    ("SELECT a FROM public.users", "SELECT", "public.users", None),
    ('SELECT a FROM "Public"."Users"', "SELECT", "Public.Users", None),
    ("SELECT a FROM `shop`.`items`", "SELECT", "shop.items", None),
    ("SELECT a FROM users u JOIN orders o ON o.u = u.id", "SELECT", None, None),
    ("SELECT a FROM users, orders", "SELECT", None, None),
    ("SELECT a FROM users u, orders o", "SELECT", None, None),
    ("SELECT * FROM (SELECT 1 FROM t) s", "SELECT", None, None),
    ("SELECT a FROM t WHERE id IN (SELECT id FROM u)", "SELECT", None, None),
    ("SELECT now()", "SELECT", None, None),
    ("INSERT INTO public.items (a) VALUES (?)", "INSERT", "public.items", None),
    ("INSERT INTO a SELECT * FROM b", "INSERT", None, None),
    ("REPLACE INTO t VALUES (?)", "REPLACE", "t", None),
    ('UPDATE ONLY "Items" SET a = ? WHERE b = ?', "UPDATE", "Items", None),
    ("UPDATE t SET a = ? FROM u WHERE t.id = u.id", "UPDATE", None, None),
    ("DELETE FROM t WHERE a = ?", "DELETE", "t", None),
    ("DELETE FROM t USING u WHERE t.a = u.a", "DELETE", None, None),
    ("CREATE TABLE IF NOT EXISTS t (a int)", "CREATE", "t", None),
    ("CREATE INDEX i ON t (a)", "CREATE", None, None),
    ("DROP TABLE IF EXISTS t", "DROP", "t", None),
    ("TRUNCATE t", "TRUNCATE", "t", None),
    ("TRUNCATE TABLE t", "TRUNCATE", "t", None),
    ("COPY items FROM STDIN", "COPY", "items", None),
    ("COPY (SELECT 1) TO STDOUT", "COPY", None, None),
    ("  /* tag */ ( SELECT 1 FROM t )", "SELECT", "t", None),
    ("WITH x AS (SELECT 1) SELECT * FROM x", "WITH", None, None),
    ("BEGIN", "BEGIN", None, None),
    ("INSERT INTO a VALUES (?); INSERT INTO a VALUES (?);", "BATCH INSERT", "a", 2),
    ("INSERT INTO a VALUES (?); INSERT INTO b VALUES (?)", "BATCH INSERT", None, 2),
    ("BEGIN; SELECT ?; COMMIT", "BATCH", None, 3),
    ("", None, None, None),
    ("  -- nothing\n ; ", None, None, None),
])
def test_summaries(sql, operation, collection, batch):
    summary = summarize(sql)
    assert (summary.operation, summary.collection, summary.batch_size) == (operation, collection, batch)


def test_describe_query_gives_span_name_and_attributes():
    name, attrs = describe_query("SELECT name FROM items WHERE id = 42", POSTGRESQL)
    assert name == "SELECT items"
    assert attrs == {"db.query.text": "SELECT name FROM items WHERE id = ?",
                     "db.operation.name": "SELECT", "db.query.summary": "SELECT items",
                     "db.collection.name": "items"}
    attrs["mutated"] = True  # callers get their own dict
    assert "mutated" not in describe_query("SELECT name FROM items WHERE id = 42", POSTGRESQL)[1]
    name, attrs = describe_query("BEGIN; COMMIT", POSTGRESQL)
    assert (name, attrs["db.operation.batch.size"]) == ("BATCH", 2)
    assert describe_query("   ", MYSQL) == (None, {"db.query.text": "   "})


@pytest.mark.parametrize("data, expected", [
    (b"SELECT 1", True), (b"  /* x */ (select 1)", True), (b"-- c\ninsert into t", True),
    (b"begin", True), (b"GET / HTTP/1.1", False), (b"\0\1SELECT", False), (b"selection", False),
    (b"", False), (b"SELECT", True), (b"S", False),
])
def test_starts_like_sql(data, expected):
    assert starts_like_sql(data) is expected


# --- properties -----------------------------------------------------------------------------

def pg_quote(text: str, style: int) -> str:
    if style == 0:
        return "'" + text.replace("'", "''") + "'"
    if style == 1:
        return "E'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "$q$" + text.replace("$q$", "") + "$q$"


def mysql_quote(text: str, style: int) -> str:
    quote = "'" if style == 0 else '"'
    return quote + text.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote


values = st.one_of(
    st.tuples(st.just("s"), st.text(max_size=20), st.integers(0, 2)),
    st.tuples(st.just("n"), st.one_of(st.integers(0, 10**12), st.floats(0, 1e6, allow_nan=False)),
              st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(values, min_size=1, max_size=4), st.sampled_from([POSTGRESQL, MYSQL]))
def test_every_literal_is_redacted_whatever_it_contains(literals, dialect):
    quote = pg_quote if dialect == POSTGRESQL else mysql_quote
    rendered = []
    for kind, value, style in literals:
        rendered.append(quote(value, style) if kind == "s" else repr(value))
    conditions = " AND ".join(f"c{i} = {v}" for i, v in enumerate(rendered))
    expected = " AND ".join(f"c{i} = ?" for i in range(len(rendered)))
    sql = f"SELECT a FROM t WHERE {conditions} ORDER BY a"
    assert redact(sql, dialect) == f"SELECT a FROM t WHERE {expected} ORDER BY a"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.sampled_from([POSTGRESQL, MYSQL]))
def test_any_text_redacts_and_summarizes_without_raising(text, dialect):
    once = redact(text, dialect)
    assert redact(once, dialect) == once
    summarize(once)
    describe_query(text, dialect)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=100))
def test_starts_like_sql_never_raises(data):
    starts_like_sql(data)
