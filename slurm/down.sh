#!/usr/bin/env bash
# Stop the cluster slurm/up.sh started, by its PID files only (never by process name).
set -u
say() { echo "[slurm/down $(date +%T)] $*"; }
alive_pid() { [ -r "/proc/$1/status" ] && ! grep -q '^State:.*Z' "/proc/$1/status"; }
stop() {  # stop NAME PIDFILE
  local pid
  [ -s "$2" ] || return 0
  pid=$(cat "$2")
  if alive_pid "$pid"; then
    say "stopping $1 ($pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 150); do alive_pid "$pid" || break; sleep 0.1; done
    alive_pid "$pid" && kill -KILL "$pid"
  fi
  rm -f "$2"
}
if [ -s /run/slurmctld.pid ] && alive_pid "$(cat /run/slurmctld.pid)"; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs $jobs"
    scancel $jobs
    for _ in $(seq 1 100); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi
stop slurmd /run/slurmd.pid
stop slurmctld /run/slurmctld.pid
stop slurmdbd /run/slurmdbd.pid
stop mariadbd /run/mysqld/mysqld.pid
stop munged /run/munge/munged.pid
say "stopped"
