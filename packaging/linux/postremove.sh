#!/bin/sh
# mailproxy package, after removal. `dpkg --purge` also deletes the token
# store, the log directory and the mailproxy user; a plain remove (and rpm -e)
# keeps /var/lib/mailproxy, so reinstalling finds the signed-in accounts.
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = purge ]; then
	rm -rf /var/lib/mailproxy /var/lib/private/mailproxy
	rmdir /etc/mailproxy 2>/dev/null || true
	if getent passwd mailproxy >/dev/null 2>&1; then
		userdel mailproxy >/dev/null 2>&1 || true
	fi
	if getent group mailproxy >/dev/null 2>&1; then
		groupdel mailproxy >/dev/null 2>&1 || true
	fi
fi
exit 0
