"""Volumes in and out: the volume type and its error, the table of file formats (NIfTI, NRRD,
MetaImage, DICOM series folders), the DICOM reader and writer, and PNG review images. Imports only
the core's top-level modules."""
