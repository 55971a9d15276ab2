#!/bin/sh
# The work of one `make test-kernels` guest, started by its init
# (guest-init) with the host's run directory mounted at /run/host:
#   src.tar   the checkout to test       tests   pytest arguments, one a line
#   env       NAME=value lines exported to the tests
# It writes back, next to them: machine, kernel-release, cpus, check.txt and
# check.rc (`sidetrace check`), pytest.txt, pytest.rc and junit.xml, times.
set -u
out=/run/host
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm
ip link set lo up
hostname sidetrace-guest

uname -m > $out/machine
uname -r > $out/kernel-release
nproc > $out/cpus

mkdir -p /root/src
tar -xf $out/src.tar -C /root/src
cd /root/src
export PATH=/opt/sidetrace-venv/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root CI=true LC_ALL=C.UTF-8
while IFS= read -r assignment; do export "$assignment"; done < $out/env

started=$(date +%s)
python -m agent.cli check > $out/check.txt 2>&1
echo $? > $out/check.rc
checked=$(date +%s)
# shellcheck disable=SC2046  # one argument a line, no spaces in them
python -m pytest -p no:cacheprovider -q --junitxml=$out/junit.xml $(cat $out/tests) > $out/pytest.txt 2>&1
echo $? > $out/pytest.rc
finished=$(date +%s)
echo "check_seconds=$((checked - started)) pytest_seconds=$((finished - checked))" > $out/times
sync
