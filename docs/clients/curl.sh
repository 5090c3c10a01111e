#!/usr/bin/env bash
# curl through the gateway, with a token fresh from `attach token`. The
# header goes in on stdin (`-H @-`), so the token is not on a command line
# that `ps` shows. ATTACH_BACKEND is the backend's URL.
set -euo pipefail
token=$(attach token)
printf 'Authorization: Bearer %s\n' "$token" |
  curl -sS --fail-with-body "$ATTACH_BACKEND/v1/chat/completions" \
    -H @- \
    -H 'Content-Type: application/json' \
    -d '{"model": "llama3.2:1b", "messages": [{"role": "user", "content": "Say hello."}]}'
