"""BreastCMSL runtime core: preprocessing, the CMSL network, COAM/CAM attention maps and analysis.

Layers, lowest first (a module imports only from its own layer or a lower one):

- ``errors``, ``config``, ``atomic``: the user-error type, the configuration dataclasses, all-or-nothing writes;
- ``network/``: the CMSL network, its model file, losses and the attention maps (torch, safetensors);
- ``pipeline/``: volumes, grids, the breast mask, preprocessing, one analysis, its output files, the phantom
  (numpy, SimpleITK, torch);
- ``dicom/``: DICOM series, their roles in a DCE study, DICOM SEG export (pydicom, highdicom);
- ``run``, ``cli``: one analysis request (``AnalyzeRequest``) and its runner, and the ``breastcmsl`` command line;
- ``mrml/``: the MRML adapters (volume nodes, display, the lesion centre table); they take the scene as an
  argument and are the only modules that import ``slicer``/``vtk``;
- ``panel/``: what a panel does, Qt-free (the session, its result record, the model store, the warm worker and
  its protocol, background jobs, the texts both faces show); the faces import only this layer and ``errors``.

``Testing/test_layers.py`` enforces the direction.

Every physical point inside this package is ITK/LPS millimetres; only ``mrml/`` converts to RAS.
"""

__version__ = "0.1.0"
