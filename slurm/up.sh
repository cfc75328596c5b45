#!/usr/bin/env bash
# Start a real single-node SLURM cluster for the tests and CI (Debian, root, no systemd, no
# cgroups): munge, MariaDB + slurmdbd (so sacct works), slurmctld, slurmd with two fake GPUs,
# a preemptible `low` partition and a `high` partition that preempts it by requeueing.
#
#   MAX_ARRAY_SIZE=1001  SLURM's MaxArraySize (it caps the array *index*)
#   WITH_DBD=1           accounting (0: no slurmdbd, sacct unavailable, as on some clusters)
#   FAKE_GPUS=2          GRES gpu count (character devices aliasing /dev/null)
#   KEEP_STATE=0         1 keeps job state and accounting from an earlier run
#   MIN_JOB_AGE=300      seconds slurmctld keeps an ended job before purging it (squeue then
#                        calls its id invalid); the tests shorten it to see a purge happen
#
# Idempotent: daemons already running are left alone. Stop with slurm/down.sh.
set -euo pipefail

MAX_ARRAY_SIZE=${MAX_ARRAY_SIZE:-1001}
WITH_DBD=${WITH_DBD:-1}
FAKE_GPUS=${FAKE_GPUS:-2}
FAKE_GPU_DIR=${FAKE_GPU_DIR:-/var/lib/slurm-dev/fakegpu}
KEEP_STATE=${KEEP_STATE:-0}
MIN_JOB_AGE=${MIN_JOB_AGE:-300}
DB_PASS=${DB_PASS:-slurm-dev}
LOG=/var/log/slurm
APT_LOG=$LOG/apt.log

say() { echo "[slurm/up $(date +%T)] $*"; }
wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local seconds=$1 what=$2; shift 2
  local end=$(( $(date +%s) + seconds ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || { say "timed out waiting for $what"; return 1; }
    sleep 0.2
  done
}
alive() {  # alive PIDFILE: the process runs and is not a zombie
  [ -s "$1" ] || return 1
  local pid; pid=$(cat "$1")
  [ -r "/proc/$pid/status" ] && ! grep -q '^State:.*Z' "/proc/$pid/status"
}

mkdir -p "$LOG"
packages="slurmctld slurmd slurm-client munge"
[ "$WITH_DBD" = 1 ] && packages="$packages slurmdbd mariadb-server"
missing=""
for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  say "installing$missing"
  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; } \
    >"$APT_LOG" 2>&1 || { tail -30 "$APT_LOG"; exit 1; }
fi

node=$(hostname -s)
getent hosts "$node" >/dev/null || echo "127.0.0.1 $node" >>/etc/hosts
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd
wipe=0
if [ "$KEEP_STATE" != 1 ] && ! alive /run/slurmctld.pid; then
  rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*   # job ids restart at 1
  wipe=1
fi

[ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; mungekey --create --keyfile=/etc/munge/munge.key --force; }
chown -R munge:munge /etc/munge && chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge

nodeline=$(slurmd -C | head -1)
realmem=$(sed -E 's/.*RealMemory=([0-9]+).*/\1/' <<<"$nodeline")
nodeline=$(sed -E "s/RealMemory=[0-9]+/RealMemory=$(( realmem * 9 / 10 ))/" <<<"$nodeline")
gres_node=""; gres_types=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  # slurmd drops GPU GRES without File=, and the file must be a device: alias /dev/null.
  mkdir -p "$FAKE_GPU_DIR"
  for i in $(seq 0 $((FAKE_GPUS - 1))); do
    [ -c "$FAKE_GPU_DIR/nvidia$i" ] || mknod "$FAKE_GPU_DIR/nvidia$i" c 1 3
  done
  gres_node=" Gres=gpu:$FAKE_GPUS"; gres_types="GresTypes=gpu"
  printf 'AutoDetect=off\nNodeName=%s Name=gpu File=%s/nvidia[0-%d]\n' \
    "$node" "$FAKE_GPU_DIR" $((FAKE_GPUS - 1)) >/etc/slurm/gres.conf
else
  rm -f /etc/slurm/gres.conf
fi
if [ "$WITH_DBD" = 1 ]; then
  accounting=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nAccountingStoragePort=6819'
else
  accounting="AccountingStorageType=accounting_storage/none"
fi

cat >/etc/slurm/slurm.conf <<CONF
# Single-node development cluster written by tunevlseg's slurm/up.sh
ClusterName=tvls
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# The credential lifetime is also the wait before a requeued job may start again; 5 s is the
# smallest accepted value (the default 120 makes every requeue wait two minutes).
AuthInfo=cred_expire=5
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=5,batch_sched_delay=0
# A no-op epilog makes the scheduler run right after each job ends (~25 jobs/s, not ~1.4).
Epilog=/bin/true
ReturnToService=2
$accounting
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.log
MaxArraySize=$MAX_ARRAY_SIZE
MaxJobCount=20000
MinJobAge=$MIN_JOB_AGE
KillWait=5
InactiveLimit=0
SlurmdTimeout=300
# Jobs in "high" preempt jobs in "low" by requeueing them, and the job's --signal (submitit's
# USR2) is sent at preemption, so a task can checkpoint before it is requeued.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
$gres_types
$nodeline$gres_node State=UNKNOWN
PartitionName=low  Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1  PreemptMode=REQUEUE GraceTime=30
PartitionName=high Nodes=ALL Default=NO  MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
CONF
# slurmd loads a cgroup plugin even when nothing uses cgroups; v1's init is a no-op, while
# autodetection on a cgroup-v2 host wants systemd and makes slurmd fail in containers.
echo 'CgroupPlugin=cgroup/v1' >/etc/slurm/cgroup.conf

if [ "$WITH_DBD" = 1 ]; then
  cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
CONF
  chmod 600 /etc/slurm/slurmdbd.conf   # slurmdbd refuses a readable file
fi

start=$(date +%s)
alive /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
wait_for 10 munge bash -c 'munge -n | unmunge'
if [ "$WITH_DBD" = 1 ]; then
  if ! alive /run/mysqld/mysqld.pid; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    nohup mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
      --pid-file=/run/mysqld/mysqld.pid --bind-address=127.0.0.1 >"$LOG/mariadb.log" 2>&1 </dev/null &
  fi
  wait_for 30 mariadb mariadb -e 'select 1'
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  if ! alive /run/slurmdbd.pid; then
    [ "$wipe" = 1 ] && mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db"
    /usr/sbin/slurmdbd
  fi
  wait_for 30 "slurmdbd port" bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
fi
alive /run/slurmctld.pid || /usr/sbin/slurmctld
wait_for 30 slurmctld scontrol ping
alive /run/slurmd.pid || /usr/sbin/slurmd
wait_for 60 "node $node idle" bash -c "sinfo -h -n $node -o %t | grep -qE '^(idle|mix|alloc)'"
say "cluster up in $(( $(date +%s) - start )) s: MaxArraySize=$MAX_ARRAY_SIZE, accounting=$WITH_DBD, MinJobAge=$MIN_JOB_AGE"
sinfo -N -o '%N %P %t %c %m %G'
