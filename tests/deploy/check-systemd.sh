#!/usr/bin/env bash
# Run inside the booted test system by orchd-deploy-check.service: orchd under systemd for
# real. One line per check in $1/results ("PASS name: detail" or "FAIL name: detail"), the
# evidence beside it, then "DONE"; the unit powers the system off when this exits.
# Every wait is bounded.
set -uo pipefail
out=$1
results=$out/results
url=http://127.0.0.1:8000
: > "$results"

pass() { echo "PASS $1: ${*:2}" >> "$results"; }
fail() { echo "FAIL $1: ${*:2}" >> "$results"; }
check() { local name=$1; shift; if "$@"; then pass "$name" "$*"; else fail "$name" "$*"; fi; }
prop() { systemctl show -P "$2" "$1"; }
# Poll until a command succeeds: at most $1 tenths of a second.
poll() { local n=$1; shift; for _ in $(seq "$n"); do "$@" && return 0; sleep 0.1; done; "$@"; }
healthy() { curl -fsS -o /dev/null --max-time 5 "$url/health"; }
pid_gone() { ! kill -0 "$1" 2>/dev/null; }
# Change the installed configuration file: $1 is a Python statement on `config`.
edit_config() {
  python3 - /etc/orchd/orchestrator.yaml "$1" <<'PY'
import sys, yaml
path, statement = sys.argv[1], sys.argv[2]
config = yaml.safe_load(open(path))
exec(statement)
open(path, "w").write(yaml.safe_dump(config, sort_keys=False))
PY
}

# The upstream of the example configuration's endpoint httpbin (127.0.0.1:9001): the load
# below is proxied requests, what must never fail. (/health is not: it answers 503 while
# orchd stops, as it should, to a request that came in on a connection accepted just before.)
mkdir -p /tmp/upstream && echo ok > /tmp/upstream/ok.txt
python3 -m http.server 9001 --bind 127.0.0.1 --directory /tmp/upstream \
  > "$out/upstream.log" 2>&1 &
proxied=$url/orchestrator/httpbin/ok.txt

# Requests in a loop while something happens, one curl (one new connection, no retry) per
# request: every answer's status code (000: no answer: refused, reset, or closed unanswered).
LOAD_PID=
load_start() {
  : > "$out/$1.codes"
  ( for _ in $(seq 3000); do
      [ -e "$out/$1.stop" ] && break
      curl -s -o /dev/null -w '%{http_code}\n' --max-time 10 "$proxied" >> "$out/$1.codes"
    done ) &
  LOAD_PID=$!
  poll 50 test -s "$out/$1.codes"
}
load_stop() {
  sleep 0.5  # requests also after the change, not only during it
  touch "$out/$1.stop"; wait "$LOAD_PID"
  local total bad
  total=$(wc -l < "$out/$1.codes"); bad=$(grep -vc '^200$' "$out/$1.codes")
  if [ "$total" -gt 0 ] && [ "$bad" -eq 0 ]; then pass "$1" "$total requests, all 200"
  else fail "$1" "$total requests, $bad not 200: $(sort "$out/$1.codes" | uniq -c | tr '\n' ' ')"; fi
}

# ------------------------------------------------------------------ start (Type=notify)
systemctl is-enabled orchd.service > "$out/enabled" 2>&1
if timeout 60 systemctl start orchd; then
  pass start "systemctl start returned 0: $(prop orchd ActiveState)/$(prop orchd SubState)"
else
  fail start "systemctl start failed: $(systemctl status --no-pager orchd 2>&1 | tail -5)"
fi
check active test "$(prop orchd ActiveState)" = active
check notify-type test "$(prop orchd Type)" = notify
check health-after-start healthy
check proxied-after-start poll 50 curl -fsS -o /dev/null --max-time 5 "$proxied"
check status-text test "$(prop orchd StatusText)" = serving
check runs-as-orchd test "$(ps -o user= -p "$(prop orchd MainPID)")" = orchd
check control-socket-0660 test "$(stat -c '%a %U' /run/orchd/orchd.sock)" = "660 orchd"
systemctl status --no-pager orchd > "$out/status.txt" 2>&1
orchctl status > "$out/orchctl-status.txt" 2>&1
check orchctl-status test -s "$out/orchctl-status.txt"

# ------------------------------------------------------------------ reload (SIGHUP)
systemd-analyze log-level debug
cp /etc/orchd/orchestrator.yaml /tmp/orchestrator.yaml.orig
edit_config 'config["endpoints"].append({"name": "deploy_check", "url": "http://127.0.0.1:9/deploy"})'
since=$(date '+%Y-%m-%d %H:%M:%S')
mainpid=$(prop orchd MainPID)
check reload-command timeout 30 systemctl reload orchd
check reload-applied poll 100 sh -c "curl -fsS $url/registry/endpoints/deploy_check >/dev/null"
check reload-same-pid test "$(prop orchd MainPID)" = "$mainpid"
check reloading-notified poll 50 sh -c \
  "journalctl -u orchd --since '$since' -o cat | grep -q 'RELOADING=1'"
check ready-after-reload poll 50 sh -c \
  "test \"\$(systemctl show -P StatusText orchd)\" = serving && test \"\$(systemctl show -P ActiveState orchd)\" = active"
journalctl -u orchd --since "$since" -o cat | grep -E 'notification|RELOAD|reload' > "$out/reload-journal.txt"
systemd-analyze log-level info
cp /tmp/orchestrator.yaml.orig /etc/orchd/orchestrator.yaml
timeout 30 systemctl reload orchd
poll 100 sh -c "! curl -fsS $url/registry/endpoints/deploy_check >/dev/null 2>&1"

# ------------------------------------------------------------------ systemctl restart
old=$(prop orchd MainPID)
check systemctl-restart timeout 90 systemctl restart orchd
new=$(prop orchd MainPID)
check restart-new-mainpid test "$new" != "$old" -a "$new" != 0
check restart-active test "$(prop orchd ActiveState)" = active
check health-after-restart poll 50 healthy

# ------------------------------------------------------------------ orchctl restart (handover)
old=$(prop orchd MainPID)
load_start orchctl-restart-no-failed-request
timeout 90 orchctl restart > "$out/orchctl-restart.txt" 2>&1; rc=$?
check orchctl-restart test "$rc" = 0
check orchctl-restart-old-exits poll 400 pid_gone "$old"
load_stop orchctl-restart-no-failed-request
new=$(prop orchd MainPID)
check mainpid-follows test "$new" != "$old" -a "$new" != 0 -a -d "/proc/$new"
check mainpid-is-orchd grep -q orchd "/proc/$new/cmdline"
# systemd's own child (its parent is process 1), not an "alien" it would not wait for.
check mainpid-child-of-systemd test "$(ps -o ppid= -p "$new" | tr -d ' ')" = 1
check mainpid-not-alien sh -c "! journalctl -u orchd -o cat | grep -q 'not our child'"
check handover-active test "$(prop orchd ActiveState)/$(prop orchd NRestarts)" = active/0
check handover-reload timeout 30 systemctl reload orchd
check handover-healthy healthy
echo "before $old after $new" > "$out/handover-pids.txt"

# ------------------------------------------------------------------ journal, stop
check journal-has-logs sh -c "journalctl -u orchd -o cat | grep -q 'orchd 1.0.0 ready'"
journalctl -u orchd --no-pager -o short-iso > "$out/journal.txt" 2>&1
since=$(date '+%Y-%m-%d %H:%M:%S')
check systemctl-stop timeout 60 systemctl stop orchd
systemctl show -p Result,ExecMainCode,ExecMainStatus,ExecMainPID orchd > "$out/stop.txt"
journalctl -u orchd --since "$since" --no-pager -o short-iso >> "$out/stop.txt" 2>&1
check stop-clean test "$(prop orchd Result)/$(prop orchd ExecMainStatus)" = success/0
check stop-drained sh -c "journalctl -u orchd --since '$since' -o cat | grep -q 'stopping: draining'"
check stop-socket-removed test ! -e /run/orchd/orchd.sock

# ------------------------------------------------------------------ socket activation
check socket-start timeout 30 systemctl start orchd.socket
check socket-listening test "$(prop orchd.socket ActiveState)" = active
systemctl reset-failed orchd 2>/dev/null
check service-not-started test "$(prop orchd ActiveState)" = inactive
check first-request-starts poll 300 healthy
check activated-service-active test "$(prop orchd ActiveState)" = active
check serves-inherited-socket poll 50 sh -c \
  "journalctl -u orchd -o cat | grep -q 'on inherited socket'"
load_start socket-restart-no-failed-request
check socket-systemctl-restart timeout 90 systemctl restart orchd
load_stop socket-restart-no-failed-request
old=$(prop orchd MainPID)
load_start socket-orchctl-restart-no-failed-request
check socket-orchctl-restart timeout 90 orchctl restart
check socket-old-exits poll 400 pid_gone "$old"
load_stop socket-orchctl-restart-no-failed-request
check socket-mainpid-follows test "$(prop orchd MainPID)" != "$old"
since=$(date '+%Y-%m-%d %H:%M:%S')
check socket-stop timeout 60 systemctl stop orchd.socket orchd
check socket-stop-clean test "$(prop orchd Result)/$(prop orchd ExecMainStatus)" = success/0
journalctl -u orchd -u orchd.socket --no-pager -o short-iso > "$out/journal-socket.txt" 2>&1

# ------------------------------------------------------------------ server.workers: 2
# The same unit, one supervisor (MAINPID) and two workers in the service's cgroup.
cgroup_procs() { cat "/sys/fs/cgroup$(prop orchd ControlGroup)/cgroup.procs" 2>/dev/null; }
worker_pids() { journalctl -u orchd --since "$1" -o cat \
  | sed -n 's/.*with 2 workers (pids \([0-9 ]*\)).*/\1/p' | tail -1; }
cp /etc/orchd/orchestrator.yaml /tmp/orchestrator.yaml.orig
edit_config 'config.setdefault("server", {})["workers"] = 2'
since=$(date '+%Y-%m-%d %H:%M:%S')
check workers-start timeout 60 systemctl start orchd
check workers-healthy poll 50 healthy
check workers-proxied poll 50 curl -fsS -o /dev/null --max-time 5 "$proxied"
workers=$(worker_pids "$since")
main=$(prop orchd MainPID)
check workers-two test "$(echo $workers | wc -w)" = 2
in_cgroup() { local procs; procs=$(cgroup_procs); for p in "$@"; do
  echo "$procs" | grep -qx "$p" || return 1; done; }
check workers-in-cgroup in_cgroup $workers
check workers-mainpid-is-supervisor sh -c "! echo ' $workers ' | grep -q ' $main '"
check workers-status-text test "$(prop orchd StatusText)" = serving
since=$(date '+%Y-%m-%d %H:%M:%S')
check workers-reload timeout 30 systemctl reload orchd
check workers-reload-ready poll 50 sh -c \
  "test \"\$(systemctl show -P StatusText orchd)\" = serving"
load_start workers-kill-no-failed-request
victim=$(echo $workers | cut -d' ' -f1)
kill -9 "$victim"
check workers-replaced poll 100 sh -c \
  "journalctl -u orchd --since '$since' -o cat | grep -q 'replaced by pid'"
load_stop workers-kill-no-failed-request
journalctl -u orchd --since "$since" -o cat | grep -E 'worker|replaced' > "$out/workers-kill.txt"
old=$(prop orchd MainPID)
load_start workers-orchctl-restart-no-failed-request
check workers-orchctl-restart timeout 90 orchctl restart
check workers-old-exits poll 400 pid_gone "$old"
load_stop workers-orchctl-restart-no-failed-request
check workers-mainpid-follows test "$(prop orchd MainPID)" != "$old"
orchctl status > "$out/orchctl-status-workers.txt" 2>&1
check workers-orchctl-status grep -q "workers: 2 of 2 running" "$out/orchctl-status-workers.txt"
systemctl status --no-pager orchd > "$out/status-workers.txt" 2>&1
check workers-stop timeout 60 systemctl stop orchd
check workers-stop-clean test "$(prop orchd Result)/$(prop orchd ExecMainStatus)" = success/0
check workers-none-left sh -c "! pgrep -f 'multiprocessing.forkserver' >/dev/null"
cp /tmp/orchestrator.yaml.orig /etc/orchd/orchestrator.yaml

# ------------------------------------------------------------------ exposure
systemd-analyze security --no-pager orchd.service > "$out/security.txt" 2>&1
level=$(sed -n 's/.*Overall exposure level for orchd.service: \([0-9.]*\).*/\1/p' "$out/security.txt")
check security-exposure awk -v l="${level:-99}" 'BEGIN { exit !(l <= 2.0) }'
echo "exposure $level" >> "$out/security.txt"

echo DONE >> "$results"
