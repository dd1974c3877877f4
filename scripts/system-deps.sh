#!/usr/bin/env bash
# One place for the system packages the tests and the demo need. `make test`,
# `make demo` and `.ci/run` call it. Installs what is missing when it can (root +
# apt-get); otherwise stops with the exact command to run. Prints nothing when all
# is there.
#
#   slurm-wlm munge      real Slurm tier (slurmctld + slurmd + munged started by a fixture)
#   dcmtk dicom3tools    DICOM oracles (dcmdump, dciodvfy)
#   orthanc orthanc-dicomweb   real DICOMweb archive for pull/push tests
#   postgresql           MLflow tracking server backend
#   chromium             headless browser tests of the MLflow UI
set -euo pipefail
PKGS=(slurm-wlm munge dcmtk dicom3tools orthanc orthanc-dicomweb postgresql chromium)
need=()
for pkg in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
cmd="apt-get update && apt-get install -y --no-install-recommends ${need[*]}"
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: missing system packages: ${need[*]}" >&2
  echo "system-deps: run as root:  $cmd" >&2
  exit 2
fi
echo "system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
apt-get install -y -q --no-install-recommends "${need[@]}" >&2
# Debian's packages try to start their services; the tests start their own.
for svc in orthanc postgresql munge slurmctld slurmd; do
  command -v service >/dev/null 2>&1 && service "$svc" stop >/dev/null 2>&1 || true
done
