"""VolumetricSR's core: thick-slice CT in, synthetic thin-slice CT out, without Slicer.

The packages, each importing only those before it (`Testing/test_layering.py` enforces it):
- the modules at this level (`checks`, `geometry`, `intensity`, `atomic`, `metrics`, `phantom`): input
  checks, voxel geometry, the HU window, atomic writes, scores and a synthetic CT phantom; they import
  no package of the core;
- `models`: network architectures, their registry, model cards and weights;
- `io`: the volume type, the table of file formats, NIfTI / NRRD / MetaImage and DICOM, PNG;
- `inference`: the predictor, tiling, fallback, consistency, slice resampling and one study's run;
  imports `models`;
- `app`: the run layer, the command line, events, many studies, the child runner and the demo;
  imports everything above.
Nothing here imports Slicer, Qt, VTK or the training package; package `__init__` files import nothing,
so that Slicer's GUI process loads only the torch-free modules it asks for.
"""
