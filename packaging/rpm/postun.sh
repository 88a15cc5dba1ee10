# $1: 0 on erase, 1 after an upgrade. An upgrade restarts the health server and the lifecycle
# watcher if they run, never the boot. The boot history in /var/lib/bootagent stays (rpm has no
# purge); remove it by hand if the instance is not to keep it.
systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -ge 1 ]; then
    systemctl try-restart bootagent-health.service bootagent-lifecycle.service >/dev/null 2>&1 || :
fi
