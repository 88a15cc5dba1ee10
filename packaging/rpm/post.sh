# $1: 1 on install, 2 on upgrade. Enables the units on install, never starts the boot (an image
# build must not boot; an upgrade must not redeploy).
mkdir -p /etc/bootagent/config.d
if [ "$1" -eq 1 ]; then
    systemctl --no-reload enable bootagent-boot.service bootagent-health.service \
        bootagent-lifecycle.service bootagent-refresh.timer bootagent-deploy.timer \
        >/dev/null 2>&1 || :
fi
systemctl daemon-reload >/dev/null 2>&1 || :
