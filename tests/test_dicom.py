"""DICOM decoding on real files written by write_dicom: every variant the reader accepts, the fast path's parity
with the reference decode, and the failures it must name."""
import cv2
import numpy as np
import pydicom
import pytest

from pneumo_hpc.data.dicom import BadImage, read_image, read_pixels, read_scaled, resize, write_dicom
from pneumo_hpc.data.synth import CLASSES, make_patient


@pytest.fixture(scope="module")
def radiograph():
    """A 1024 synthetic chest film with an opacity: the texture JPEG and the reduced decode really face."""
    return make_patient(seed=11, split=0, index=0, klass=CLASSES[0], image_size=1024)[2]


def small(radiograph, size=256):
    return cv2.resize(radiograph, (size, size), interpolation=cv2.INTER_AREA)


def reference_128(path, size=128):
    """What read_image must match: pydicom's Pillow decode, then INTER_AREA."""
    full = pydicom.pixels.pixel_array(pydicom.dcmread(path), decoding_plugin="pillow")
    return cv2.resize(full, (size, size), interpolation=cv2.INTER_AREA)


def test_jpeg_baseline_round_trip(tmp_path, radiograph):
    img = small(radiograph)
    path = tmp_path / "a.dcm"
    write_dicom(path, img, patient_id="p-1", Modality="CR")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert ds.LossyImageCompression == "01" and ds.PatientID == "p-1"
    out = read_pixels(path)
    assert out.dtype == np.uint8 and out.shape == (256, 256)
    assert np.abs(out.astype(int) - img).mean() < 1.5
    assert np.array_equal(read_image(path, 256), out)


def test_uncompressed_8bit_is_exact(tmp_path, radiograph):
    img = small(radiograph, 200)
    write_dicom(tmp_path / "u.dcm", img, transfer_syntax="explicit-le")
    assert np.array_equal(read_pixels(tmp_path / "u.dcm"), img)


def test_12bit_spreads_over_full_range_in_order(tmp_path):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, (64, 80)).astype(np.uint16)
    stored[0, :2] = (0, 4095)
    write_dicom(tmp_path / "12.dcm", stored, transfer_syntax="explicit-le", bits_stored=12)
    out = read_pixels(tmp_path / "12.dcm")
    # scaled, not the low byte: 4095 -> 255 and 256 -> 16 (the low byte would give 255 and 0)
    assert np.array_equal(out, np.rint(stored * (255 / 4095)).astype(np.uint8))
    order = np.argsort(stored, axis=None, kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)


def test_16bit_rescale_then_min_max(tmp_path):
    stored = np.linspace(1000, 61000, 32 * 32).astype(np.uint16).reshape(32, 32)
    write_dicom(tmp_path / "16.dcm", stored, transfer_syntax="explicit-le", bits_stored=16,
                RescaleSlope=2, RescaleIntercept=-1024)
    out = read_pixels(tmp_path / "16.dcm")
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)


def test_window_from_header_is_applied(tmp_path):
    stored = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (8, 1))  # 256 columns, 0..4080
    write_dicom(tmp_path / "w.dcm", stored, transfer_syntax="explicit-le", bits_stored=12,
                WindowCenter=2048, WindowWidth=1024)
    out = read_pixels(tmp_path / "w.dcm")[0]
    assert out[stored[0] < 1536].max() == 0 and out[stored[0] >= 2560].min() == 255
    assert abs(int(out[128]) - 128) <= 1  # stored 2048: the window centre


@pytest.mark.parametrize("transfer_syntax,bits", [("explicit-le", 8), ("explicit-le", 12), ("jpeg-baseline", 8)])
def test_monochrome1_is_inverted_back(tmp_path, radiograph, transfer_syntax, bits):
    img = small(radiograph, 128)
    if bits == 8:
        stored = 255 - img
    else:  # 0..4095 MONOCHROME1 film of the same picture
        stored = (4095 - img.astype(np.uint16) * 16 - 8).astype(np.uint16)
    path = tmp_path / "m1.dcm"
    window = {} if bits == 8 else {"WindowCenter": 2048, "WindowWidth": 4096}  # the whole 12-bit range, linear
    write_dicom(path, stored, transfer_syntax=transfer_syntax, bits_stored=bits, photometric="MONOCHROME1",
                **window)
    out = read_pixels(path)
    tol = 1.5 if transfer_syntax == "jpeg-baseline" else (0.0 if bits == 8 else 1.0)
    assert np.abs(out.astype(int) - img).mean() <= tol
    assert np.corrcoef(out.ravel(), img.ravel())[0, 1] > 0.99
    assert np.array_equal(read_image(path, 64), cv2.resize(out, (64, 64), interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize("size", [128, 256, 512, 64, 100])
def test_fast_path_matches_reference_decode(tmp_path, radiograph, size):
    path = tmp_path / "rsna.dcm"
    write_dicom(path, radiograph)
    fast = read_image(path, size)
    assert fast.shape == (size, size) and fast.dtype == np.uint8
    assert np.abs(fast.astype(int) - reference_128(path, size)).max() <= 1


@pytest.mark.parametrize("size,yolo_size,decoded", [(128, 416, 512), (128, 640, 1024), (64, 256, 256)])
def test_one_decode_for_both_sizes_keeps_parity(tmp_path, radiograph, size, yolo_size, decoded):
    """Preprocessing decodes once, as coarse as the YOLO size allows; the classifier image still matches the
    reference within 1 grey level, and the header's full size comes back for the boxes."""
    path = tmp_path / "rsna.dcm"
    write_dicom(path, radiograph)
    img, shape = read_scaled(path, size, min_side=yolo_size)
    assert img.shape == (decoded, decoded) and shape == (1024, 1024)
    assert np.abs(resize(img, size).astype(int) - reference_128(path, size)).max() <= 1
    full = pydicom.pixels.pixel_array(pydicom.dcmread(path), decoding_plugin="pillow")
    yolo_ref = cv2.resize(full, (yolo_size, yolo_size), interpolation=cv2.INTER_AREA)
    assert np.abs(resize(img, yolo_size).astype(int) - yolo_ref).mean() < 0.5  # a picture for YOLO, near enough


def test_non_square_is_resized_to_square(tmp_path, radiograph):
    img = radiograph[:300, :200].copy()
    write_dicom(tmp_path / "ns.dcm", img, transfer_syntax="explicit-le")
    out = read_image(tmp_path / "ns.dcm", 128)
    assert np.array_equal(out, cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize("transfer_syntax", ["jpeg-baseline", "explicit-le"])
@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_file_is_named(tmp_path, radiograph, transfer_syntax, keep):
    path = tmp_path / "cut.dcm"
    write_dicom(path, small(radiograph), transfer_syntax=transfer_syntax)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    for read in (read_pixels, lambda p: read_image(p, 128)):
        with pytest.raises(BadImage, match="truncated") as err:
            read(path)
        assert str(path) in str(err.value)


def test_jpeg_frame_cut_inside_a_complete_item_is_truncated(tmp_path, radiograph):
    """A JPEG that lost its tail but sits in a well-formed item: decoders would fill the rest with grey."""
    from pydicom.encaps import encapsulate
    from pneumo_hpc.data.dicom import encode_jpeg
    path = tmp_path / "short-frame.dcm"
    write_dicom(path, small(radiograph))
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([encode_jpeg(small(radiograph))[:-4000]])
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(BadImage, match="truncated pixel data"):
        read_image(path, 128)


def test_not_dicom_files(tmp_path, radiograph):
    png = tmp_path / "x.png"
    cv2.imwrite(str(png), small(radiograph))
    txt = tmp_path / "notes.dcm"
    txt.write_text("patientId,x,y\n" * 20)
    for path in (png, txt, tmp_path / "empty.dcm"):
        path.touch()
        with pytest.raises(BadImage, match="not a DICOM file") as err:
            read_image(path, 128)
        assert str(path) in str(err.value)
    with pytest.raises(BadImage, match="cannot read"):
        read_pixels(tmp_path / "missing.dcm")


def test_rgb_is_refused(tmp_path, radiograph):
    rgb = np.repeat(small(radiograph, 64)[:, :, None], 3, axis=2)
    write_dicom(tmp_path / "rgb.dcm", rgb, transfer_syntax="explicit-le", photometric="RGB")
    for read in (read_pixels, lambda p: read_image(p, 32)):
        with pytest.raises(BadImage, match="unsupported PhotometricInterpretation RGB"):
            read(tmp_path / "rgb.dcm")


def test_write_dicom_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="needs uint16"):
        write_dicom(tmp_path / "x.dcm", np.zeros((8, 8), np.uint8), transfer_syntax="explicit-le", bits_stored=12)
    with pytest.raises(ValueError, match="exceed bits_stored=12"):
        write_dicom(tmp_path / "x.dcm", np.full((8, 8), 5000, np.uint16), transfer_syntax="explicit-le",
                    bits_stored=12)
    with pytest.raises(ValueError, match="not DICOM keywords: PatientAgee"):
        write_dicom(tmp_path / "x.dcm", np.zeros((8, 8), np.uint8), PatientAgee="51")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_8bit_with_identity_rescale_is_not_stretched(tmp_path, radiograph):
    img = small(radiograph, 64) // 2 + 40  # 40..167: a min-max stretch would change it
    write_dicom(tmp_path / "r.dcm", img, transfer_syntax="explicit-le", RescaleSlope=1, RescaleIntercept=0)
    assert np.array_equal(read_pixels(tmp_path / "r.dcm"), img)
