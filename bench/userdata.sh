#!/bin/bash
# The alternative a team has: a user-data script with curl, the AWS CLI, jq and git. It does the
# same job as `bootagent boot` in exec mode, with none of the checks. Used by bench/boot-vs-userdata.
# Needs RUN_DIR and SRV; takes endpoints from the same variables as bootagent.
set -euo pipefail
IMDS=${AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254}
TOKEN=$(curl -fsS -X PUT "$IMDS/latest/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 21600")
md() { curl -fsS -H "X-aws-ec2-metadata-token: $TOKEN" "$IMDS/latest/meta-data/$1"; }
SERVICE=$(md tags/instance/Service)
ENV_TAG=$(md tags/instance/Environment)
REPO=$(md tags/instance/Repository)
REGION=$(md placement/region)
case "$ENV_TAG" in
    production) ENV=prod ;;
    staging) ENV=stage ;;
    dev | development) ENV=test ;;
    *) ENV=$ENV_TAG ;;
esac
umask 077
aws secretsmanager get-secret-value --region "$REGION" --secret-id "${SERVICE}_env_${ENV}" \
    --query SecretString --output text |
    jq -r 'to_entries[] | "\(.key)=\(.value | tostring)"' > "$RUN_DIR/$SERVICE.env"
rm -rf "${SRV:?}/$SERVICE"
git clone -q --depth 1 --single-branch -b "$ENV" "$REPO" "$SRV/$SERVICE"
cd "$SRV/$SERVICE"
set -a
# shellcheck disable=SC1090
. "$RUN_DIR/$SERVICE.env"
exec true
