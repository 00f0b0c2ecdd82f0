#!/bin/sh
# Usage: mlflow-auth-ini.sh COMMAND [ARG...]
#
# Writes the configuration of MLflow's basic-auth app to $MLFLOW_AUTH_CONFIG_PATH, then runs
# COMMAND (the MLflow server). The app reads its user database only from that file, and the
# database's URI carries the PostgreSQL password, so the file is written here, from the
# environment, readable by this container's user alone: never in the image or on a volume.
#
# The admin's password is not in the file: MLflow reads MLFLOW_AUTH_ADMIN_PASSWORD itself, and
# only to create the admin on the first start.
set -eu

umask 077
# configparser treats % as interpolation; a URL-encoded password holds one.
database_uri=$(printf '%s' "$MLFLOW_AUTH_DATABASE_URI" | sed 's/%/%%/g')
cat >"$MLFLOW_AUTH_CONFIG_PATH" <<EOF
[mlflow]
# Every signed-in user may read every experiment and model; writing needs a grant or ownership
# (whoever creates an experiment or a registered model gets MANAGE on it).
default_permission = READ
database_uri = $database_uri
admin_username = admin
EOF
exec "$@"
