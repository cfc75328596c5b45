#!/usr/bin/env bash
# Build the Apptainer image on a login node (it downloads the CUDA PyTorch base image).
#
#   containers/build.sh [IMAGE.sif]        default: tunevlseg.sif in the repository root
#   containers/build.sh --print [IMAGE]    print the build command instead of running it
#
# The image's submitit must be the host's (the launcher pickles tasks with it), so the host
# version is passed as a build argument. Set PYTHON to the interpreter you launch with.
set -euo pipefail
cd "$(dirname "$0")/.."
print=0
if [ "${1:-}" = "--print" ]; then print=1; shift; fi
image=${1:-tunevlseg.sif}
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
version=$("$python" -c 'import submitit; print(submitit.__version__)') \
  || { echo "submitit is not installed for $python; set PYTHON to the launcher's interpreter" >&2; exit 1; }
command=(apptainer build --build-arg "SUBMITIT_VERSION=$version" "$image" Apptainer.def)
if [ "$print" = 1 ]; then
  printf '%q ' "${command[@]}"; echo
  exit 0
fi
command -v apptainer >/dev/null || { echo "apptainer is not installed on this machine" >&2; exit 1; }
exec "${command[@]}"
