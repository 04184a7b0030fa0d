#!/usr/bin/env bash
# Create (or reuse) .venv and install ctmri-monai with the FID extra and the test tools.
# torch is pinned to 2.13.0 first so that nothing pulls a multi-GB CUDA build on a CPU machine.
# Orthanc (the research PACS the DICOM node is tested against) and its DICOMweb plugin are installed from the
# Debian packages when missing and apt can run as root; CTMRI_INSTALL_ORTHANC=1 (set by .ci/run) makes a failed
# install an error. The same for dicom3tools (dciodvfy, the validator of the conformance tests) and DCMTK (echoscu,
# storescu, storescp, dcmdump: the other side of the node in its tests), under CTMRI_INSTALL_DICOM_TOOLS=1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v dciodvfy >/dev/null || ! command -v storescp >/dev/null || ! command -v dcmdump >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools dcmtk; }; then
            echo "setup.sh: installing dicom3tools dcmtk failed" >&2
            [ "${CTMRI_INSTALL_DICOM_TOOLS:-0}" = 1 ] && exit 1
        fi
    elif [ "${CTMRI_INSTALL_DICOM_TOOLS:-0}" = 1 ]; then
        echo "setup.sh: dicom3tools / dcmtk missing and apt-get cannot run as root: install dicom3tools dcmtk" >&2
        exit 1
    else
        echo "setup.sh: dicom3tools / dcmtk not installed (sudo apt-get install dicom3tools dcmtk); their tests will skip" >&2
    fi
fi
if [ ! -x /usr/sbin/Orthanc ] || [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb; }
        then
            echo "setup.sh: installing orthanc orthanc-dicomweb failed" >&2
            [ "${CTMRI_INSTALL_ORTHANC:-0}" = 1 ] && exit 1
        fi
        # the package starts a system Orthanc on ports 8042 / 4242; the tests start their own
        { command -v service >/dev/null && service orthanc stop; } >/dev/null 2>&1 || true
    elif [ "${CTMRI_INSTALL_ORTHANC:-0}" = 1 ]; then
        echo "setup.sh: Orthanc is missing and apt-get cannot run as root: install orthanc orthanc-dicomweb" >&2
        exit 1
    else
        echo "setup.sh: Orthanc not installed (sudo apt-get install orthanc orthanc-dicomweb); its tests will skip" >&2
    fi
fi
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[fid,dev,onnx,openvino,dask]"
python -c "import ctmri_monai, monai, torch; print('ctmri-monai', ctmri_monai.__version__, 'monai', monai.__version__, 'torch', torch.__version__)"
