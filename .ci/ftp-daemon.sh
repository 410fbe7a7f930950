#!/usr/bin/env bash
# Starts (or stops) a pure-ftpd on 127.0.0.1 with one virtual user, for the FTP
# backend's conformance run against a real Debian FTP daemon.
#
#   ftp_env="$(bash .ci/ftp-daemon.sh start)"   # installs if needed, starts, prints exports
#   eval "$ftp_env"                             # (a failed start stops `set -e` scripts here)
#   cargo run -p backup-storage --example ftp_conformance -- "$BACKUP_TEST_FTP_URL"
#   cargo run -p backup-storage --example ftp_conformance -- --ca "$BACKUP_TEST_FTP_CA" "$BACKUP_TEST_FTPS_URL"
#   bash .ci/ftp-daemon.sh stop
#
# FTP_DAEMON_PORT, FTP_DAEMON_PASSIVE and FTP_DAEMON_STATE move it; FTP_DAEMON_EXTRA
# adds pure-ftpd flags (e.g. "-n 1000:1", a 1 MB quota, to see 552 replies).
#
# Runs as root (CI does). Only the exports go to stdout; progress goes to stderr.
# Fails loudly if the daemon does not answer: a run against no server never passes.
set -euo pipefail

PORT="${FTP_DAEMON_PORT:-2121}"
PASSIVE="${FTP_DAEMON_PASSIVE:-30000:30999}"
STATE="${FTP_DAEMON_STATE:-/var/tmp/backup-ci-ftp}"
FTP_USER=backup
SYSTEM_USER=backupftp
PIDFILE="$STATE/pure-ftpd.pid"

log() { echo "ftp-daemon: $*" >&2; }

stop() {
  if [ -f "$PIDFILE" ]; then
    local pid
    pid="$(cat "$PIDFILE")"
    # Only the daemon this script started: its pid, checked to be pure-ftpd.
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = pure-ftpd ]; then
      kill "$pid"
      for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      log "stopped pure-ftpd (pid $pid)"
    fi
    rm -f "$PIDFILE"
  fi
}

install() {
  local need=()
  command -v pure-ftpd >/dev/null && command -v pure-pw >/dev/null || need+=(pure-ftpd)
  command -v openssl >/dev/null || need+=(openssl)
  if [ ${#need[@]} -eq 0 ]; then
    return
  fi
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The package's own service (port 21) is not wanted: keep maintainer
  # scripts from starting it, without touching a policy someone else set.
  local policy=/usr/sbin/policy-rc.d own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
  fi
  {
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
  } >&2 || { [ -n "$own_policy" ] && rm -f "$policy"; exit 1; }
  [ -n "$own_policy" ] && rm -f "$policy"
  return 0
}

start() {
  install
  stop
  mkdir -p "$STATE"
  id "$SYSTEM_USER" >/dev/null 2>&1 ||
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$SYSTEM_USER"
  local home="$STATE/home" password
  # A fresh, empty directory and password on every start.
  rm -rf "$home" "$STATE/pureftpd.passwd" "$STATE/pureftpd.pdb"
  mkdir -p "$home"
  chown "$SYSTEM_USER:" "$home"
  password="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
  # pure-pw reads the password (twice) from standard input when it is no tty.
  printf '%s\n%s\n' "$password" "$password" |
    pure-pw useradd "$FTP_USER" -u "$SYSTEM_USER" -g "$SYSTEM_USER" -d "$home" \
      -f "$STATE/pureftpd.passwd" >/dev/null
  # pure-pw hashes with argon2id at 511 passes: seconds of CPU per login, so the
  # suite's 16 concurrent logins on a busy 2-core runner exceed the client's
  # 10 s login limit. A throwaway password needs no such cost: SHA-512 crypt,
  # which pure-ftpd checks with crypt(3) as well.
  local hash
  hash="$(printf '%s' "$password" | openssl passwd -6 -stdin)"
  awk -F: -v OFS=: -v hash="$hash" -v user="$FTP_USER" '$1 == user { $2 = hash } { print }' \
    "$STATE/pureftpd.passwd" >"$STATE/pureftpd.passwd.new"
  mv "$STATE/pureftpd.passwd.new" "$STATE/pureftpd.passwd"
  pure-pw mkdb "$STATE/pureftpd.pdb" -f "$STATE/pureftpd.passwd" >/dev/null

  # Explicit FTPS as an option (-Y 1), with a certificate from a throwaway CA
  # that the client is told to trust (the example's --ca).
  (
    cd "$STATE"
    openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=backup CI test CA" \
      -keyout ca.key -out ca.pem
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 \
      -extfile server.ext -out server.pem
  ) >/dev/null 2>&1
  # Foreground mode (no -B), backgrounded here so that its pid is ours.
  #   -E no anonymous users, -A chroot everyone, -H no DNS lookups,
  #   -c/-C room for the suite's 16 concurrent transfers, -p passive ports.
  pure-ftpd -l "puredb:$STATE/pureftpd.pdb" -S "127.0.0.1,$PORT" -p "$PASSIVE" \
    -Y 1 -2 "$STATE/server.pem,$STATE/server.key" \
    -E -A -H -c 64 -C 64 ${FTP_DAEMON_EXTRA:-} </dev/null >"$STATE/pure-ftpd.log" 2>&1 &
  echo $! >"$PIDFILE"

  # Up when the port greets with 220.
  local greeting=""
  for _ in $(seq 100); do
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      log "pure-ftpd exited at start:"
      cat "$STATE/pure-ftpd.log" >&2
      exit 1
    fi
    if greeting="$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT && head -c 3 <&3" 2>/dev/null)" &&
      [ "$greeting" = 220 ]; then
      break
    fi
    sleep 0.1
  done
  if [ "$greeting" != 220 ]; then
    log "pure-ftpd does not answer on 127.0.0.1:$PORT"
    cat "$STATE/pure-ftpd.log" >&2
    stop
    exit 1
  fi
  log "pure-ftpd (pid $(cat "$PIDFILE")) serves $home on 127.0.0.1:$PORT"
  echo "export BACKUP_TEST_FTP_URL='ftp://$FTP_USER@127.0.0.1:$PORT/'"
  echo "export BACKUP_TEST_FTPS_URL='ftps://$FTP_USER@127.0.0.1:$PORT/'"
  echo "export BACKUP_TEST_FTP_CA='$STATE/ca.pem'"
  echo "export BACKUP_FTP_PASSWORD='$password'"
  echo "export BACKUP_TEST_FTP_DIR='$home'"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *)
    echo "usage: $0 [start|stop]" >&2
    exit 2
    ;;
esac
