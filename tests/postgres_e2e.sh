#!/usr/bin/env bash
# End to end against a real PostgreSQL 15 + pgaudit (Debian's postgresql-15 and
# postgresql-15-pgaudit packages): a throw-away cluster on 127.0.0.1, a scripted workload with
# psql, then `balp-agent test` on the stderr, csvlog and jsonlog files it wrote, asserting the exact
# events per kind and user. Exits non-zero on any mismatch.
#
# usage: tests/postgres_e2e.sh <path of balp-agent> <empty temp dir>
# env:   BALP_E2E_EXPECT_DATABASE=0  only print the 5 `database` events instead of asserting
#        them (default 1: asserted).
set -euo pipefail

AGENT=${1:?usage: postgres_e2e.sh <balp-agent binary> <temp dir>}
TMP=${2:?usage: postgres_e2e.sh <balp-agent binary> <temp dir>}
PGBIN=/usr/lib/postgresql/15/bin
[ -x "$PGBIN/initdb" ] || { echo "postgres_e2e: $PGBIN/initdb missing (apt-get install postgresql-15 postgresql-15-pgaudit)" >&2; exit 2; }
AGENT=$(cd "$(dirname "$AGENT")" && pwd)/$(basename "$AGENT")
TMP=$(cd "$TMP" && pwd)

# PostgreSQL refuses to run as root: run the server and psql as `postgres` then.
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || { echo "postgres_e2e: running as root but no user 'postgres'" >&2; exit 2; }
    AS=(runuser -u postgres --)
    chmod 755 "$TMP"
else
    AS=()
fi
PGROOT="$TMP/pg"
DATA="$PGROOT/data"
SOCK="$PGROOT/sock"
LOGDIR="$PGROOT/log"
mkdir -p "$PGROOT" "$SOCK" "$LOGDIR"
[ ${#AS[@]} -eq 0 ] || chown -R postgres: "$PGROOT"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

stop() {
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1 || true
}
trap stop EXIT

"${AS[@]}" "$PGBIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --no-instructions >"$PGROOT/initdb.log" 2>&1 \
    || { cat "$PGROOT/initdb.log" >&2; exit 1; }
# ssl = on with a throw-away self-signed certificate, so that libpq's default
# sslmode=prefer behaves as on a real server: a refused login is retried without SSL.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
    -keyout "$DATA/server.key" -out "$DATA/server.crt" >"$PGROOT/openssl.log" 2>&1 \
    || { cat "$PGROOT/openssl.log" >&2; exit 1; }
chmod 600 "$DATA/server.key"
[ ${#AS[@]} -eq 0 ] || chown postgres: "$DATA/server.key" "$DATA/server.crt"
cat >>"$DATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCK'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
log_connections = on
log_disconnections = on
shared_preload_libraries = 'pgaudit'
pgaudit.log = 'read,write,ddl,role'
pgaudit.log_relation = on
pgaudit.log_parameter = on
logging_collector = on
log_destination = 'stderr,csvlog,jsonlog'
log_directory = '$LOGDIR'
log_filename = 'postgresql'
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'Europe/Berlin'
EOF
# A streaming-replication role may connect over TCP to the replication pseudo-database.
echo "host replication replicator 127.0.0.1/32 scram-sha-256" >>"$DATA/pg_hba.conf"
"${AS[@]}" "$PGBIN/pg_ctl" -D "$DATA" -l "$PGROOT/pg_ctl.log" -w -t 60 start >/dev/null \
    || { cat "$PGROOT/pg_ctl.log" "$LOGDIR"/* >&2 2>/dev/null; exit 1; }

psql_super() { "${AS[@]}" "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres "$@"; }
# psql_app <sslmode> <password> [psql args]
psql_app() { PGPASSWORD=$2 PGSSLMODE=$1 "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U app -d fhir "${@:3}"; }

# 1. superuser over the socket (trust): CREATE ROLE (ROLE), CREATE DATABASE (DDL), then a
#    second session (\c) in the new database: CREATE EXTENSION pgaudit (DDL). The extension's
#    event triggers make pgaudit name the objects of DDL (without it CREATE TABLE is one line
#    with an empty object name; with it, one line per object: table and primary key index).
psql_super -d postgres >/dev/null <<'SQL'
CREATE ROLE app LOGIN PASSWORD 'app-secret';
CREATE ROLE replicator REPLICATION LOGIN PASSWORD 'repl-secret';
CREATE DATABASE fhir OWNER app;
\c fhir
CREATE EXTENSION pgaudit;
SQL
# 2. app over TCP with its password: CREATE TABLE (DDL: table + its primary key index),
#    INSERT, SELECT, UPDATE, DELETE and a SELECT written over three lines.
psql_app require app-secret >/dev/null <<'SQL'
CREATE TABLE patient (id text PRIMARY KEY, family text);
INSERT INTO patient VALUES ('1', 'Doe');
SELECT * FROM patient WHERE id = '1';
UPDATE patient SET family = 'Roe' WHERE id = '1';
DELETE FROM patient WHERE id = '1';
SELECT id,
       family
  FROM patient;
SQL
# 3. app with a wrong password, twice: first with libpq's default sslmode=prefer (the server
#    logs two failures: with SSL, then the retry without), then 1.5 s later, past the preset's
#    1 s repeat window, with sslmode=disable (one failure). Two attempts, three FATAL lines.
if psql_app prefer wrong-password -c 'SELECT 1' >/dev/null 2>&1; then
    echo "postgres_e2e: the wrong password was accepted" >&2; exit 1
fi
sleep 1.5
if psql_app disable wrong-password -c 'SELECT 1' >/dev/null 2>&1; then
    echo "postgres_e2e: the wrong password was accepted" >&2; exit 1
fi
# 3b. a physical replication connection, as a standby's walreceiver or pg_basebackup opens
#    it: "replication connection authorized" (login) and a disconnection with an empty
#    database (logout).
PGPASSWORD=repl-secret "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 \
    "host=127.0.0.1 port=$PORT user=replicator replication=true sslmode=require" \
    -c 'IDENTIFY_SYSTEM' >/dev/null
# 4. superuser: GRANT and ALTER ROLE (ROLE).
psql_super -d fhir >/dev/null <<'SQL'
GRANT SELECT ON patient TO PUBLIC;
ALTER ROLE app PASSWORD 'new-secret';
SQL
"${AS[@]}" "$PGBIN/pg_ctl" -D "$DATA" -w -t 60 stop >/dev/null
trap - EXIT

cat >"$TMP/agent.toml" <<EOF
[agent]
state_dir = "$TMP/state"
hostname = "db01"
[[sources]]
name = "pg"
type = "file"
include = ["$LOGDIR/postgresql"]
decode = "postgres"
multiline = "indented"
log_line_prefix = "%m [%p] %q%u@%d "
timezone = "Europe/Berlin"
parsers = ["postgres", "pgaudit"]
[[sources]]
name = "pgcsv"
type = "file"
include = ["$LOGDIR/postgresql.csv"]
decode = "postgres_csv"
multiline = "csv"
timezone = "Europe/Berlin"
parsers = ["postgres", "pgaudit"]
[[sources]]
name = "pgjson"
type = "file"
include = ["$LOGDIR/postgresql.json"]
decode = "postgres_json"
timezone = "Europe/Berlin"
parsers = ["postgres", "pgaudit"]
[output]
type = "stdout"
EOF
"$AGENT" check -c "$TMP/agent.toml" >/dev/null

fail=0
for src in pg:postgresql pgcsv:postgresql.csv pgjson:postgresql.json; do
    name=${src%%:*}
    file=$LOGDIR/${src#*:}
    "$AGENT" test -c "$TMP/agent.toml" --source "$name" "$file" >"$TMP/$name.jsonl" 2>"$TMP/$name.stderr" \
        || { cat "$TMP/$name.stderr" >&2; exit 1; }
    # Every record decodes: a continuation line left unjoined would be a malformed record.
    grep -qx 'malformed (decoder): 0' "$TMP/$name.stderr" \
        || { echo "postgres_e2e: $name: malformed records" >&2; cat "$TMP/$name.stderr" >&2; fail=1; }
    python3 - "$TMP/$name.jsonl" "$name" "${BALP_E2E_EXPECT_DATABASE:-1}" <<'PY' || fail=1
import json, sys
from collections import Counter

path, name, expect_db = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
events = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]

def kind(e):
    sub = (e.get("subtype") or [{}])[0].get("code", "-")
    t = e["type"]["code"]
    if t == "110114":
        return {"110122": "login", "110123": "logout"}.get(sub, sub) + "/" + e.get("outcome", "-")
    if t == "110113":
        return "alert/" + sub
    return "database"

def user(e):
    for a in e.get("agent", []):
        if a.get("requestor"):
            return a.get("who", {}).get("identifier", {}).get("value", "-")
    return "-"

got = Counter((kind(e), user(e)) for e in events)
want = Counter({
    ("login/0", "postgres"): 3,        # sessions 1, 1 after \c, 4
    ("login/0", "app"): 1,
    ("login/4", "app"): 2,             # 2 attempts (3 FATAL lines); no logout
    ("logout/0", "postgres"): 3,
    ("logout/0", "app"): 1,
    ("alert/110129", "postgres"): 2,   # CREATE DATABASE, CREATE EXTENSION
    ("alert/110129", "app"): 2,        # CREATE TABLE, CREATE INDEX (primary key)
    ("alert/110136", "postgres"): 4,   # CREATE ROLE x2, GRANT, ALTER ROLE
    ("login/0", "replicator"): 1,      # the replication connection ...
    ("logout/0", "replicator"): 1,     # ... and its end ("database= host=...")
})
db = Counter({k: v for k, v in got.items() if k[0] == "database"})
rest = got - db
print(f"{name}: events {dict(sorted(got.items()))}")
ok = rest == want
if not ok:
    print(f"{name}: MISMATCH: want {dict(sorted(want.items()))}", file=sys.stderr)
db_want = Counter({("database", "app"): 5})  # INSERT, SELECT, UPDATE, DELETE, 3-line SELECT
if db != db_want:
    msg = f"{name}: database events {dict(db)} (want {dict(db_want)} once `database` maps)"
    if expect_db:
        print("MISMATCH: " + msg, file=sys.stderr)
        ok = False
    else:
        print("note: " + msg)
# The replication login is marked as such, and its events name the client address.
repl = [e for e in events if user(e) == "replicator"]
if not any(e.get("outcomeDesc") == "replication connection" for e in repl):
    print(f"{name}: replication login without outcomeDesc", file=sys.stderr)
    ok = False
# (stderr's prefix here has no %h: there only the disconnection message names the client.)
for e in repl:
    if name == "pg" and e.get("outcomeDesc") == "replication connection":
        continue
    if not any(a.get("network", {}).get("address") == "127.0.0.1" for a in e.get("agent", [])):
        print(f"{name}: replication event without client 127.0.0.1: {e}", file=sys.stderr)
        ok = False
sys.exit(0 if ok else 1)
PY
done
# The server really logged the SSL retry: three failure lines for the two attempts, and the
# agent folded exactly one of them (stderr and csvlog alike).
n=$(grep -c 'FATAL:  password authentication failed for user "app"' "$LOGDIR/postgresql" || true)
[ "$n" = 3 ] || { echo "postgres_e2e: want 3 password failure lines in the log, got $n" >&2; fail=1; }
for name in pg pgcsv pgjson; do
    grep -qx 'folded lines: 1' "$TMP/$name.stderr" \
        || { echo "postgres_e2e: $name: want 1 folded line" >&2; cat "$TMP/$name.stderr" >&2; fail=1; }
done
# The joined 3-line statement must reach the agent whole in both formats (checked on the
# raw records: the `statement` only shows in comprehensive mode).
grep -q 'SELECT id,$' "$LOGDIR/postgresql" || { echo "postgres_e2e: no multi-line statement in the log" >&2; fail=1; }
if [ "$fail" != 0 ]; then
    echo "postgres_e2e: FAILED (logs in $LOGDIR)" >&2
    exit 1
fi
echo "postgres_e2e: ok"
