"""What an enhanced MR frame says beyond the functional groups the header reads generically.

The ASL context (standard (0018,9257), else Philips' private label type), the image component of a
frame without ComplexImageComponent, and Philips' scale slope.
Each frame of a Philips enhanced MR file carries, in (2005,140F), a copy of what a classic
Philips header holds in private tags: the ASL label type (2005,1429) and the scale slope
(2005,100E) of its "precise" values among them. dcm2niix reads them there (its parser is flat);
the standard functional groups do not carry them. Private tags are read under their creator
only (block 0x10: "Philips MR Imaging DD 001", block 0x14: "... DD 005"), in any encoding.
"""

from __future__ import annotations

from typing import Any

from imaging.dicom.dims import COMPONENTS, decode_value

FRAME_PRIVATE = 0x2005140F
DD_001 = (0x20050010, "Philips MR Imaging DD 001")  # creator of block (2005,10xx)
DD_005 = (0x20050014, "Philips MR Imaging DD 005")  # creator of block (2005,14xx)
LABEL_TYPE = 0x20051429  # MRImageLabelType: LABEL / CONTROL (ASL), CS
IMAGE_TYPE_MR = 0x20051011  # Philips image type: M, P, R, I (magnitude, phase, real, imaginary), CS
SCALE_SLOPE = 0x2005100E  # the private scale slope SS, FL


def frame_private(frame: Any, tag: int, creator: tuple[int, str], kind: str) -> Any:
    """Value of private ``tag`` in ``frame``'s (2005,140F) item, under ``creator``; ``None`` when absent."""
    elem = frame.get(FRAME_PRIVATE) if frame is not None else None
    items = elem.value if elem is not None and elem.VR in ("SQ", "UN") else None
    if not items or isinstance(items, (bytes, bytearray)):
        return None
    own = items[0].get(creator[0])
    if own is None or decode_value(own.value, "s") != creator[1]:
        return None
    value = items[0].get(tag)
    return decode_value(value.value, kind) if value is not None else None


def frame_scale_slope(frame: Any) -> float | None:
    """The frame's Philips scale slope (2005,100E), for ``philips_precise`` values; ``None`` when absent or 0."""
    value = frame_private(frame, SCALE_SLOPE, DD_001, "fl")
    return float(value) if isinstance(value, (int, float)) and value else None


def frame_dims(frame: Any) -> dict[str, Any]:
    """Dimension entries of one enhanced frame that the generic functional-group reading misses.

    ASL label/control: (0018,9251) MRArterialSpinLabelingSequence > (0018,9257) ASLContext, else
    Philips' private label type (2005,1429). Each context is a volume of its own, as for classic
    Philips ASL (:func:`imaging.dicom.dims.header_dims`); so is each image component.
    """
    if frame is None:
        return {}
    out: dict[str, Any] = {}
    asl = frame.get("MRArterialSpinLabelingSequence")
    context = asl[0].get("ASLContext") if asl else None
    if not context:
        context = frame_private(frame, LABEL_TYPE, DD_005, "s")
    context = str(context or "").strip().upper()
    if context in ("LABEL", "CONTROL", "M_ZERO_SCAN"):
        out["asl"] = context
    component = _component(frame)
    if component:
        out["comp"] = component
    return out


def _component(frame: Any) -> str | None:
    """Magnitude/phase/real/imaginary of a frame without (0008,9208) ComplexImageComponent (the header
    reads that one): its FrameType (M_FFE, P...), else Philips' image type (2005,1011). Without this,
    the magnitude and phase frames of a field map were stacked as one 4D volume."""
    types = frame.get("MRImageFrameTypeSequence")
    item = types[0] if types else None
    if item is not None and item.get("ComplexImageComponent"):
        return None
    values = item.get("FrameType") if item is not None else None
    values = [values] if isinstance(values, str) else list(values or [])
    for value in values[2:]:
        head = str(value).upper().split("_")[0]
        if head in COMPONENTS:
            return COMPONENTS[head]
    private = frame_private(frame, IMAGE_TYPE_MR, DD_001, "s")
    return COMPONENTS.get(str(private or "").strip().upper())
