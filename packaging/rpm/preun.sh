# $1: 0 on erase, 1 on upgrade. Erasing stops and disables the units.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now bootagent-deploy.timer bootagent-deploy.service \
        bootagent-refresh.timer bootagent-refresh.service \
        bootagent-lifecycle.service bootagent-health.service bootagent-boot.service >/dev/null 2>&1 || :
fi
