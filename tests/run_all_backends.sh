#!/usr/bin/env bash
# The project's test command: lint, then the whole suite once per backend.
# Extra arguments go to pytest (for example `-m "not slow"`).
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
ruff check keras_naisnet tests examples benchmarks || status=1
for backend in tensorflow jax torch; do
    echo "=== KERAS_BACKEND=$backend"
    KERAS_BACKEND=$backend python -m pytest --durations=10 "$@" || status=1
done
exit $status
