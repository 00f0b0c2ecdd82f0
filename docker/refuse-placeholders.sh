#!/bin/sh
# Usage: refuse-placeholders.sh COMMAND [ARG...]
#
# Runs COMMAND only if no variable of this environment holds a change-me placeholder from
# .env.example; otherwise names each such variable and exits 1. The services that turn a .env value
# into a password or key (PostgreSQL, MinIO, the MLflow server, and the init containers) start
# through it, so a half-edited .env stops the stack before a placeholder becomes a credential that
# is hard to change afterwards (PostgreSQL and MLflow keep their first admin password).
#
# Plain POSIX sh and env(1) only, so it runs in every image here, minio/mc's minimal one too.
set -eu

refused=0
# env(1), not the shell's own list: it shows exactly what the container was given. A line of a
# multi-line value is no name, or names a variable that gets checked anyway.
names=$(env)
while IFS= read -r line; do
    name=${line%%=*}
    case $name in
        '' | [!A-Za-z_]* | *[!A-Za-z0-9_]*) continue ;;
    esac
    eval "value=\${$name-}"
    case $value in
        *change-me*)
            # The name only: the value may be a URL that also carries a real password.
            echo "refusing to start: $name holds a change-me placeholder; set a real value in .env (see .env.example)" >&2
            refused=1
            ;;
    esac
done <<EOF
$names
EOF

[ "$refused" -eq 0 ] || exit 1
exec "$@"
