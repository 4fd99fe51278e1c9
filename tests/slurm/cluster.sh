#!/usr/bin/env bash
# A real one-node SLURM cluster on localhost, for tests (no systemd, no cgroups).
#
#   tests/slurm/cluster.sh start    install Debian's packages if missing, then bring up
#                                   munged, MariaDB, slurmdbd, slurmctld and slurmd
#   tests/slurm/cluster.sh stop     stop them all (and any job processes left over)
#   tests/slurm/cluster.sh status   show the daemons, sinfo, squeue and sacct
#   tests/slurm/cluster.sh env      print the shell variables a client needs (eval-able)
#   tests/slurm/cluster.sh purge    stop, then delete the state directory
#
# Accounting is real: slurmctld reports to slurmdbd, which stores jobs in MariaDB, so `sacct`
# answers exactly as on a production cluster (Snakemake's SLURM executor polls job states
# with sacct by default).
#
# Everything (configs, state, logs, database) lives under $VALUESCALE_SLURM_DIR
# (default /tmp/valuescale-slurm). Clients must use SLURM_CONF=$VALUESCALE_SLURM_DIR/etc/slurm.conf
# (`eval "$(tests/slurm/cluster.sh env)"`); /etc/slurm/slurm.conf is also pointed at it when no
# other slurm.conf is installed there.
#
# Exit codes: 0 ok; 1 failure (diagnostics printed); 2 usage; 77 cannot run here (not root,
# or the packages are missing and apt-get is not available) — tests turn 77 into a skip.
#
# Settings (environment):
#   VALUESCALE_SLURM_DIR        state directory                  (/tmp/valuescale-slurm)
#   VALUESCALE_SLURM_CLUSTER    cluster name                     (valuescale)
#   VALUESCALE_SLURM_PARTITION  the one partition (Default=YES)  (main)
#   VALUESCALE_SLURM_ACCOUNT    account every user is added to  (valuescale)
#   VALUESCALE_SLURM_USERS      extra users to give the account  ("$SUDO_USER", root always)
#   VALUESCALE_SLURM_DB_PORT    MariaDB TCP port on 127.0.0.1    (33061)
#   VALUESCALE_SLURM_PORTS      slurmctld,slurmd,slurmdbd ports  (6817,6818,6819)
#   VALUESCALE_SLURM_TIMEOUT    seconds to wait for each daemon  (60)
set -uo pipefail

STATE=${VALUESCALE_SLURM_DIR:-/tmp/valuescale-slurm}
CLUSTER=${VALUESCALE_SLURM_CLUSTER:-valuescale}
PARTITION=${VALUESCALE_SLURM_PARTITION:-main}
ACCOUNT=${VALUESCALE_SLURM_ACCOUNT:-valuescale}
EXTRA_USERS=${VALUESCALE_SLURM_USERS:-${SUDO_USER:-}}
DB_PORT=${VALUESCALE_SLURM_DB_PORT:-33061}
IFS=, read -r CTLD_PORT SLURMD_PORT DBD_PORT <<<"${VALUESCALE_SLURM_PORTS:-6817,6818,6819}"
TIMEOUT=${VALUESCALE_SLURM_TIMEOUT:-60}

ETC=$STATE/etc
LOG=$STATE/log
RUN=$STATE/run
DATADIR=$STATE/mysql
DB_SOCK=$RUN/mysqld/mysqld.sock
export SLURM_CONF=$ETC/slurm.conf
# Every daemon we start carries this variable, so `stop` can find exactly our processes.
MARK=VALUESCALE_SLURM_DAEMON=$STATE

PACKAGES=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server mariadb-client)

T_START=$EPOCHREALTIME
elapsed() { awk -v a="$T_START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '[cluster.sh %6ss] %s\n' "$(elapsed)" "$*" >&2; }
die() { say "ERROR: $*"; diagnostics; exit 1; }
skip() { echo "cluster.sh: SKIP: $*" >&2; exit 77; }

diagnostics() {
    local f
    {
        echo "---- diagnostics (state dir $STATE) ----"
        for f in "$LOG"/mariadb.err "$LOG"/slurmdbd.log "$LOG"/slurmctld.log "$LOG"/slurmd.log \
                 /var/log/munge/munged.log; do
            [[ -s $f ]] || continue
            echo "---- tail -n 25 $f"
            tail -n 25 "$f"
        done
        echo "---- processes"
        ps -eo pid,user,etime,args | grep -E '[m]unged|[m]ariadbd|[s]lurm(ctld|d|dbd|stepd)' || true
    } >&2
}

# ---------------------------------------------------------------------------------------------
# processes

# pid of a live process carrying our marker, read from a pid file (empty if none)
live_pid() {
    local pidfile=$1 pid
    [[ -r $pidfile ]] || return 0
    pid=$(tr -dc 0-9 <"$pidfile")
    [[ -n $pid && -d /proc/$pid ]] || return 0
    if tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qxF "$MARK"; then echo "$pid"; fi
}

# all live processes carrying our marker (daemons and their children, e.g. slurmstepd)
marked_pids() {
    local d pid
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        tr '\0' '\n' 2>/dev/null <"$d/environ" | grep -qxF "$MARK" && echo "$pid"
    done
    return 0
}

# processes of jobs of this cluster (in case a job outlived its step), never our ancestors
job_pids() {
    local d pid env ancestors=" " p=$$
    while [[ -n $p && $p != 0 ]]; do
        ancestors+="$p "
        p=$(awk '/^PPid:/{print $2}' "/proc/$p/status" 2>/dev/null)
    done
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [[ $ancestors == *" $pid "* || $pid == "$BASHPID" ]] && continue
        env=$(tr '\0' '\n' 2>/dev/null <"$d/environ") || continue
        grep -qx "SLURM_CLUSTER_NAME=$CLUSTER" <<<"$env" && grep -q '^SLURM_JOB_ID=' <<<"$env" \
            && grep -qxF "SLURM_CONF=$SLURM_CONF" <<<"$env" && echo "$pid"
    done
    return 0
}

wait_gone() {  # wait_gone SECONDS PID...
    local deadline=$(( $(date +%s) + $1 )) p alive
    shift
    while :; do
        alive=
        for p in "$@"; do
            # a zombie has exited already (it waits only for its parent to reap it)
            [[ -d /proc/$p && $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) != Z ]] && alive+=" $p"
        done
        [[ -z $alive ]] && return 0
        (( $(date +%s) >= deadline )) && { echo "$alive"; return 1; }
        sleep 0.1
    done
}

# stop_pids NAME=PID...: SIGTERM them together, wait, then SIGKILL what is left
stop_pids() {
    local item pids=() names=() left
    for item in "$@"; do
        [[ -n ${item#*=} ]] || continue
        names+=("${item%%=*}")
        pids+=("${item#*=}")
    done
    (( ${#pids[@]} )) || return 0
    kill -TERM "${pids[@]}" 2>/dev/null
    if ! left=$(wait_gone 20 "${pids[@]}"); then
        say "still running 20 s after SIGTERM, killing:$left"
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null
        # shellcheck disable=SC2086
        wait_gone 5 $left >/dev/null
    fi
    say "stopped ${names[*]} (pids ${pids[*]})"
}

# poll CMD until it succeeds, for at most $TIMEOUT seconds
wait_for() {  # wait_for DESCRIPTION CMD...
    local what=$1 deadline=$(( $(date +%s) + TIMEOUT ))
    shift
    until "$@" >/dev/null 2>&1; do
        (( $(date +%s) >= deadline )) && die "timed out after ${TIMEOUT}s waiting for $what"
        sleep 0.2
    done
}

# ---------------------------------------------------------------------------------------------
# installation

missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' \
            || echo "$p"
    done
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    (( ${#missing[@]} )) || return 0
    command -v apt-get >/dev/null || skip "packages missing (${missing[*]}) and apt-get is not available"
    say "installing ${missing[*]} with apt-get"
    # No service may start by itself during the installation (we start everything by hand).
    local own_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends
               -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    local ok=
    if ! "${apt[@]}" install "${missing[@]}" >"$STATE/apt.log" 2>&1; then
        say "apt-get install failed; running apt-get update once and retrying"
        apt-get update -q >>"$STATE/apt.log" 2>&1 || say "apt-get update reported errors (continuing)"
        "${apt[@]}" install "${missing[@]}" >>"$STATE/apt.log" 2>&1 && ok=1
    else
        ok=1
    fi
    [[ -n $own_policy ]] && rm -f /usr/sbin/policy-rc.d
    if [[ -z $ok ]]; then
        tail -n 30 "$STATE/apt.log" >&2
        die "could not install ${missing[*]} (log: $STATE/apt.log)"
    fi
    say "installed packages"
}

# ---------------------------------------------------------------------------------------------
# configuration

write_configs() {
    local cpus mem_total headroom real_mem def_mem
    cpus=$(nproc)
    mem_total=$(free -m | awk '/^Mem:/{print $2}')
    headroom=$(( mem_total / 10 > 1024 ? mem_total / 10 : 1024 ))
    real_mem=$(( mem_total - headroom ))
    (( real_mem >= 512 )) || real_mem=512
    # Without DefMemPerCPU every job would take the whole node's memory and jobs would run
    # one at a time; with it a 1-CPU job takes its share.
    def_mem=$(( real_mem / cpus ))

    cat >"$ETC/slurm.conf.new" <<EOF
# Generated by tests/slurm/cluster.sh: a one-node test cluster on localhost.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=slurm
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/spool/slurmctld
SlurmdSpoolDir=$STATE/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups here: track processes through /proc, pin tasks with sched_setaffinity
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
# real accounting (sacct) through slurmdbd and MariaDB
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStorageEnforce=associations
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
MailProg=/bin/true
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

    cat >"$ETC/slurmdbd.conf.new" <<EOF
# Generated by tests/slurm/cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=slurm
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$ETC/db.pass")
StorageLoc=slurm_acct_db
EOF
    local f daemon
    for f in slurm.conf slurmdbd.conf; do
        daemon=slurmctld; [[ $f == slurmdbd.conf ]] && daemon=slurmdbd
        if [[ -e $ETC/$f ]] && ! cmp -s "$ETC/$f.new" "$ETC/$f" \
                && [[ -n $(live_pid "$RUN/$daemon.pid") ]]; then
            say "note: $f changed while $daemon runs; 'stop' then 'start' to apply it"
        fi
        mv -f "$ETC/$f.new" "$ETC/$f"
    done
    chown slurm:slurm "$ETC/slurmdbd.conf"
    chmod 600 "$ETC/slurmdbd.conf"
    chmod 644 "$ETC/slurm.conf"

    # Let plain `sinfo`/`sbatch` work too, unless a real slurm.conf is installed.
    mkdir -p /etc/slurm
    if [[ ! -e /etc/slurm/slurm.conf || -L /etc/slurm/slurm.conf ]]; then
        local target
        target=$(readlink /etc/slurm/slurm.conf 2>/dev/null || true)
        if [[ -z $target || $target == "$ETC/slurm.conf" || $target == */valuescale-slurm*/etc/slurm.conf || ! -e $target ]]; then
            ln -sfn "$ETC/slurm.conf" /etc/slurm/slurm.conf
        fi
    fi
}

prepare_dirs() {
    mkdir -p "$STATE" "$ETC" "$LOG" "$RUN" "$STATE/spool/slurmctld" "$STATE/spool/slurmd"
    chmod 755 "$STATE" "$ETC" "$LOG" "$RUN"
    chown slurm:slurm "$LOG" "$RUN" "$STATE/spool/slurmctld"
    chmod 700 "$STATE/spool/slurmctld"
    if [[ ! -s $ETC/db.pass ]]; then
        (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$ETC/db.pass")
    fi
}

# ---------------------------------------------------------------------------------------------
# daemons

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then say "munged already running"; return; fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
            || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
    runuser -u munge -- env "$MARK" /usr/sbin/munged </dev/null >/dev/null 2>&1 \
        || die "munged failed to start"
    wait_for "munged" munge_ok
    say "munged up"
}

db() { mariadb --no-defaults --protocol=socket -S "$DB_SOCK" -u root "$@"; }

start_mariadb() {
    if [[ -n $(live_pid "$RUN/mariadb.pid") ]]; then say "mariadb already running"; return; fi
    if [[ ! -d $DATADIR/mysql ]]; then
        mkdir -p "$DATADIR" && chown mysql:mysql "$DATADIR"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DATADIR" \
            --auth-root-authentication-method=socket --skip-test-db --skip-name-resolve \
            >"$LOG/mariadb-install.log" 2>&1 || { tail -n 20 "$LOG/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
        say "initialised MariaDB data directory"
    fi
    chown mysql:mysql "$DATADIR"
    # mysql must be able to write the socket and the pid file
    mkdir -p "$RUN/mysqld" && chown mysql:mysql "$RUN/mysqld"
    rm -f "$DB_SOCK"
    touch "$LOG/mariadb.err" && chown mysql:mysql "$LOG/mariadb.err"
    # small, fast and throw-away: no binlog, lazy flushing, small buffers
    setsid env "$MARK" /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DATADIR" \
        --socket="$DB_SOCK" --pid-file="$RUN/mysqld/mariadb.pid" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
        --innodb-buffer-pool-size=512M --innodb-log-file-size=32M \
        --innodb-flush-log-at-trx-commit=0 --innodb-lock-wait-timeout=900 \
        --log-error="$LOG/mariadb.err" </dev/null >/dev/null 2>&1 &
    echo $! >"$RUN/mariadb.pid"
    wait_for "MariaDB" mariadb-admin --no-defaults -S "$DB_SOCK" -u root ping
    local pass
    pass=$(cat "$ETC/db.pass")
    db -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
           CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
           CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
           ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
           ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
           GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
           GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" \
        || die "could not create the accounting database"
    say "mariadb up (127.0.0.1:$DB_PORT, socket $DB_SOCK)"
}

sacctmgr_ok() { timeout 10 sacctmgr -n -P list cluster format=cluster; }

start_slurmdbd() {
    if [[ -n $(live_pid "$RUN/slurmdbd.pid") ]]; then say "slurmdbd already running"; return; fi
    env "$MARK" /usr/sbin/slurmdbd </dev/null >/dev/null 2>&1 || die "slurmdbd failed to start"
    wait_for "slurmdbd" sacctmgr_ok
    say "slurmdbd up (port $DBD_PORT)"
}

# cluster, account and users in the accounting database (idempotent)
register_associations() {
    local u users=(root)
    for u in $EXTRA_USERS; do
        [[ $u != root ]] && id "$u" >/dev/null 2>&1 && users+=("$u")
    done
    if ! timeout 20 sacctmgr -n -P list cluster format=cluster | grep -qxF "$CLUSTER"; then
        timeout 20 sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster failed"
    fi
    if ! timeout 20 sacctmgr -n -P list account format=account | grep -qxF "$ACCOUNT"; then
        timeout 20 sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" \
            Description="valuescale tests" Organization=valuescale >/dev/null \
            || die "sacctmgr add account failed"
    fi
    for u in "${users[@]}"; do
        if ! timeout 20 sacctmgr -n -P list assoc cluster="$CLUSTER" account="$ACCOUNT" user="$u" \
                format=user | grep -qxF "$u"; then
            timeout 20 sacctmgr -i add user "$u" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" \
                Cluster="$CLUSTER" >/dev/null || die "sacctmgr add user $u failed"
        fi
    done
    say "associations: cluster=$CLUSTER account=$ACCOUNT users=${users[*]}"
}

start_slurmctld() {
    if [[ -n $(live_pid "$RUN/slurmctld.pid") ]]; then say "slurmctld already running"; return; fi
    env "$MARK" /usr/sbin/slurmctld </dev/null >/dev/null 2>&1 || die "slurmctld failed to start"
    wait_for "slurmctld" bash -c 'scontrol ping | grep -q UP'
    say "slurmctld up (port $CTLD_PORT)"
}

start_slurmd() {
    if [[ -n $(live_pid "$RUN/slurmd.pid") ]]; then say "slurmd already running"; return; fi
    env "$MARK" /usr/sbin/slurmd -N localhost </dev/null >/dev/null 2>&1 || die "slurmd failed to start"
    say "slurmd started"
}

node_idle() {
    local st
    st=$(sinfo -h -N -n localhost -o %T 2>/dev/null)
    case $st in
        idle|mixed|allocated|completing) return 0 ;;
        *drain*|down*|fail*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 ;;
    esac
    return 1
}

sacct_ok() { timeout 10 sacct -n -X -a --clusters all -S now-1hour -o JobID; }

cmd_start() {
    [[ $EUID -eq 0 ]] || skip "must run as root (it installs packages and starts daemons)"
    mkdir -p "$STATE"
    install_packages
    prepare_dirs
    write_configs
    start_munge
    start_mariadb
    start_slurmdbd
    register_associations
    start_slurmctld
    start_slurmd
    wait_for "node localhost to become idle in sinfo" node_idle
    wait_for "sacct to answer" sacct_ok
    say "cluster up: partition=$PARTITION account=$ACCOUNT SLURM_CONF=$SLURM_CONF"
    say "start took $(elapsed) s"
}

cmd_stop() {
    [[ $EUID -eq 0 ]] || skip "must run as root"
    if [[ -n $(live_pid "$RUN/slurmctld.pid") ]]; then
        local jobs
        jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | tr '\n' ' ')
        if [[ -n ${jobs// } ]]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs 2>/dev/null
            local deadline=$(( $(date +%s) + 15 ))
            while [[ -n $(timeout 5 squeue -h -o %A 2>/dev/null) ]] && (( $(date +%s) < deadline )); do
                sleep 0.2
            done
        fi
    fi
    # slurmctld hands its last job records to slurmdbd, which needs MariaDB; munge goes last
    stop_pids slurmd="$(live_pid "$RUN/slurmd.pid")" slurmctld="$(live_pid "$RUN/slurmctld.pid")"
    stop_pids slurmdbd="$(live_pid "$RUN/slurmdbd.pid")"
    stop_pids mariadb="$(live_pid "$RUN/mariadb.pid")" munged="$(live_pid /run/munge/munged.pid)"
    # anything left: our daemons' children (slurmstepd ...) and processes of jobs
    local left
    left=$( { marked_pids; job_pids; } | sort -u | tr '\n' ' ')
    if [[ -n ${left// } ]]; then
        say "killing leftover processes: $left"
        # shellcheck disable=SC2086
        kill -TERM $left 2>/dev/null
        # shellcheck disable=SC2086
        if ! wait_gone 5 $left >/dev/null; then
            # shellcheck disable=SC2086
            kill -KILL $left 2>/dev/null
            # shellcheck disable=SC2086
            wait_gone 5 $left >/dev/null || say "WARNING: processes still alive: $left"
        fi
    fi
    rm -f "$RUN"/*.pid
    if [[ -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$ETC/slurm.conf" ]]; then
        rm -f /etc/slurm/slurm.conf
    fi
    say "cluster stopped"
}

cmd_status() {
    local name pidfile pid rc=0
    for name in munged mariadb slurmdbd slurmctld slurmd; do
        case $name in
            munged) pidfile=/run/munge/munged.pid ;;
            *) pidfile=$RUN/$name.pid ;;
        esac
        pid=$(live_pid "$pidfile")
        if [[ -n $pid ]]; then echo "$name: running (pid $pid)"; else echo "$name: not running"; rc=3; fi
    done
    echo "SLURM_CONF=$SLURM_CONF"
    # (client commands retry for a long time when their daemon is down: ask only live ones)
    if [[ -n $(live_pid "$RUN/slurmctld.pid") ]]; then
        echo "---- sinfo";  timeout 10 sinfo -N -o '%N %P %T %C %m' 2>&1 || rc=3
        echo "---- squeue"; timeout 10 squeue 2>&1 || rc=3
    fi
    if [[ -n $(live_pid "$RUN/slurmdbd.pid") ]]; then
        echo "---- sacct (last hour)"
        timeout 10 sacct -a -X --clusters all -S now-1hour \
            -o JobID,JobName%40,Account,User,State,ExitCode,Elapsed 2>&1 || rc=3
    fi
    return $rc
}

cmd_env() {
    cat <<EOF
export SLURM_CONF=$SLURM_CONF
export VALUESCALE_SLURM_DIR=$STATE
export VALUESCALE_SLURM_PARTITION=$PARTITION
export VALUESCALE_SLURM_ACCOUNT=$ACCOUNT
export VALUESCALE_SLURM_CLUSTER=$CLUSTER
EOF
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    purge) cmd_stop && rm -rf "$STATE" && say "removed $STATE" ;;
    *) echo "usage: $0 start|stop|status|env|purge" >&2; exit 2 ;;
esac
