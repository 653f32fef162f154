package main

const serviceHelp = `usage: mailproxy service install|uninstall|start|stop [-config FILE]

Manages the Windows service "mailproxy" (run from an elevated prompt).
install registers "mailproxy.exe serve -config FILE" (default
%ProgramData%\mailproxy\mailproxy.toml) as an automatic service running
as LocalSystem, restarted on failure, and does not start it; uninstall stops
and removes it, leaving config and tokens; start and stop wait until the
service has started or drained. On Linux use systemd, on macOS launchd.`
