#!/bin/sh
# mailproxy package, after the files are in place: the state directory, and
# systemd told about the unit. An unconfigured service is not enabled or
# started; an upgrade restarts a running one.
set -e
install -d -m 0700 -o mailproxy -g mailproxy /var/lib/mailproxy
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
	if systemctl is-active --quiet mailproxy 2>/dev/null; then
		systemctl restart mailproxy || true
		exit 0
	fi
fi
if ! systemctl is-enabled --quiet mailproxy 2>/dev/null; then
	cat <<'MSG'
mailproxy is installed but not started. Next:
  1. edit /etc/mailproxy/mailproxy.toml (provider and accounts);
  2. sign each account in:  sudo -u mailproxy mailproxy login alice@contoso.com
  3. sudo mailproxy check, then:  sudo systemctl enable --now mailproxy
/usr/share/doc/mailproxy/INSTALL.md has the details.
MSG
fi
exit 0
