"""BreastCMSL runtime core: preprocessing, the CMSL network, COAM/CAM attention maps and analysis.

Layers, lowest first (a module imports only from its own layer or a lower one):

- ``errors``, ``config``, ``atomic``: the user-error type, the configuration dataclasses, all-or-nothing writes;
- ``network/``: the CMSL network, its model file, losses and the attention maps (torch, safetensors);
- ``pipeline/``: volumes, grids, the breast mask, preprocessing, one analysis, its output files, the phantom
  (numpy, SimpleITK, torch);
- ``dicom/``: DICOM series, their roles in a DCE study, DICOM SEG export (pydicom, highdicom);
- ``cli``: the ``breastcmsl`` command line over the layers above;
- ``mrml/``: the MRML adapters (volume nodes, display, the lesion centre table); they take the scene as an
  argument and are the only modules that import ``slicer``/``vtk``;
- ``panel/``: what a panel does, Qt-free (the session, the warm worker process, background jobs).

Every physical point inside this package is ITK/LPS millimetres; only ``mrml/`` converts to RAS.
"""

__version__ = "0.1.0"
