#!/bin/sh
# mailproxy package: the system user the service runs as and the state
# directory it owns. Runs before the files are unpacked, on install and on
# upgrade; does nothing when they exist.
set -e
if ! getent group mailproxy >/dev/null 2>&1; then
	groupadd --system mailproxy
fi
if ! getent passwd mailproxy >/dev/null 2>&1; then
	useradd --system --gid mailproxy --home-dir /var/lib/mailproxy --no-create-home \
		--shell /usr/sbin/nologin --comment "mailproxy service" mailproxy
fi
exit 0
