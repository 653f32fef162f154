#!/bin/sh
# mailproxy package, before removal (not before an upgrade): stop and disable
# the service. deb passes "remove" (or "upgrade"), rpm the number of
# versions left (0 on erase).
set -e
case "$1" in
remove | 0)
	if [ -d /run/systemd/system ]; then
		systemctl disable --now mailproxy >/dev/null 2>&1 || true
	fi
	;;
esac
exit 0
