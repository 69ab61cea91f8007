#!/usr/bin/env bash
# A single-node Slurm cluster (with accounting) under one directory, for tests and for trying
# `python -m bmrs grid --executor slurm` on one machine. Debian packages, root, no systemd.
#
#   eval "$(scripts/slurm_local.sh start [DIR])"   # prints: export SLURM_CONF=DIR/slurm.conf
#   scripts/slurm_local.sh status [DIR]            # which daemons run; exit 0 if all of them
#   scripts/slurm_local.sh stop [DIR]              # cancel every job, then stop every daemon it started
#
# DIR defaults to $BMRS_SLURM_DIR or ${TMPDIR:-/tmp}/bmrs-slurm. Everything lives under DIR: the munge
# key and socket, a MariaDB data directory (slurmdbd's accounting, which submitit needs: without it
# sacct fails and a job's final state stays unknown), Slurm's configuration, state, spool, logs and the
# daemons' PID files. Every daemon is stopped by the PID it wrote, and only if that process still
# names DIR (so a recycled PID is never signalled); nothing is killed by name. Both commands are
# idempotent: start on a running cluster only prints the export line, stop on a stopped one does nothing.
# Messages go to stderr; stdout carries only the export line.
#
# Packages: apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd mariadb-server
set -euo pipefail

PACKAGES="slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
DAEMONS="munged mariadbd slurmdbd slurmctld slurmd"   # start order; stop goes in reverse

say() { echo "[slurm_local] $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

usage() {
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
BASE="${1:-${BMRS_SLURM_DIR:-${TMPDIR:-/tmp}/bmrs-slurm}}"
case "$cmd" in start|stop|status) ;; -h|--help) usage; exit 0 ;;
  *) echo "error: unknown command '${cmd}'; use start, stop or status" >&2; usage; exit 2 ;; esac
BASE="$(realpath -m "$BASE")"
CONF="$BASE/slurm.conf"
RUN="$BASE/run"
LOG="$BASE/log"
SOCK="$BASE/munge/munge.socket.2"

# ---- PIDs ---------------------------------------------------------------------------------------
pid_of() {  # the PID in run/<daemon>.pid if that process is alive and still ours (names BASE)
  local f="$RUN/$1.pid" pid
  [ -s "$f" ] || return 1
  pid="$(tr -dc '0-9' < "$f")"
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  if tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$BASE" \
     || tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$CONF"; then
    echo "$pid"; return 0
  fi
  return 1
}

stop_pid() {  # SIGTERM, wait up to $2 s, then SIGKILL
  local name="$1" wait_s="$2" pid i
  pid="$(pid_of "$name")" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < wait_s * 10; i++)); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  if [ -d "/proc/$pid" ]; then say "$name ($pid) ignored SIGTERM; sending SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  for ((i = 0; i < 50; i++)); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  rm -f "$RUN/$name.pid"
  say "stopped $name ($pid)"
}

elapsed() { local ns=$(( $(date +%s%N) - $1 )); printf '%d.%d' $((ns / 1000000000)) $((ns / 100000000 % 10)); }

running() { local d n=0; for d in $DAEMONS; do pid_of "$d" >/dev/null && n=$((n + 1)); done; echo "$n"; }

wait_for() {  # wait_for SECONDS COMMAND...: poll COMMAND until it succeeds
  local t="$1" i; shift
  for ((i = 0; i < t * 4; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  return 1
}

# ---- stop ---------------------------------------------------------------------------------------
do_stop() {
  local pids i
  export SLURM_CONF="$CONF"
  if pid_of slurmctld >/dev/null; then
    scancel --quiet --full --user=root 2>/dev/null || true
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
    [ -n "${jobs// }" ] && scancel --quiet $jobs 2>/dev/null || true
    for ((i = 0; i < 120; i++)); do
      [ -z "$(squeue -h -o %A 2>/dev/null || true)" ] && break
      sleep 0.5
    done
  fi
  if pid_of slurmd >/dev/null; then  # job steps left behind: the ones this slurmd reports, by PID
    for ((i = 0; i < 40; i++)); do
      pids=$(scontrol listpids 2>/dev/null | awk 'NR > 1 && $1 ~ /^[0-9]+$/ {print $1}' | sort -u | tr '\n' ' ' || true)
      [ -z "${pids// }" ] && break
      [ "$i" = 20 ] && { say "job processes still alive after 10 s: SIGKILL $pids"; kill -KILL $pids 2>/dev/null || true; }
      sleep 0.5
    done
  fi
  stop_pid slurmd 15
  stop_pid slurmctld 15
  stop_pid slurmdbd 15
  stop_pid mariadbd 30
  stop_pid munged 10
}

if [ "$cmd" = status ]; then
  for d in $DAEMONS; do
    if p="$(pid_of "$d")"; then say "$d running ($p)"; else say "$d not running"; fi
  done
  [ "$(running)" = "$(echo $DAEMONS | wc -w)" ]
  exit $?
fi
if [ "$cmd" = stop ]; then
  [ -f "$CONF" ] || { say "nothing to stop under $BASE"; exit 0; }
  t0=$(date +%s%N)
  do_stop
  say "stopped in $(elapsed "$t0") s"
  exit 0
fi

# ---- start --------------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "starting a local Slurm needs root (the daemons run as root); run as root, or use --executor local"
missing=""
for b in munged mungekey mariadbd mariadb-install-db mariadb slurmdbd slurmctld slurmd sbatch squeue sacct sacctmgr scontrol; do
  command -v "$b" >/dev/null 2>&1 || missing="$missing $b"
done
[ -z "$missing" ] || die "missing$missing; install: apt-get install -y --no-install-recommends $PACKAGES"

n="$(running)"
if [ "$n" = "$(echo $DAEMONS | wc -w)" ] && SLURM_CONF="$CONF" scontrol ping >/dev/null 2>&1; then
  say "already running under $BASE"
  echo "export SLURM_CONF=$CONF"
  exit 0
fi
[ "$n" = 0 ] || { say "partly running ($n daemons): restarting"; do_stop; }

t0=$(date +%s%N)
mkdir -p "$BASE" 2>/dev/null || die "cannot create $BASE; choose a writable directory"
mkdir -p "$RUN" "$LOG" "$BASE/munge" "$BASE/state" "$BASE/spool"
chmod 755 "$BASE" "$BASE/munge"   # munged refuses a socket directory others cannot reach

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {  # the first free TCP port from $1, skipping those already chosen
  local p="$1"; shift
  while ! port_free "$p" || [[ " $* " == *" $p "* ]]; do p=$((p + 1)); done
  echo "$p"
}
if [ -f "$BASE/ports" ]; then
  read -r DB_PORT DBD_PORT CTLD_PORT SLURMD_PORT < "$BASE/ports"
else
  DB_PORT=$(pick_port 3307)
  DBD_PORT=$(pick_port 16819 "$DB_PORT")
  CTLD_PORT=$(pick_port 16817 "$DB_PORT" "$DBD_PORT")
  SLURMD_PORT=$(pick_port 16818 "$DB_PORT" "$DBD_PORT" "$CTLD_PORT")
  echo "$DB_PORT $DBD_PORT $CTLD_PORT $SLURMD_PORT" > "$BASE/ports"
fi

# munge
[ -f "$BASE/munge/munge.key" ] || mungekey --create --keyfile="$BASE/munge/munge.key"
chmod 600 "$BASE/munge/munge.key"
munged --force --key-file="$BASE/munge/munge.key" --socket="$SOCK" --pid-file="$RUN/munged.pid" \
  --log-file="$LOG/munged.log" --seed-file="$BASE/munge/munge.seed" >>"$LOG/munged.out" 2>&1 </dev/null \
  || die "munged did not start; see $LOG/munged.log"
wait_for 10 munge --socket="$SOCK" -n || die "munged does not answer on $SOCK; see $LOG/munged.log"

# MariaDB for slurmdbd
if [ ! -d "$BASE/db/mysql" ]; then
  mariadb-install-db --no-defaults --datadir="$BASE/db" --user=root --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
    || die "mariadb-install-db failed; see $LOG/mariadb-install.log"
fi
setsid mariadbd --no-defaults --datadir="$BASE/db" --user=root --socket="$BASE/mysql.sock" --port="$DB_PORT" \
  --bind-address=127.0.0.1 --pid-file="$RUN/mariadbd.pid" --log-error="$LOG/mariadbd.log" \
  --skip-log-bin --innodb-buffer-pool-size=32M >/dev/null 2>&1 &
wait_for 60 mariadb --no-defaults --socket="$BASE/mysql.sock" -uroot -e "SELECT 1" \
  || die "mariadbd does not answer; see $LOG/mariadbd.log"
mariadb --no-defaults --socket="$BASE/mysql.sock" -uroot -e \
  "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'bmrs-slurm';
   GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"

# Slurm configuration
HOST="$(hostname -s)"
NODE_LINE="$(slurmd -C 2>/dev/null | head -1)"
case "$NODE_LINE" in NodeName=*) ;; *) NODE_LINE="NodeName=$HOST CPUs=$(nproc) RealMemory=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)" ;; esac
MEM=$(echo "$NODE_LINE" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
MEM=$((MEM * 9 / 10))
NODE_LINE="$(echo "$NODE_LINE" | sed "s/RealMemory=[0-9]*/RealMemory=$MEM/") NodeAddr=127.0.0.1 State=UNKNOWN"
cat > "$CONF" <<EOF
# written by scripts/slurm_local.sh: a one-node test cluster under $BASE
ClusterName=bmrs
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$SOCK,cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=2048
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
KillWait=5
MinJobAge=600
InactiveLimit=0
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$SOCK
$NODE_LINE
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
cat > "$BASE/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=bmrs-slurm
StorageLoc=slurm_acct_db
EOF
chmod 600 "$BASE/slurmdbd.conf"
export SLURM_CONF="$CONF"

slurmdbd >>"$LOG/slurmdbd.out" 2>&1 </dev/null || die "slurmdbd did not start; see $LOG/slurmdbd.log"
wait_for 30 sacctmgr -n show cluster || die "slurmdbd does not answer; see $LOG/slurmdbd.log"
sacctmgr -n -P show cluster format=cluster | grep -qx bmrs || sacctmgr -i add cluster bmrs >/dev/null
slurmctld -f "$CONF" >>"$LOG/slurmctld.out" 2>&1 </dev/null || die "slurmctld did not start; see $LOG/slurmctld.log"
wait_for 30 scontrol ping || die "slurmctld does not answer; see $LOG/slurmctld.log"
slurmd -f "$CONF" >>"$LOG/slurmd.out" 2>&1 </dev/null || die "slurmd did not start; see $LOG/slurmd.log"
node_idle() { sinfo -h -n "$HOST" -o %T | grep -qx idle; }
if ! wait_for 20 node_idle; then
  scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
  wait_for 20 node_idle || die "node $HOST is not idle ($(sinfo -h -o %T)); see $LOG/slurmd.log and $LOG/slurmctld.log"
fi
say "Slurm up under $BASE in $(elapsed "$t0") s (partition debug, node $HOST)"
echo "export SLURM_CONF=$CONF"
