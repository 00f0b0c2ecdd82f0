#!/bin/sh
# minio-init: the buckets, and one MinIO user per service with a policy that allows what that
# service does and nothing else (docker/minio-policies/<user>.json), so no service holds MinIO's
# root credentials or another service's rights. Safe to rerun: the policies are replaced and every
# secret is set to what .env holds now.
set -eu

policies=$(dirname "$0")/minio-policies

mc alias set osmf http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing osmf/osmf-lakehouse osmf/osmf-landing osmf/mlflow

# provision USER SECRET: the user (its access key) with the policy of the same name.
provision() {
    mc admin policy create osmf "$1" "$policies/$1.json"
    mc admin user add osmf "$1" "$2"
    # attach is not idempotent: on a rerun it fails with "already in effect", the one failure
    # that leaves the user as wanted.
    if ! attached=$(mc admin policy attach osmf "$1" --user "$1" 2>&1); then
        case $attached in
            *"already in effect"*) ;;
            *)
                echo "$attached" >&2
                exit 1
                ;;
        esac
    fi
}

provision osmf-pipeline "$MINIO_PIPELINE_SECRET_KEY"
provision osmf-mlflow "$MINIO_MLFLOW_SECRET_KEY"
provision osmf-analyst "$MINIO_ANALYST_SECRET_KEY"
provision osmf-shipper "$MINIO_SHIPPER_SECRET_KEY"
