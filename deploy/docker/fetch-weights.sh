#!/bin/sh
# Build-time weights step of the Dockerfile (stages weights-cpu and weights-gpu): fetch,
# sha256-check and store the variants chosen by $WEIGHTS into $MOBILENET_WEIGHTS_DIR.
#   WEIGHTS         all | default | none (see the Dockerfile)
#   WEIGHTS_MIRROR  a directory or http(s) base URL of the upstream files (build arg)
#   /mirror         the optional named build context `mirror` (current Docker only)
# Sources, in order: WEIGHTS_MIRROR, else the `mirror` context, else upstream URLs;
# a file the mirror lacks comes from upstream.
set -eu
mkdir -p "$MOBILENET_WEIGHTS_DIR"
case "${WEIGHTS:-all}" in
  all) set -- --all ;;
  default) set -- ;;
  none) echo "WEIGHTS=none: no weights baked in; mount them at /app/weights"; exit 0 ;;
  *) echo "WEIGHTS must be all, default or none (got '${WEIGHTS}')" >&2; exit 2 ;;
esac
if [ -n "${WEIGHTS_MIRROR:-}" ]; then
  echo "fetching weights: mirror ${WEIGHTS_MIRROR} first, upstream for the rest"
  export MOBILENET_WEIGHTS_MIRROR="$WEIGHTS_MIRROR"
elif [ -d /mirror ] && [ ! -e /mirror/.no-mirror ]; then
  echo "fetching weights: mirror build context first, upstream for the rest"
  export MOBILENET_WEIGHTS_MIRROR=/mirror
else
  echo "fetching weights from upstream"
  unset MOBILENET_WEIGHTS_MIRROR || true
fi
mobilenet-serve weights fetch "$@"
ls -la "$MOBILENET_WEIGHTS_DIR" "$MOBILENET_WEIGHTS_DIR/sources" 2>/dev/null || true
