"""The real dimensions of an MR series, read per slice at scan time.

A classic (one file per slice) series whose positions repeat holds several
volumes. Each slice gets a dimension record at scan time (:func:`header_dims`):
b-value and gradient direction (standard tags, else Siemens CSA read with
nibabel, GE, Philips private tags), echo, image component (magnitude, phase,
real, imaginary), ASL label/control, temporal position, acquisition number and
time; an enhanced object's frames get theirs from their functional groups
(:mod:`imaging.dicom.enhanced` adds what the header's generic per-frame reading does not).
:mod:`imaging.dicom.split4d` splits a series into volumes by these records.

Private tags are read at their usual element numbers, gated by Manufacturer as
dcm2niix does (``nii_dicom.cpp``); Siemens CSA headers are parsed by
``nibabel.nicom.csareader`` (no hand-written parser).
"""

from __future__ import annotations

import logging
import struct
import warnings
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# Extra attributes the header readers decode (tag -> (keyword, kind), kinds as in fastheader).
EXTRA_WANTED: dict[int, tuple[str, str]] = {
    0x00080032: ("AcquisitionTime", "s"), 0x00089208: ("ComplexImageComponent", "s"),
    0x00181312: ("InPlanePhaseEncodingDirection", "s"), 0x00189089: ("DiffusionGradientOrientation", "fdn"),
    0x0019100A: ("SiemensNumberOfImagesInMosaic", "us"), 0x0019100C: ("SiemensBValue", "is"),
    0x0019100E: ("SiemensDiffusionGradientDirection", "fdn"), 0x00291010: ("SiemensCSAImageHeader", "raw"),
    0x00191028: ("SiemensBandwidthPerPixelPhaseEncode", "fdn"),
    0x00431039: ("GESlopInt6to9", "is"), 0x0043102F: ("GEImageType", "us"),
    0x001910BB: ("GEDiffusionX", "ds"), 0x001910BC: ("GEDiffusionY", "ds"), 0x001910BD: ("GEDiffusionZ", "ds"),
    0x20011003: ("PhilipsBValue", "fl"), 0x20011004: ("PhilipsDiffusionDirection", "s"),
    0x200510B0: ("PhilipsDiffusionRL", "fl"), 0x200510B1: ("PhilipsDiffusionAP", "fl"),
    0x200510B2: ("PhilipsDiffusionFH", "fl"), 0x20051429: ("PhilipsMRImageLabelType", "s"),
}
PRIVATE_KEYWORDS = {kw: (tag, kind) for tag, (kw, kind) in EXTRA_WANTED.items()}
COMPONENTS = {"M": "M", "MAGNITUDE": "M", "P": "P", "PHASE": "P", "R": "R", "REAL": "R",
              "I": "I", "IMAGINARY": "I"}
GE_COMPONENTS = {0: "M", 1: "P", 2: "R", 3: "I"}
# Keys constant over a whole volume, tried in this order; the first that splits names the 4th axis.
VOLUME_KEYS = ("diff", "tpi", "trig", "acq", "stack", "dimidx")
AXIS_NAMES = {
    "diff": "diffusion (b-value, gradient direction)",
    "tpi": "(0020,0100) TemporalPositionIdentifier / (0020,9128) TemporalPositionIndex", "trig": "(0018,1060) TriggerTime",
    "acq": "(0020,0012) AcquisitionNumber", "stack": "(0020,9056) StackID",
    "dimidx": "(0020,9157) DimensionIndexValues",
    "order": "acquisition order of repeated positions (AcquisitionNumber, AcquisitionTime, InstanceNumber)",
}
TIME_AXES = {"tpi", "acq", "order"}


def decode_value(raw: Any, kind: str) -> Any:
    """A private attribute's value from raw bytes (implicit VR / UN) or as pydicom typed it."""
    if raw is None:
        return None
    if not isinstance(raw, (bytes, bytearray)):
        if kind == "raw":
            return None
        if isinstance(raw, (list, tuple)) or type(raw).__name__ == "MultiValue":
            return [_number(v) for v in raw]
        return _number(raw) if kind != "s" else str(raw).strip()
    data = bytes(raw)
    if kind == "raw":
        return data
    if kind == "us":
        return struct.unpack_from("<H", data)[0] if len(data) >= 2 else None
    if kind == "fl":
        return struct.unpack_from("<f", data)[0] if len(data) >= 4 else None
    if kind == "fdn":
        n = len(data) // 8
        return list(struct.unpack_from(f"<{n}d", data)) if n else None
    text = data.decode("latin-1").strip(" \x00")
    if not text:
        return None
    parts = [p.strip() for p in text.split("\\")]
    if kind == "s":
        return parts[0] if len(parts) == 1 else parts
    values = [float(p) if kind == "ds" else int(float(p)) for p in parts if p]
    return values[0] if len(values) == 1 else values


def _number(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return int(f) if f.is_integer() and "." not in str(v) else f


def private_getter(ds: Any) -> Callable[[str], Any]:
    """``get(keyword)`` for :data:`EXTRA_WANTED` attributes of a pydicom dataset (None when absent/bad)."""

    def get(keyword: str) -> Any:
        tag, kind = PRIVATE_KEYWORDS[keyword]
        elem = ds.get(tag)
        if elem is None:
            return None
        try:
            return decode_value(elem.value, kind)
        except (ValueError, struct.error, UnicodeDecodeError):
            return None

    return get


def _seconds(value: Any) -> float | None:
    """DICOM TM ``HHMMSS.frac`` as seconds of the day."""
    if value is None:
        return None
    text = str(value).strip().replace(":", "")
    try:
        hh, mm, ss = int(text[:2]), int(text[2:4] or 0), float(text[4:] or 0)
    except ValueError:
        return None
    return hh * 3600 + mm * 60 + ss


def _vector(v: Any) -> list[float] | None:
    if isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v):
        return [float(x) for x in v]
    return None


def _csa(raw: Any) -> dict[str, Any]:
    """B_value, DiffusionGradientDirection, NumberOfImagesInMosaic, SliceNormalVector from a CSA header."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) < 16:
        return {}
    with warnings.catch_warnings():  # nibabel.nicom warns that its DICOM *wrappers* are experimental
        warnings.simplefilter("ignore")
        from nibabel.nicom import csareader  # only for Siemens diffusion/mosaic files

    try:
        csa = csareader.read(bytes(raw))
    except Exception as exc:  # noqa: BLE001 - a damaged CSA header means "no CSA", as in dcm2niix
        log.debug("CSA header unreadable: %s", exc)
        return {}
    out: dict[str, Any] = {}
    for key, name in (("b", "B_value"), ("mosaic", "NumberOfImagesInMosaic")):
        try:
            value = csareader.get_scalar(csa, name)
        except (KeyError, IndexError, csareader.CSAReadError):
            value = None
        if value is not None:
            out[key] = float(value) if key == "b" else int(value)
    try:  # per-tile acquisition times of a mosaic (ms): the BIDS SliceTiming
        n = int(csa["tags"]["MosaicRefAcqTimes"]["n_items"])
        times = csareader.get_vector(csa, "MosaicRefAcqTimes", n) if n > 1 else None
    except (KeyError, IndexError, ValueError, TypeError, csareader.CSAReadError):
        times = None
    if times is not None:
        out["slice_times"] = [float(x) for x in times]
    try:
        positive = csareader.get_scalar(csa, "PhaseEncodingDirectionPositive")
    except (KeyError, IndexError, csareader.CSAReadError):
        positive = None
    if positive is not None:
        out["pe_pos"] = int(positive)
    for key, name in (("bvec", "DiffusionGradientDirection"), ("normal", "SliceNormalVector")):
        try:
            vec = csareader.get_vector(csa, name, 3)
        except (KeyError, IndexError, ValueError, csareader.CSAReadError):
            vec = None
        if vec is not None:
            out[key] = [float(x) for x in vec]
    return out


def header_dims(get: Callable[[str], Any]) -> dict[str, Any]:
    """Dimension entries for an index row's ``tkey`` (JSON-able, only those present).

    ``bvec`` is a gradient direction in patient (LPS) coordinates; GE's private
    direction is relative to the image axes and kept as ``bvec_ge`` with the
    phase-encoding direction ``pe`` (converted per volume in :mod:`imaging.dicom.diffusion`).
    """
    out: dict[str, Any] = {}
    man = str(get("Manufacturer") or "").upper()
    itype = get("ImageType")
    itype = [str(v).upper() for v in ([itype] if isinstance(itype, str) else itype or [])]
    comp = _component(itype, get("ComplexImageComponent"), get("GEImageType") if "GE" in man else None)
    if comp:
        out["comp"] = comp
    t = _seconds(get("AcquisitionTime"))
    if t is not None:
        out["atime"] = t
    inst = get("InstanceNumber")
    if isinstance(inst, int):
        out["inst"] = inst
    b, vec = get("DiffusionBValue"), _vector(get("DiffusionGradientOrientation"))
    if "SIEMENS" in man:
        mosaic = "MOSAIC" in itype
        if b is None:
            b = get("SiemensBValue")
        if vec is None:
            vec = _vector(get("SiemensDiffusionGradientDirection"))
        # The CSA header (a few ms to parse) only where the (0019,10xx) copies do not answer.
        need = mosaic or ("DIFFUSION" in itype and (b is None or (b and vec is None)))
        csa = _csa(get("SiemensCSAImageHeader")) if need else {}
        if mosaic and (csa.get("mosaic") or get("SiemensNumberOfImagesInMosaic")):
            out["mosaic"] = csa.get("mosaic") or int(get("SiemensNumberOfImagesInMosaic"))
            if csa.get("normal"):
                out["csa_normal"] = csa["normal"]
            if len(csa.get("slice_times") or ()) == out["mosaic"]:
                out["slice_times"] = csa["slice_times"]  # one per tile: mosaic.py gives each its own
        if csa.get("pe_pos") is not None:
            out["pe_pos"] = csa["pe_pos"]
        bw = get("SiemensBandwidthPerPixelPhaseEncode")
        bw = bw[0] if isinstance(bw, list) and bw else bw
        if isinstance(bw, (int, float)) and bw > 0:
            out["bwpppe"] = float(bw)  # Hz/pixel along phase encoding: the BIDS readout time
        if b is None:
            b = csa.get("b")
        if vec is None:
            vec = _vector(csa.get("bvec"))
    elif man.startswith("GE"):
        # slop_int_6 holds other things outside diffusion: trusted only beside the gradient tags
        ge = _vector([get("GEDiffusionX"), get("GEDiffusionY"), get("GEDiffusionZ")])
        slop = get("GESlopInt6to9")
        first = slop[0] if isinstance(slop, list) and slop else slop
        if b is None and ge is not None and isinstance(first, (int, float)):
            b = float(int(first) % 1000000000)  # GE adds 1e9 (or 1e9 multiples) to the b-value
        if ge is not None and vec is None:
            out["bvec_ge"] = ge
            out["pe"] = str(get("InPlanePhaseEncodingDirection") or "COL").upper()[:3]
    elif "PHILIPS" in man:
        if b is None:
            b = get("PhilipsBValue")
        if vec is None:
            vec = _vector([get("PhilipsDiffusionRL"), get("PhilipsDiffusionAP"), get("PhilipsDiffusionFH")])
        label = str(get("PhilipsMRImageLabelType") or "").upper()
        if label in ("LABEL", "CONTROL"):  # ASL: label and control images are separate volumes
            out["asl"] = label
        if str(get("PhilipsDiffusionDirection") or "").upper() == "I" and b:
            vec = [0.0, 0.0, 0.0]  # isotropic (trace) image: derived, a volume of its own (dcm2niix drops it)
            out["comp"] = "TRACE"
    if isinstance(b, (int, float)):
        out["b"] = float(b)
        if vec is not None:
            out["bvec"] = vec
    return out


def _component(itype: list[str], complex_component: Any, ge_type: Any) -> str | None:
    if isinstance(ge_type, int) and ge_type in GE_COMPONENTS:
        return GE_COMPONENTS[ge_type]
    if complex_component:
        return COMPONENTS.get(str(complex_component).upper())
    for value in itype[2:]:
        head = value.split("_")[0]  # Philips: M_FFE, P_SE, R_IR...
        if head in COMPONENTS:
            return COMPONENTS[head]
    return None
