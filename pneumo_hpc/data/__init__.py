"""Data: the RSNA reader, the synthetic generator, DICOM decoding, preprocessing."""
