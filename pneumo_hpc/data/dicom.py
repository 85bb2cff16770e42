"""Read chest X-ray DICOM files into 8-bit greyscale arrays, and write them (for the generator and the tests).

The RSNA files are JPEG Baseline, 8-bit MONOCHROME2: `read_image` decodes those straight from the encapsulated
JPEG frame with OpenCV, at reduced scale when the target size allows (the DCT decodes 1/2, 1/4, 1/8 for almost
nothing). Everything else (uncompressed, 12/16-bit, MONOCHROME1, other codecs) goes through pydicom in
`read_pixels`, which maps it to 0-255 with bright = dense. Any failure is a `BadImage` whose message names the file
and the reason.

    from pneumo_hpc.data.dicom import read_image
    img = read_image("stage_2_train_images/0004cfab-14fd-4e49-80ba-63a80b6bddd6.dcm", 128)  # uint8 (128, 128)
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pydicom.datadict
import pydicom.encaps
import pydicom.pixels
import pydicom.uid
from pydicom.dataset import Dataset, FileMetaDataset

from pneumo_hpc.atomic import write_bytes

# Secondary Capture: what the RSNA conversion wrote (the images are re-encoded exports, not CR originals).
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
TRANSFER_SYNTAXES = {
    "jpeg-baseline": pydicom.uid.JPEGBaseline8Bit,
    "explicit-le": pydicom.uid.ExplicitVRLittleEndian,
}
# Reduced-size JPEG decode (libjpeg DCT scaling), largest first so the decoder does the least work. Each stays
# within 1 grey level of full decode + INTER_AREA (tests/test_dicom.py holds it to that on every pixel).
_REDUCED = ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
            (2, cv2.IMREAD_REDUCED_GRAYSCALE_2))


class BadImage(Exception):
    """A file that is not a readable greyscale DICOM image; str() names the file and the reason."""


# ---------------------------------------------------------------------------------------------------------- reading

def _load(path) -> Dataset:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        raise BadImage(f"{path}: cannot read ({e.strerror or e})") from e
    if len(head) < 132 or head[128:132] != b"DICM":
        raise BadImage(f"{path}: not a DICOM file (no DICM preamble)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises a zoo of types (EOFError, ValueError, struct.error, ...)
        raise BadImage(f"{path}: unreadable DICOM header ({type(e).__name__}: {e})") from e
    # a file cut inside encapsulated pixel data only warns, and pydicom then drops the element
    eof = [str(w.message) for w in caught if "end of file" in str(w.message).lower()]
    if eof:
        raise BadImage(f"{path}: truncated pixel data (file ends early: {eof[0].split(' in file')[0]})")
    if "PixelData" not in ds:
        raise BadImage(f"{path}: no pixel data (7FE0,0010) in the file (truncated header or not an image)")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise BadImage(f"{path}: unsupported PhotometricInterpretation {photometric or '(missing)'} "
                       "(greyscale MONOCHROME1/MONOCHROME2 only)")
    for key in ("Rows", "Columns", "BitsAllocated"):
        if key not in ds:
            raise BadImage(f"{path}: {key} missing from the header")
    return ds


def _check_length(ds: Dataset, path) -> None:
    """Native pixel data shorter than Rows x Columns x samples means the file was cut (pydicom reads it silently)."""
    expected = pydicom.pixels.utils.get_expected_length(ds, "bytes")
    got = len(ds.PixelData)
    if got < expected:
        raise BadImage(f"{path}: truncated pixel data ({got} of {expected} bytes)")


def _jpeg_frame(ds: Dataset, path) -> bytes:
    """The first encapsulated frame; a JPEG that does not end in EOI was cut (decoders would pad it with grey)."""
    try:
        frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    except Exception as e:
        raise BadImage(f"{path}: truncated pixel data (encapsulated frame unreadable: {e})") from e
    end = frame.rstrip(b"\x00")  # fragments are padded to an even length
    if not frame.startswith(b"\xff\xd8") or not end.endswith(b"\xff\xd9"):
        raise BadImage(f"{path}: truncated pixel data (JPEG frame of {len(frame)} bytes has no end-of-image marker)")
    return frame


def _decode_plugin(tsyntax) -> str:
    """Prefer Pillow (faster than pylibjpeg on JPEG Baseline: docs/performance.md); otherwise pydicom's own order."""
    try:
        plugins = pydicom.pixels.get_decoder(tsyntax).available_plugins
    except NotImplementedError:
        return ""
    return "pillow" if "pillow" in plugins else ""


def _to_uint8(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> 0-255: modality rescale, then the header's window if any, else the image's own range."""
    identity = (float(ds.get("RescaleSlope", 1) or 1) == 1 and float(ds.get("RescaleIntercept", 0) or 0) == 0
                and "ModalityLUTSequence" not in ds)
    if arr.dtype == np.uint8 and identity and "WindowCenter" not in ds:
        return arr  # already display values (RSNA-like 8-bit films): no stretching
    values = pydicom.pixels.apply_modality_lut(arr, ds).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        values = pydicom.pixels.apply_windowing(values, ds)
        # the window maps onto the modality output range; probing with -inf/+inf gives its two ends
        lo, hi = pydicom.pixels.apply_windowing(np.array([-np.inf, np.inf]), ds)
    else:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).clip(0, 255).astype(np.uint8)


def _pixels(ds: Dataset, path) -> np.ndarray:
    tsyntax = ds.file_meta.TransferSyntaxUID
    if tsyntax in (pydicom.uid.JPEGBaseline8Bit, pydicom.uid.JPEGExtended12Bit):
        _jpeg_frame(ds, path)
    elif not tsyntax.is_compressed:
        _check_length(ds, path)
    try:
        arr = pydicom.pixels.pixel_array(ds, index=0 if int(ds.get("NumberOfFrames", 1) or 1) > 1 else None,
                                         decoding_plugin=_decode_plugin(tsyntax))
    except Exception as e:
        raise BadImage(f"{path}: cannot decode pixel data with transfer syntax {tsyntax.name} "
                       f"({type(e).__name__}: {e})") from e
    if arr.ndim != 2:
        raise BadImage(f"{path}: expected one greyscale frame, got pixel array of shape {arr.shape}")
    try:
        img = _to_uint8(arr, ds)
    except Exception as e:  # e.g. a window width < 1
        raise BadImage(f"{path}: cannot map pixel values to 8 bits ({type(e).__name__}: {e})") from e
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        img = 255 - img  # MONOCHROME1 stores dense = dark; the kit always wants dense = bright
    return np.ascontiguousarray(img)


def read_pixels(path) -> np.ndarray:
    """Full-resolution uint8 (H, W) image of any greyscale DICOM, dense = bright. Raises BadImage."""
    return _pixels(_load(path), path)


def _is_rsna_jpeg(ds: Dataset) -> bool:
    return (ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
            and str(ds.PhotometricInterpretation).strip() == "MONOCHROME2"
            and int(ds.BitsStored) == 8 and int(ds.get("NumberOfFrames", 1) or 1) == 1)


def _reduction(rows: int, cols: int, size: int, min_side: int = 0) -> tuple[int, int]:
    """(factor, imdecode flag): decode at 1/factor when what is left to do is an exact integer INTER_AREA to `size`
    and the decoded sides stay >= min_side."""
    for factor, flag in _REDUCED:
        if rows == cols and rows % factor == 0 and (rows // factor) % size == 0 and rows // factor >= min_side:
            return factor, flag
    return 1, cv2.IMREAD_GRAYSCALE


def read_scaled(path, size: int, min_side: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """(image, (rows, cols)): the image at the coarsest JPEG scale from which `size` is an exact integer INTER_AREA
    and whose sides stay >= min_side (full resolution for anything but the RSNA JPEG files); (rows, cols) is the
    full size from the header, which box coordinates refer to. One decode serves several target sizes."""
    if int(size) < 1:
        raise ValueError(f"size must be a positive number of pixels, not {size!r}")
    ds = _load(path)
    if not _is_rsna_jpeg(ds):
        img = _pixels(ds, path)
        return img, img.shape
    frame = np.frombuffer(_jpeg_frame(ds, path), np.uint8)
    rows, cols = int(ds.Rows), int(ds.Columns)
    factor, flag = _reduction(rows, cols, size, min_side)
    img = cv2.imdecode(frame, flag)
    if img is None:
        raise BadImage(f"{path}: cannot decode the JPEG Baseline frame ({frame.size} bytes)")
    if img.shape != (rows // factor, cols // factor):
        raise BadImage(f"{path}: JPEG frame is {img.shape[1] * factor}x{img.shape[0] * factor}, "
                       f"header says {cols}x{rows}")
    return img, (rows, cols)


def read_image(path, size: int) -> np.ndarray:
    """uint8 (size, size) image; JPEG Baseline 8-bit MONOCHROME2 decodes straight from the JPEG frame."""
    return resize(read_scaled(path, size)[0], size)


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """(size, size) by pixel-area averaging (the reference resize the fast path is held to)."""
    return img if img.shape == (size, size) else cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------------------------------------- writing


def encode_jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    """8-bit greyscale -> JPEG Baseline (sequential Huffman, 8-bit: what transfer syntax .4.50 allows)."""
    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, int(quality),
                                            cv2.IMWRITE_JPEG_PROGRESSIVE, 0])
    if not ok:
        raise ValueError("OpenCV could not encode the image as JPEG")
    return buf.tobytes()


def write_dicom(path, pixels: np.ndarray, *, transfer_syntax: str = "jpeg-baseline", bits_stored: int = 8,
                photometric: str = "MONOCHROME2", patient_id: str = "anonymous", quality: int = 95,
                **headers) -> None:
    """Write `pixels` as a real DICOM file (atomically). Stored values are written as given.

    transfer_syntax: "jpeg-baseline" (8-bit only, encoded by OpenCV/libjpeg, encapsulated) or "explicit-le".
    bits_stored: 8 (uint8 pixels) or up to 16 (uint16 pixels whose values fit in bits_stored).
    headers: any DICOM keyword=value, e.g. Modality="CR", WindowCenter=2048, SOPInstanceUID=...
    """
    tsyntax, pixels, samples, bits_allocated = _checked_pixels(pixels, transfer_syntax, bits_stored)
    ds = _patient_study(_file_meta(tsyntax, headers), patient_id)
    _pixel_module(ds, pixels, tsyntax, samples, bits_allocated, bits_stored, photometric, quality)
    write_bytes(path, _encoded(ds, headers))


def _checked_pixels(pixels: np.ndarray, transfer_syntax: str, bits_stored: int):
    """(transfer syntax UID, contiguous pixels, samples per pixel, bits allocated); ValueError if they do not fit."""
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}, not {transfer_syntax!r}")
    pixels = np.ascontiguousarray(pixels)
    samples = 3 if pixels.ndim == 3 else 1
    if pixels.ndim not in (2, 3) or (samples == 3 and pixels.shape[2] != 3):
        raise ValueError(f"pixels must be (H, W) or (H, W, 3), got shape {pixels.shape}")
    bits_allocated = 8 if bits_stored <= 8 else 16
    dtype = np.uint8 if bits_allocated == 8 else np.uint16
    if pixels.dtype != dtype:
        raise ValueError(f"bits_stored={bits_stored} needs {np.dtype(dtype).name} pixels, got {pixels.dtype}")
    if int(pixels.max(initial=0)) >= 1 << bits_stored:
        raise ValueError(f"pixel values exceed bits_stored={bits_stored}")
    tsyntax = TRANSFER_SYNTAXES[transfer_syntax]
    if tsyntax.is_compressed and (bits_stored != 8 or samples != 1):
        raise ValueError("jpeg-baseline here writes 8-bit greyscale only")
    return tsyntax, pixels, samples, bits_allocated


def _file_meta(tsyntax, headers: dict) -> FileMetaDataset:
    """Group 0002; a SOPInstanceUID missing from headers is generated and put into headers (they share it)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = headers.get("SOPClassUID", SECONDARY_CAPTURE)
    meta.MediaStorageSOPInstanceUID = headers.setdefault("SOPInstanceUID", pydicom.uid.generate_uid())
    meta.TransferSyntaxUID = tsyntax
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    return meta


def _patient_study(meta: FileMetaDataset, patient_id: str) -> Dataset:
    """The dataset with its SOP class, patient and fresh study/series UIDs (headers may replace any of them)."""
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    return ds


def _pixel_module(ds: Dataset, pixels: np.ndarray, tsyntax, samples: int, bits_allocated: int, bits_stored: int,
                  photometric: str, quality: int) -> None:
    """The image pixel tags and the pixel data: a JPEG frame, encapsulated, or the raw little-endian values."""
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if tsyntax.is_compressed:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.PixelData = pydicom.encaps.encapsulate([encode_jpeg(pixels, quality)])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"


def _encoded(ds: Dataset, headers: dict) -> bytes:
    """The file's bytes, with the caller's headers set last (they win over the defaults above)."""
    unknown = [key for key in headers if pydicom.datadict.tag_for_keyword(key) is None]
    if unknown:
        raise ValueError(f"not DICOM keywords: {', '.join(unknown)}")
    with warnings.catch_warnings():
        # RSNA writes PatientAge as a bare number ("51"), not the standard "051Y": keep it, without the warning
        warnings.filterwarnings("ignore", message="Invalid value for VR AS")
        for key, value in headers.items():
            setattr(ds, key, value)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
