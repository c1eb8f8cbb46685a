#!/usr/bin/env bash
# End to end against a real MariaDB 10.11 with the server_audit plugin (Debian 12's
# mariadb-server package, which ships /usr/lib/mysql/plugin/server_audit.so): a throw-away
# server on 127.0.0.1, a scripted workload with the mariadb client, then `balp-agent test` on
# the server_audit.log it wrote, asserting the exact events per kind and user. Exits non-zero
# on any mismatch.
#
# usage: tests/mariadb_e2e.sh <path of balp-agent> <empty temp dir>
set -euo pipefail

AGENT=${1:?usage: mariadb_e2e.sh <balp-agent binary> <temp dir>}
TMP=${2:?usage: mariadb_e2e.sh <balp-agent binary> <temp dir>}
for b in /usr/sbin/mariadbd /usr/bin/mariadb-install-db /usr/bin/mariadb /usr/bin/mariadb-admin \
    /usr/lib/mysql/plugin/server_audit.so; do
    [ -e "$b" ] || { echo "mariadb_e2e: $b missing (apt-get install mariadb-server)" >&2; exit 2; }
done
AGENT=$(cd "$(dirname "$AGENT")" && pwd)/$(basename "$AGENT")
TMP=$(cd "$TMP" && pwd)

# mariadbd refuses to run as root unless told to with --user=root. The server only lives in
# this temp dir, on 127.0.0.1 and for the few seconds of the test, so running it as the
# invoking user (root in CI) is simpler than chown'ing the temp dir to `mysql`; as another
# user --user is not needed (and only warns).
if [ "$(id -u)" = 0 ]; then
    ASUSER=(--user=root)
else
    ASUSER=()
fi
MROOT="$TMP/mariadb"
DATA="$MROOT/data"
SOCK="$MROOT/mariadb.sock"
AUDIT="$MROOT/server_audit.log"
mkdir -p "$MROOT"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# Root over the socket (no password: --auth-root-authentication-method=normal) for the
# administrative steps that are not part of the workload.
admin() { mariadb-admin --no-defaults --socket="$SOCK" --user=root --connect-timeout=2 "$@"; }
stop() {
    admin shutdown >/dev/null 2>&1 || true
    if [ -n "${PID:-}" ]; then
        for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$PID" 2>/dev/null || true
    fi
}
trap stop EXIT

# normal: root@localhost without password (not unix_socket auth, which would tie root to the
# OS user); --skip-test-db: no `test` database whose wildcard grants could admit anyone.
mariadb-install-db --no-defaults "${ASUSER[@]}" --datadir="$DATA" \
    --auth-root-authentication-method=normal --skip-test-db >"$MROOT/install-db.log" 2>&1 \
    || { cat "$MROOT/install-db.log" >&2; exit 1; }

# The plugin writes local time without zone: the server runs in UTC and the source says UTC.
# --skip-name-resolve: the host column is the client's address (127.0.0.1), not a DNS name.
TZ=UTC mariadbd --no-defaults "${ASUSER[@]}" --datadir="$DATA" --socket="$SOCK" \
    --pid-file="$MROOT/mariadbd.pid" --log-error="$MROOT/error.log" \
    --port="$PORT" --bind-address=127.0.0.1 --skip-name-resolve \
    --plugin-load-add=server_audit --server-audit-logging=ON \
    --server-audit-events=CONNECT,QUERY,TABLE --server-audit-file-path="$AUDIT" \
    >"$MROOT/mariadbd.out" 2>&1 &
PID=$!
up=0
for _ in $(seq 300); do
    if admin ping >/dev/null 2>&1; then up=1; break; fi
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
done
[ "$up" = 1 ] || { echo "mariadb_e2e: server did not answer" >&2; cat "$MROOT/mariadbd.out" "$MROOT/error.log" >&2; exit 1; }

sql_root() { mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P "$PORT" -u root "$@"; }
# sql_app <password> [mariadb args]
sql_app() { mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P "$PORT" -u app -p"$1" -D fhir "${@:2}"; }

# 1. root over TCP: CREATE DATABASE (DDL), CREATE USER and GRANT (user/grant changes).
sql_root <<'SQL'
CREATE DATABASE fhir;
CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY 'app-secret';
GRANT ALL ON fhir.* TO 'app'@'127.0.0.1';
SQL
# 2. app with its password: CREATE TABLE (DDL), INSERT, SELECT, UPDATE, DELETE and a SELECT
#    written over three lines (the log keeps it as one record with \n escapes).
sql_app app-secret >/dev/null <<'SQL'
CREATE TABLE patient (id VARCHAR(64) PRIMARY KEY, family VARCHAR(100));
INSERT INTO patient VALUES ('1', 'Doe');
SELECT * FROM patient WHERE id = '1';
UPDATE patient SET family = 'Roe' WHERE id = '1';
DELETE FROM patient WHERE id = '1';
SELECT id,
       family
  FROM patient;
SQL
# 2b. app as an ORM and a connection pool talk: statements behind comments (--comments keeps
#     them, as Hibernate's use_sql_comments sends them), a parenthesised UNION, and the
#     probes clients send on connect, which touch no table.
sql_app app-secret --comments >/dev/null <<'SQL'
/* load org.example.Patient */ select p.id, p.family from patient p where p.id = '2';
-- nightly report
SELECT count(*) FROM patient;
(SELECT id FROM patient) UNION (SELECT family FROM patient);
select @@version_comment limit 1;
SELECT DATABASE();
/* mysql-connector-j-8.2.0 */SELECT @@session.auto_increment_increment AS auto_increment_increment, @@max_allowed_packet AS max_allowed_packet;
SQL
# 3. app again, a statement that fails (1146: no such table); its own session because the
#    client stops at the first error.
if sql_app app-secret -e 'SELECT * FROM nosuch' >/dev/null 2>&1; then
    echo "mariadb_e2e: SELECT from a missing table succeeded" >&2; exit 1
fi
# 4. app with a wrong password, then a user that does not exist: one FAILED_CONNECT (1045)
#    each, each followed by a DISCONNECT of the same connection id.
if sql_app wrong-password -e 'SELECT 1' >/dev/null 2>&1; then
    echo "mariadb_e2e: the wrong password was accepted" >&2; exit 1
fi
if mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P "$PORT" -u mallory -pguess -e 'SELECT 1' >/dev/null 2>&1; then
    echo "mariadb_e2e: the unknown user was accepted" >&2; exit 1
fi
# 5. root: ALTER USER (new password) and REVOKE (user/grant changes).
sql_root <<'SQL'
ALTER USER 'app'@'127.0.0.1' IDENTIFIED BY 'new-secret';
REVOKE DELETE ON fhir.* FROM 'app'@'127.0.0.1';
SQL
# The shutdown is a root session over the socket as well: it asks SHOW VARIABLES LIKE
# 'pid_file' before COM_SHUTDOWN (which the plugin does not log as a query).
stop
trap - EXIT
[ -s "$AUDIT" ] || { echo "mariadb_e2e: no $AUDIT" >&2; cat "$MROOT/error.log" >&2; exit 1; }

cat >"$TMP/agent.toml" <<EOF
[agent]
state_dir = "$TMP/state"
hostname = "db01"
[[sources]]
name = "mariadb"
type = "file"
include = ["$AUDIT"]
decode = "raw"
timezone = "UTC"
parsers = ["mariadb_audit"]
[output]
type = "stdout"
EOF
"$AGENT" check -c "$TMP/agent.toml" >/dev/null

fail=0
"$AGENT" test -c "$TMP/agent.toml" --source mariadb "$AUDIT" >"$TMP/mariadb.jsonl" 2>"$TMP/mariadb.stderr" \
    || { cat "$TMP/mariadb.stderr" >&2; exit 1; }
SERVERHOST=$(head -n1 "$AUDIT" | cut -d, -f2)
python3 - "$TMP/mariadb.jsonl" "$SERVERHOST" <<'PY' || fail=1
import json, sys
from collections import Counter

events = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8") if l.strip()]

def kind(e):
    sub = (e.get("subtype") or [{}])[0].get("code", "-")
    t = e["type"]["code"]
    if t == "110114":
        return {"110122": "login", "110123": "logout"}.get(sub, sub) + "/" + e.get("outcome", "-")
    if t == "110113":
        return "alert/" + sub
    # A `database` event shows the statement's verb as its DCM type (110112 Query for
    # SELECT, 110110 Patient Record otherwise) and action.
    return f"database/{t}/{e.get('action', '-')}/{e.get('outcome', '-')}"

def user(e):
    for a in e.get("agent", []):
        if a.get("requestor"):
            return a.get("who", {}).get("identifier", {}).get("value", "-")
    return "-"

got = Counter((kind(e), user(e)) for e in events)
want = Counter({
    # root sessions: the readiness ping and the shutdown (socket, host localhost), steps 1
    # and 5 (TCP, host 127.0.0.1).
    ("login/0", "root"): 4,
    ("logout/0", "root"): 4,
    ("login/0", "app"): 3,              # steps 2, 2b and 3
    ("logout/0", "app"): 3,
    # step 4: one failed login each (1045); their DISCONNECTs are folded: no logout.
    ("login/4", "app"): 1,
    ("login/4", "mallory"): 1,
    ("alert/110129", "root"): 1,        # CREATE DATABASE
    ("alert/110129", "app"): 1,         # CREATE TABLE
    ("alert/110136", "root"): 4,        # CREATE USER, GRANT, ALTER USER, REVOKE
    ("database/110110/C/0", "app"): 1,  # INSERT
    # step 2: SELECT, 3-line SELECT; 2b: the three behind comments or in parentheses (the
    # comment-only statement and the connect probes make none)
    ("database/110112/E/0", "app"): 5,
    ("database/110110/U/0", "app"): 1,  # UPDATE
    ("database/110110/D/0", "app"): 1,  # DELETE
    ("database/110112/E/4", "app"): 1,  # SELECT from the missing table (1146)
})
# No events: the TABLE rows (READ/WRITE/CREATE of db.table, MariaDB's reads of mysql.*_stats
# and writes to the grant tables) and the shutdown's SHOW VARIABLES.
print(f"mariadb: events {dict(sorted(got.items()))}")
ok = got == want
if not ok:
    print(f"mariadb: MISMATCH: want {dict(sorted(want.items()))}", file=sys.stderr)
# Every failure names the MariaDB error; every database event names the database.
descs = Counter(e.get("outcomeDesc") for e in events if e.get("outcome") != "0")
if descs != Counter({"MariaDB error 1045": 2, "MariaDB error 1146": 1}):
    print(f"mariadb: MISMATCH: outcomeDesc of the failures {dict(descs)}", file=sys.stderr)
    ok = False
# In minimal mode (the default: no statement text) the table each statement touched is still
# named, from the TABLE rows MariaDB writes before the statement's QUERY row; a statement on a
# missing table names none. The database server is MariaDB's serverhost, not the agent's host.
server = sys.argv[2]
for e in events:
    if e["type"]["code"] in ("110110", "110112"):
        names = [x.get("what", {}).get("identifier", {}).get("value") for x in e.get("entity", [])]
        if "fhir" not in names:
            print(f"mariadb: MISMATCH: database event without database fhir: {names}", file=sys.stderr)
            ok = False
        tables = [x["what"]["identifier"]["value"] for x in e.get("entity", [])
                  if x.get("role", {}).get("code") == "22"]
        want_tables = [] if e.get("outcome") != "0" else ["fhir.patient"]
        if tables != want_tables:
            print(f"mariadb: MISMATCH: tables {tables}, want {want_tables}", file=sys.stderr)
            ok = False
        if any("description" in x for x in e.get("entity", [])):
            print("mariadb: MISMATCH: statement text in minimal mode", file=sys.stderr)
            ok = False
    dest = [a for a in e.get("agent", []) if a.get("type", {}).get("coding", [{}])[0].get("code") == "110152"]
    if e["type"]["code"] in ("110110", "110112") and [a["who"].get("display") for a in dest] != [server]:
        print(f"mariadb: MISMATCH: destination {dest}, want {server}", file=sys.stderr)
        ok = False
sys.exit(0 if ok else 1)
PY
# Every record matched a rule (TABLE rows and SHOW VARIABLES as `none`), and the two
# DISCONNECTs after the failed logins were folded.
for line in 'folded lines: 2' 'unmatched: 0' 'malformed (decoder): 0'; do
    grep -qx "$line" "$TMP/mariadb.stderr" \
        || { echo "mariadb_e2e: want '$line'" >&2; cat "$TMP/mariadb.stderr" >&2; fail=1; }
done
# The server really wrote what the counts rest on: two FAILED_CONNECTs, each followed by the
# DISCONNECT of its connection, and the 3-line SELECT as one record.
n=$(grep -c ',FAILED_CONNECT,,,1045$' "$AUDIT" || true)
[ "$n" = 2 ] || { echo "mariadb_e2e: want 2 FAILED_CONNECT records, got $n" >&2; fail=1; }
for conn in $(grep ',FAILED_CONNECT,' "$AUDIT" | cut -d, -f5); do
    grep -q ",$conn,0,DISCONNECT,,,0\$" "$AUDIT" \
        || { echo "mariadb_e2e: no DISCONNECT after failed connection $conn" >&2; fail=1; }
done
grep -qF "'SELECT id,\\n       family\\n  FROM patient',0" "$AUDIT" \
    || { echo "mariadb_e2e: no 3-line SELECT record in the log" >&2; fail=1; }
# The plugin masks passwords (IDENTIFIED BY *****): none reaches the events.
if grep -qE 'app-secret|new-secret' "$AUDIT" "$TMP/mariadb.jsonl"; then
    echo "mariadb_e2e: a password reached the log or the events" >&2; fail=1
fi
if [ "$fail" != 0 ]; then
    echo "mariadb_e2e: FAILED (log in $AUDIT)" >&2
    exit 1
fi
echo "mariadb_e2e: ok"
