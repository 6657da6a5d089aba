#!/usr/bin/env bash
# The default model is larger than one device call may carry, so it travels in three
# chunks (made by `split -n 3`), one call each; each call stashes its chunk with
#   tools/gpu/model.sh stash        (copies .models-?/part into build-gpu/parts/)
# and once all three are there `tools/gpu/model.sh join` writes .models/ and checks it.
set -euo pipefail
name=SmolLM2-135M-Instruct.Q4_1.gguf
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p build-gpu/parts .models
for c in a b c; do [ -f .models-$c/part ] && cp .models-$c/part build-gpu/parts/$c; done
if [ "${1:-}" = join ]; then
  cat build-gpu/parts/a build-gpu/parts/b build-gpu/parts/c > .models/$name
  echo "$sha  .models/$name" | sha256sum -c
fi
